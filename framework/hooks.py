"""Pipeline-level hooks: the state a pipeline keeps per rank and per execution."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from events.types import FieldSpec
    from framework.stage import RankContext


@dataclass(frozen=True)
class NoSettings:
    """Settings of a pipeline that takes none."""


class PipelineHooks:
    """What a pipeline does beside its stages. Subclass it and name it in the TOML.

    ``[pipeline] hooks = "module:Class"`` names the class; its `ConfigClass`
    types the ``[settings]`` table. One instance lives on every rank.

    Parameters
    ----------
    settings : ConfigClass
        The pipeline's settings; every hook's context also carries them.
    """

    ConfigClass: ClassVar[type] = NoSettings
    event_types: ClassVar[Mapping[str, tuple[FieldSpec, ...]]] = {}
    """Event types the pipeline sends, registered with the validator (refused inbound)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def setup(self, ctx: RankContext) -> Any:
        """Once per rank, before the stages' `setup`; the result is ``ctx.shared``."""
        return None

    def execution_state(self, ctx: RankContext, key: int) -> Any:
        """A new execution's state on this rank; the stages see it as ``ctx.state``."""
        return None

    def shutdown(self, ctx: RankContext) -> None:
        """Once per rank, after the stages' `shutdown`."""

    def retriable(self, exc: BaseException) -> bool:
        """Whether `exc` is a passing fault (a database outage) worth retrying, not bad data.

        A hook that raises one is retried with back-off (``[runtime]
        retry_for``); an execution that still fails with one is failed as
        retriable and runs again when the pipeline next starts.
        """
        return False
