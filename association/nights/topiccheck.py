"""Does the alert topic equal the database? Its keys, without duplicates, against the alerts table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, select

from association.alerts.consumer import topic_keys
from association.storage import tables as db
from events.kafka import KafkaConnection

SHOWN = 5
"""Ids named in a message, at most."""


@dataclass(frozen=True)
class AlertTopicCheck:
    """An alert topic against the database's ``alerts`` table.

    Attributes
    ----------
    topic : str
    messages : int
        Messages on the topic.
    unique : int
        Distinct keys (diaSourceIds) among them.
    in_database : int
        Rows of the ``alerts`` table.
    missing : ndarray of int64
        Alerts of the table not on the topic (lost alerts).
    extra : ndarray of int64
        Keys on the topic the table lacks (another night's, or a visit not stored).
    """

    topic: str
    messages: int
    unique: int
    in_database: int
    missing: np.ndarray
    extra: np.ndarray

    @property
    def duplicates(self) -> int:
        """Messages beyond the first of their key (at-least-once re-sends)."""
        return self.messages - self.unique

    @property
    def equal(self) -> bool:
        """Whether the topic, without duplicates, holds exactly the table's alerts."""
        return not len(self.missing) and not len(self.extra)

    def describe(self) -> str:
        """One line: the counts, and the first ids at fault."""
        text = (
            f"alert topic {self.topic!r}: {self.messages} messages, {self.unique} alerts "
            f"({self.duplicates} duplicates); database: {self.in_database} alerts"
        )
        for name, ids in (
            ("missing from the topic", self.missing),
            ("not in the database", self.extra),
        ):
            if len(ids):
                shown = ", ".join(map(str, ids[:SHOWN].tolist()))
                text += f"; {len(ids)} {name} (e.g. {shown})"
        return text

    def as_dict(self) -> dict[str, object]:
        """The figures as JSON-ready values."""
        return {
            "topic": self.topic,
            "messages": self.messages,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "in_database": self.in_database,
            "missing": len(self.missing),
            "extra": len(self.extra),
        }


def database_alert_ids(engine: Engine) -> np.ndarray:
    """Every alertId of the ``alerts`` table, sorted."""
    with engine.connect() as conn:
        ids = conn.execute(select(db.alerts.c.alertId)).scalars().all()
    return np.sort(np.asarray(ids, np.int64))


def check_alert_topic(connection: KafkaConnection, topic: str, engine: Engine) -> AlertTopicCheck:
    """Read the whole topic's keys and compare them with the database's alerts."""
    keys = topic_keys(connection, topic)
    unique = np.unique(keys)
    stored = database_alert_ids(engine)
    return AlertTopicCheck(
        topic=topic,
        messages=len(keys),
        unique=len(unique),
        in_database=len(stored),
        missing=np.setdiff1d(stored, unique),
        extra=np.setdiff1d(unique, stored),
    )
