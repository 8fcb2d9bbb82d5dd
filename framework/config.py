"""Pipeline definition: read a TOML file into typed config objects."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.hooks import PipelineHooks
from framework.metrics import MetricsError, check_name, parse_address
from framework.stage import Stage

WAIT_POLICIES = ("fail", "continue")
WAITING_MODES = ("active", "passive")


class ConfigError(ValueError):
    """A pipeline config that cannot run; the message names the file and key."""


@dataclass(frozen=True)
class WaitSpec:
    """A stage's wait for an event before it starts."""

    event: str
    timeout: float
    policy: str = "fail"


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline: its class and its typed config."""

    name: str
    cls: type[Stage]
    config: Any
    wait: WaitSpec | None = None

    def build(self) -> Stage:
        """A fresh instance of the stage."""
        return self.cls(self.name, self.config)


@dataclass(frozen=True)
class RuntimeConfig:
    """How the runtime waits, listens and reports."""

    waiting: str = "passive"
    min_sleep_ms: float = 0.05
    max_sleep_ms: float = 5.0
    endpoint: str | None = "tcp://127.0.0.1:0"
    publish: str | None = "tcp://127.0.0.1:0"
    status_interval: float = 1.0
    orphan_timeout: float = 3600.0
    max_event_bytes: int = 65536
    slice_timeout: float = 300.0
    """A Slice with work in hand that answers nothing for this long is hung (0: never)."""
    retry_for: float = 600.0
    """How long a hook that fails for a passing reason is retried, s (0: never)."""
    curve_keys: str = ""
    """Key directory (``nightpipe keys DIR``): only clients it allows may connect.

    Required to listen beyond loopback."""
    metrics: str = "127.0.0.1:0"
    """``HOST:PORT`` the Prometheus metrics are served on (port 0: any free one); empty: none."""
    metrics_noun: str = "executions"
    """What an execution is called in metric names (``visits``: ``nightpipe_visits_done_total``)."""
    kafka_bootstrap: str = ""
    """Kafka bootstrap servers to take events from, beside the endpoint; empty: none."""
    kafka_topics: tuple[str, ...] = ()
    """The topics events come on (each message one event envelope); every partition is read."""
    kafka_group_id: str = ""
    """Consumer group whose committed offsets are the intake's position; empty: ``nightpipe-NAME``."""
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password_env: str = ""
    """Environment variable holding the SASL password (never the password itself)."""
    latency_from: str = ""
    """The stage an execution's processing latency counts from, typically the one that waits
    for its triggering event; empty: the first. Waits and queueing are never counted."""


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline definition.

    ``done_event`` and ``failed_event`` name the outcome events; by default
    ``{name}.execution_done`` and ``{name}.execution_failed``.
    """

    name: str
    start: str
    stages: tuple[StageSpec, ...]
    max_in_flight: int = 8
    ordered: tuple[str, str] | None = None
    resources: Any = None
    done_event: str = ""
    failed_event: str = ""
    hooks: type[PipelineHooks] = PipelineHooks
    settings: Any = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    source: Path | None = None

    def __post_init__(self) -> None:
        if not self.done_event:
            object.__setattr__(self, "done_event", f"{self.name}.execution_done")
        if not self.failed_event:
            object.__setattr__(self, "failed_event", f"{self.name}.execution_failed")
        if self.settings is None:
            object.__setattr__(self, "settings", self.hooks.ConfigClass())

    def build_hooks(self) -> PipelineHooks:
        """A fresh instance of the pipeline's hooks."""
        return self.hooks(self.settings)

    def stage_index(self, name: str) -> int:
        """Index of the stage called `name`."""
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        raise ConfigError(f"{self.source}: no stage named {name!r}")

    @property
    def ordered_range(self) -> tuple[int, int] | None:
        """First and last stage index of the ordered section, if any."""
        if self.ordered is None:
            return None
        return self.stage_index(self.ordered[0]), self.stage_index(self.ordered[1])


def import_object(ref: str, base: Path | None = None) -> Any:
    """Import ``module:attr`` or ``path/to/file.py:attr`` (relative to `base`)."""
    if ":" not in ref:
        raise ConfigError(f"{ref!r}: expected 'module:Name' or 'file.py:Name'")
    mod_name, _, attr = ref.rpartition(":")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.exists():
            raise ConfigError(f"{ref!r}: file {path} not found")
        name = f"_nightpipe_user_{path.stem}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ConfigError(f"{ref!r}: cannot import {mod_name}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{ref!r}: {mod_name} has no {attr!r}") from None


