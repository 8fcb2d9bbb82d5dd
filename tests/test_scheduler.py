"""The scheduler on its own: admission, the cap, the ordered section, deadlines, orphans."""

from __future__ import annotations

import dataclasses

import pytest

from framework.config import parse_config
from framework.execution import (
    Dispatch,
    Failure,
    Finish,
    HookFailed,
    PostprocessDone,
    PreprocessDone,
    RunPostprocess,
    RunPreprocess,
    SliceReplied,
)
from framework.scheduler import (
    ORPHAN_SWEEP_S,
    Accepted,
    Begin,
    Clock,
    Drain,
    ExpireOrphans,
    Feed,
    FetchStarts,
    Scheduler,
    Step,
    Stop,
)

NV, DET = "telescope.next_visit", "detection.diasources_ready"
TRACE = "tests/pipelines/trace_stages.py:Trace"


def scheduler(
    max_in_flight=2, ordered=None, det_timeout=None, n_slices=1, orphan_timeout=60, policy="fail"
):
    stages = [{"name": n, "class": TRACE} for n in ("a", "b", "c")]
    if det_timeout is not None:
        stages[1]["wait"] = {"event": DET, "timeout": det_timeout, "policy": policy}
    pipeline = {"name": "t", "start": NV, "max_in_flight": max_in_flight}
    if ordered:
        pipeline["ordered"] = list(ordered)
    cfg = parse_config(
        {"pipeline": pipeline, "stages": stages, "runtime": {"orphan_timeout": orphan_timeout}}
    )
    return Scheduler(cfg, n_slices)


def begin(s, key, resources=None, queued=(), now=0.0, seq=None):
    """Begin FOV `key`; its start journaled at `seq` (default: `key`), queued events after."""
    seq = key if seq is None else seq
    return s.handle(Begin(key, {t: seq + 1 + i for i, t in enumerate(queued)}, resources, now, seq))


def finish_stage(s, key, stage, now=0.0):
    """Drive one stage from preprocess to its postprocess; returns what follows."""
    assert s.handle(Feed(key, PreprocessDone())) == [Step(key, Dispatch(stage))]
    out = []
    for i in range(s.n_slices):
        out = s.handle(Feed(key, SliceReplied(stage, i)))
    assert out == [Step(key, RunPostprocess(stage))]
    return s.handle(Feed(key, PostprocessDone(now)))


def run_to_end(s, key, first=0, last=2):
    for k in range(first, last + 1):
        out = finish_stage(s, key, k)
    return out


def test_admission_asks_for_starts_up_to_the_cap():
    s = scheduler(max_in_flight=2)
    assert s.handle(Clock(0.0)) == [FetchStarts(2, ())]
    assert s.handle(Clock(0.1)) == []  # nothing new since
    assert begin(s, 5) == [Step(5, RunPreprocess(0))]
    assert s.handle(Accepted(NV, 6, 0.2)) == []
    assert s.handle(Clock(0.2)) == [FetchStarts(1, (5,))]
    begin(s, 6)
    assert s.handle(Accepted(NV, 7, 0.3)) == []
    assert s.handle(Clock(0.3)) == []  # full: the start waits in the journal
    (fin,) = run_to_end(s, 5)
    assert fin == Step(5, Finish(None))
    assert s.handle(Clock(0.4)) == [FetchStarts(1, (6,))]


def test_begin_twice_is_a_bug():
    s = scheduler()
    begin(s, 1)
    with pytest.raises(RuntimeError, match="already running"):
        begin(s, 1)


def test_ordered_section_admits_overlapping_executions_in_start_order():
    s = scheduler(max_in_flight=3, ordered=("b", "c"))
    begin(s, 1, frozenset({"x"}))
    begin(s, 2, frozenset({"x", "y"}))
    begin(s, 3, frozenset({"z"}))
    assert finish_stage(s, 2, 0) == []  # 2 gated: 1 overlaps and has not passed
    assert finish_stage(s, 3, 0) == [Step(3, RunPreprocess(1))]  # disjoint: goes on
    assert s.behind(2) == [1]
    assert finish_stage(s, 1, 0) == [Step(1, RunPreprocess(1))]
    finish_stage(s, 1, 1)
    out = finish_stage(s, 1, 2)  # 1 leaves the section and ends: 2 goes in
    assert Step(2, RunPreprocess(1)) in out and Step(1, Finish(None)) in out
    assert s.behind(2) == []


def test_section_is_released_when_an_execution_fails_inside_it():
    s = scheduler(max_in_flight=2, ordered=("a", "b"))
    begin(s, 1, frozenset({"x"}))
    assert begin(s, 2, frozenset({"x"})) == []  # gated at its first stage
    f = Failure("a", "preprocess", 0, "bad")
    out = s.handle(Feed(1, HookFailed(f)))
    assert out == [Step(1, Finish(f)), Step(2, RunPreprocess(0))]


def test_none_resources_overlap_everything():
    s = scheduler(max_in_flight=2, ordered=("a", "c"))
    begin(s, 1, None)
    assert begin(s, 2, frozenset({"q"})) == []


def test_wait_deadline_fails_on_the_monotonic_clock():
    s = scheduler(det_timeout=10.0)
    begin(s, 1, now=100.0)
    assert finish_stage(s, 1, 0, now=100.0) == []  # waits for DET
    assert not [i for i in s.handle(Clock(109.9)) if isinstance(i, Step)]
    (step,) = [i for i in s.handle(Clock(110.0)) if isinstance(i, Step)]
    assert step.key == 1 and "timed out after 10 s" in step.instruction.failure.error


