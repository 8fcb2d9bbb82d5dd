"""The files a night's run directory holds beside the framework's own."""

from __future__ import annotations

from pathlib import Path

from framework.rundir import RunDir


class NightRunDir(RunDir):
    """A run directory of the association pipeline, and what replay and report add to it."""

    @property
    def replay(self) -> Path:
        """The replay's record: archive, options, progress and summary."""
        return self.path / "replay.json"

    @property
    def sends(self) -> Path:
        """When the replay sent each event, one JSON line each."""
        return self.path / "replay_sends.jsonl"

    @property
    def pipeline_out(self) -> Path:
        """The output of the ``mpiexec`` job a replay started."""
        return self.path / "pipeline.out"

    @property
    def report_dir(self) -> Path:
        """The report's plots."""
        return self.path / "report"

    @property
    def report_json(self) -> Path:
        """The report's figures."""
        return self.path / "report.json"