def _check_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is not None:
        hint = origin
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a TOML table, checking names and types."""
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"{where}: config class {cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    for key, value in values.items():
        hint = hints[key]
        if isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = values[key] = tuple(value)
        if not _check_type(value, hint):
            raise ConfigError(f"{where}.{key}: expected {hint}, got {value!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _stage(entry: dict[str, Any], i: int, where: str, base: Path) -> StageSpec:
    here = f"{where}: stages[{i}]"
    for key in ("name", "class"):
        if key not in entry:
            raise ConfigError(f"{here}: missing {key!r}")
    unknown = sorted(set(entry) - {"name", "class", "config", "wait"})
    if unknown:
        raise ConfigError(f"{here} ({entry['name']}): unknown key(s) {unknown}")
    try:
        cls = import_object(entry["class"], base)
    except ConfigError as exc:
        raise ConfigError(f"{here} ({entry['name']}).class: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"{here}: {entry['class']} is not a Stage subclass")
    config = build_dataclass(cls.ConfigClass, dict(entry.get("config", {})), f"{here}.config")
    wait = None
    if "wait" in entry:
        w = entry["wait"]
        try:
            wait = WaitSpec(str(w["event"]), float(w["timeout"]), str(w.get("policy", "fail")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{here}.wait: needs event, timeout[, policy]: {exc}") from exc
        if wait.policy not in WAIT_POLICIES:
            raise ConfigError(f"{here}.wait.policy: {wait.policy!r} not in {WAIT_POLICIES}")
    return StageSpec(entry["name"], cls, config, wait)


def _hooks(ref: Any, where: str, base: Path) -> type[PipelineHooks]:
    if ref is None:
        return PipelineHooks
    try:
        cls = import_object(str(ref), base)
    except ConfigError as exc:
        raise ConfigError(f"{where}: [pipeline].hooks: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, PipelineHooks)):
        raise ConfigError(f"{where}: [pipeline].hooks: {ref} is not a PipelineHooks subclass")
    return cls


def parse_config(data: dict[str, Any], source: Path | None = None) -> PipelineConfig:
    """Turn a TOML document into a `PipelineConfig`."""
    where = str(source or "<config>")
    base = source.parent if source else Path.cwd()
    pipe = dict(data.get("pipeline", {}))
    stages = data.get("stages")
    if not stages:
        raise ConfigError(f"{where}: no [[stages]]")
    specs = tuple(_stage(s, i, where, base) for i, s in enumerate(stages))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: stage names must be unique, got {names}")
    if "start" not in pipe:
        raise ConfigError(f"{where}: [pipeline] needs 'start' (the event type that starts one)")
    runtime = build_dataclass(RuntimeConfig, dict(data.get("runtime", {})), f"{where}: [runtime]")
    if runtime.waiting not in WAITING_MODES:
        raise ConfigError(f"{where}: [runtime].waiting must be one of {WAITING_MODES}")
    if runtime.kafka_bootstrap and not runtime.kafka_topics:
        raise ConfigError(f"{where}: [runtime].kafka_bootstrap is set but kafka_topics is empty")
    try:
        if runtime.metrics:
            parse_address(runtime.metrics, "[runtime].metrics")
        check_name(runtime.metrics_noun, "[runtime].metrics_noun")
    except MetricsError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    resources = pipe.pop("resources", None)
    if resources is not None:
        resources = import_object(resources, base)
    hooks = _hooks(pipe.pop("hooks", None), where, base)
    settings = build_dataclass(
        hooks.ConfigClass, dict(data.get("settings", {})), f"{where}: [settings]"
    )
    ordered = pipe.pop("ordered", None)
    cfg = PipelineConfig(
        name=str(pipe.pop("name", source.stem if source else "pipeline")),
        start=str(pipe.pop("start")),
        stages=specs,
        max_in_flight=int(pipe.pop("max_in_flight", 8)),
        ordered=tuple(ordered) if ordered else None,
        resources=resources,
        done_event=str(pipe.pop("done_event", "")),
        failed_event=str(pipe.pop("failed_event", "")),
        hooks=hooks,
        settings=settings,
        runtime=runtime,
        source=source,
    )
    if pipe:
        raise ConfigError(f"{where}: [pipeline] unknown key(s) {sorted(pipe)}")
    if runtime.latency_from and runtime.latency_from not in names:
        raise ConfigError(
            f"{where}: [runtime].latency_from: no stage named {runtime.latency_from!r} "
            f"(stages: {names})"
        )
    if cfg.max_in_flight < 1:
        raise ConfigError(f"{where}: [pipeline].max_in_flight must be >= 1")
    if cfg.ordered is not None:
        if len(cfg.ordered) != 2:
            raise ConfigError(f"{where}: [pipeline].ordered = [first_stage, last_stage]")
        lo, hi = cfg.ordered_range  # type: ignore[misc]
        if lo > hi:
            raise ConfigError(
                f"{where}: [pipeline].ordered: {cfg.ordered[0]} comes after {cfg.ordered[1]}"
            )
    return cfg


def load_config(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    stage_overrides: dict[str, dict[str, Any]] | None = None,
) -> PipelineConfig:
    """Read a pipeline config from a TOML file.

    `overrides` are merged into top-level tables (``{"runtime": {...}}``,
    ``{"settings": {...}}``), `stage_overrides` into the config of the named
    stages.
    """
    path = Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for table, values in (overrides or {}).items():
        data.setdefault(table, {}).update(values)
    stages = {s.get("name"): s for s in data.get("stages", [])}
    for name, values in (stage_overrides or {}).items():
        if name not in stages:
            raise ConfigError(f"{path}: no stage named {name!r} to override")
        stages[name].setdefault("config", {}).update(values)
    return parse_config(data, path)
