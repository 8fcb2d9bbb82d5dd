"""Where a visit's alerts go: a file per visit (our schema or Rubin's), a Kafka stream, or both.

`AlertOutputConfig` is flat, so a stage config can carry its fields as they
are. `VisitAlertOutput.publish` does one visit: it encodes the alerts once,
writes the file (atomically), streams them and returns when the broker has
acknowledged all of them, and gives the fields of ``association.alerts_ready``.

Which DIASources alert depends on the schema: under Rubin's (a ``rubin`` file
or a stream) every DIASource does, a moving-object match with an ``ssSource``;
under our own (``nightpipe`` files only, as before) moving-object matches
raise none (a ``nightpipe`` file beside a stream keeps that rule).
`VisitAlertOutput.alerting` says which, for the ``alerts`` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from association.alerts.avro import warm_up as warm_up_own_schema
from association.alerts.kafka import AlertProducer, AlertStreamConfig, PublishedVisit
from association.alerts.packets import write_visit_alerts
from association.alerts.rubin import MovingMatches, RubinAlertEncoder
from events.kafka import KafkaConnection

FILE_FORMATS = ("nightpipe", "rubin", "none")


@dataclass(frozen=True)
class AlertOutputConfig:
    """How alerts leave the pipeline.

    Parameters
    ----------
    file_format : str
        ``nightpipe``: a container file per visit under our own schema (as
        before); ``rubin``: under Rubin's schema; ``none``: no file.
    schema_version : str
        Rubin's schema version, ``MAJOR.MINOR``; empty: the latest that
        lsst-alert-packet ships.
    kafka_bootstrap : str
        Kafka bootstrap servers; empty: no stream.
    kafka_topic : str
    kafka_security_protocol, kafka_sasl_mechanism, kafka_sasl_username : str
    kafka_sasl_password_env : str
        Environment variable holding the SASL password.
    kafka_delivery_timeout_s : float
        How long a visit waits for the broker's acknowledgements.
    """

    file_format: str = "nightpipe"
    schema_version: str = ""
    kafka_bootstrap: str = ""
    kafka_topic: str = "alerts"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password_env: str = ""
    kafka_delivery_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.file_format not in FILE_FORMATS:
            raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {self.file_format!r}")

    @property
    def uses_rubin_schema(self) -> bool:
        """Whether alerts are built under Rubin's schema (a rubin file or a stream)."""
        return self.file_format == "rubin" or bool(self.kafka_bootstrap)

    def stream_config(self) -> AlertStreamConfig | None:
        """The Kafka stream's settings, or None without one."""
        if not self.kafka_bootstrap:
            return None
        connection = KafkaConnection(
            self.kafka_bootstrap,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism or None,
            sasl_username=self.kafka_sasl_username or None,
            sasl_password_env=self.kafka_sasl_password_env or None,
        )
        return AlertStreamConfig(
            connection, topic=self.kafka_topic, delivery_timeout_s=self.kafka_delivery_timeout_s
        )


@dataclass(frozen=True)
class VisitAlerts:
    """What `VisitAlertOutput.publish` did for one visit."""

    n_alerts: int
    path: str | None
    stream: PublishedVisit | None

    def event_fields(self) -> dict[str, Any]:
        """``path``, and ``topic``/``offsets`` when streamed, for ``association.alerts_ready``."""
        fields: dict[str, Any] = {"path": self.path or ""}
        if self.stream is not None:
            fields.update(self.stream.event_fields())
        return fields


class VisitAlertOutput:
    """Encodes, writes and streams each visit's alerts as configured.

    Parameters
    ----------
    config : AlertOutputConfig
    """

    def __init__(self, config: AlertOutputConfig) -> None:
        self.config = config
        self.encoder = (
            RubinAlertEncoder(config.schema_version or None) if config.uses_rubin_schema else None
        )
        stream = config.stream_config()
        self.producer = None if stream is None else AlertProducer(stream)

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the encoders now, not in the first visit."""
        warm_up_own_schema()
        if self.encoder is not None:
            self.encoder.warm_up()

    def alerting(self, sources: np.ndarray) -> np.ndarray:
        """Which of a visit's DIASources raise an alert (bool mask)."""
        if self.config.uses_rubin_schema:
            return np.ones(len(sources), bool)
        return np.asarray(sources["ssObjectId"]) == 0

    def publish(
        self,
        visit: int,
        directory: str | Path,
        sources: np.ndarray,
        objects: np.ndarray,
        recent: np.ndarray,
        moving: MovingMatches | None = None,
        *,
        processed_mjd: float | None = None,
        exposure_time: float | None = None,
    ) -> VisitAlerts:
        """Write and stream one visit's alerts; return when the broker has them all.

        Parameters
        ----------
        visit : int
            The visit; its file is ``directory/visit_{visit}.avro``.
        directory : str or Path
            Where the file goes.
        sources, objects, recent, moving, processed_mjd, exposure_time
            As `RubinAlertEncoder.encode` takes them; `sources` are all the
            visit's DIASources (`alerting` picks those that alert).

        Raises
        ------
        AlertDeliveryError
            If the broker did not acknowledge every alert: publish the visit
            again (its alerts go again, with the same keys).
        """
        alerting = sources[self.alerting(sources)]
        path = None
        if self.config.file_format != "none":
            path = Path(directory) / f"visit_{visit}.avro"
        if self.encoder is None:
            if path is not None:
                write_visit_alerts(path, alerting, objects, recent)
            return VisitAlerts(len(alerting), None if path is None else str(path), None)
        encoded = self.encoder.encode(
            alerting,
            objects,
            recent,
            moving,
            processed_mjd=processed_mjd,
            exposure_time=exposure_time,
        )
        if path is not None:
            if self.config.file_format == "rubin":
                self.encoder.write_file(path, encoded)
            else:  # our schema keeps its rule: no alert for a moving-object match
                write_visit_alerts(path, alerting, objects, recent)
        stream = None if self.producer is None else self.producer.publish_visit(encoded, visit)
        return VisitAlerts(len(encoded), None if path is None else str(path), stream)

    def close(self) -> None:
        """Deliver anything still queued."""
        if self.producer is not None:
            self.producer.close()