def test_event_for_a_running_execution_ends_its_wait():
    s = scheduler(det_timeout=10.0)
    begin(s, 1)
    finish_stage(s, 1, 0)
    assert s.handle(Accepted(DET, 1, 1.0)) == [Step(1, RunPreprocess(1))]


def test_queued_events_count_as_received():
    s = scheduler(det_timeout=10.0)
    begin(s, 1, queued={DET})
    assert finish_stage(s, 1, 0) == [Step(1, RunPreprocess(1))]


def test_orphans_expire_after_the_timeout_unless_a_start_comes():
    s = scheduler(orphan_timeout=60.0)
    s.handle(Clock(0.0))
    s.handle(Accepted(DET, 8, 1.0))  # fov 8 never starts
    s.handle(Accepted(DET, 9, 1.0))  # fov 9 starts later
    begin(s, 9, queued={DET}, now=2.0)
    assert s.orphans == {8: 1.0}
    t = 1.0 + 60.0
    out = s.handle(Clock(t))
    assert ExpireOrphans((8,)) in out
    assert s.orphans == {}
    assert not [i for i in s.handle(Clock(t + 2 * ORPHAN_SWEEP_S)) if isinstance(i, ExpireOrphans)]


def test_orphan_timer_uses_first_arrival_only():
    s = scheduler(orphan_timeout=60.0)
    s.handle(Accepted(DET, 8, 1.0))
    s.handle(Accepted("nightmops.predictions_ready", 8, 50.0))
    assert s.orphans == {8: 1.0}


def test_drain_stops_once_nothing_is_in_flight():
    s = scheduler()
    begin(s, 1)
    assert s.handle(Drain()) == []
    assert s.handle(Accepted(NV, 2, 0.0)) == []
    assert s.handle(Clock(1.0)) == []  # no admission while draining
    out = run_to_end(s, 1)
    assert out == [Step(1, Finish(None))]
    assert s.handle(Clock(2.0)) == [Stop()]
    assert s.handle(Clock(3.0)) == []  # once


def test_scheduler_inputs_and_instructions_are_slotted():
    import framework.scheduler as sch

    for cls in (sch.Accepted, sch.Clock, sch.Begin, sch.Feed, sch.Drain, sch.Step):
        assert dataclasses.is_dataclass(cls) and not hasattr(cls.__new__(cls), "__dict__")


def test_a_visit_waiting_for_its_data_holds_back_no_overlapping_visit():
    s = scheduler(max_in_flight=2, ordered=("c", "c"), det_timeout=600.0)
    begin(s, 1, frozenset({"x"}))  # its detections never come
    begin(s, 2, frozenset({"x"}), queued={DET})
    finish_stage(s, 1, 0)
    assert finish_stage(s, 2, 0) == [Step(2, RunPreprocess(1))]
    assert finish_stage(s, 2, 1) == [Step(2, RunPreprocess(2))]  # into the section at once
    assert s.behind(2) == []


def test_the_section_follows_the_journal_order_of_the_data():
    s = scheduler(max_in_flight=2, ordered=("c", "c"), det_timeout=600.0)
    begin(s, 1, frozenset({"x"}), seq=1)
    begin(s, 2, frozenset({"x"}), seq=2)
    for k in (1, 2):
        finish_stage(s, k, 0)
    s.handle(Accepted(DET, 2, 1.0, seq=5))  # visit 2's data is complete first
    s.handle(Accepted(DET, 1, 1.0, seq=6))
    assert finish_stage(s, 1, 1) == []  # gated behind 2, whose data came first
    assert s.behind(1) == [2]
    assert finish_stage(s, 2, 1) == [Step(2, RunPreprocess(2))]
    out = finish_stage(s, 2, 2)
    assert Step(1, RunPreprocess(2)) in out


def test_an_expired_wait_is_journaled_before_the_visit_goes_on():
    from framework.execution import RecordExpiry, WaitExpired

    s = scheduler(det_timeout=5.0, policy="continue")
    begin(s, 1)
    finish_stage(s, 1, 0)
    steps = [i for i in s.handle(Clock(5.0)) if isinstance(i, Step)]
    assert steps == [Step(1, RecordExpiry(DET))]
    assert s.handle(Feed(1, WaitExpired(DET, 42))) == [Step(1, RunPreprocess(1))]


def test_a_journaled_expiry_is_not_waited_for_again():
    s = scheduler(det_timeout=5.0, policy="continue")
    s.handle(Begin(1, {}, None, 0.0, 1, {DET: 7}))
    assert finish_stage(s, 1, 0) == [Step(1, RunPreprocess(1))]
    assert s.executions[1].skipped_waits == [DET]


def test_drain_ends_pending_waits_at_once_as_retriable():
    s = scheduler(det_timeout=600.0)
    begin(s, 1)
    finish_stage(s, 1, 0)
    (step, stop) = s.handle(Drain())
    assert step.key == 1 and step.instruction.failure.retriable
    assert "shut down while it waited" in step.instruction.failure.error
    assert stop == Stop()


def test_a_wait_reached_while_draining_ends_at_once():
    s = scheduler(det_timeout=600.0)
    begin(s, 1)
    assert s.handle(Drain()) == []  # still at its first stage: it goes on
    out = finish_stage(s, 1, 0)  # ... and reaches the wait
    (step,) = [i for i in out if isinstance(i, Step)]
    assert step.instruction.failure.retriable and step.instruction.failure.hook == "wait"
