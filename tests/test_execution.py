"""The execution state machine, on its own: no I/O, no clock."""

from __future__ import annotations

import pytest

from framework.config import WaitSpec
from framework.execution import (
    Admitted,
    Dispatch,
    EventArrived,
    Execution,
    Failure,
    Finish,
    HookFailed,
    Phase,
    PostprocessDone,
    PreprocessDone,
    RequestEntry,
    RunPostprocess,
    RunPreprocess,
    SliceReplied,
    Start,
    Tick,
)

PRED = "nightmops.predictions_ready"


def machine(waits=(None, None, None), n_slices=2, gate=None) -> Execution:
    return Execution(7, ("a", "b", "c")[: len(waits)], tuple(waits), n_slices, gate)


def run_stage(m: Execution, k: int, now: float = 0.0) -> list:
    assert m.handle(PreprocessDone()) == [Dispatch(k)]
    out = []
    for s in range(m.n_slices):
        out = m.handle(SliceReplied(k, s))
    assert out == [RunPostprocess(k)]
    return m.handle(PostprocessDone(now))


def test_stages_run_in_order_with_barrier():
    m = machine()
    assert m.handle(Start(0.0)) == [RunPreprocess(0)]
    assert m.handle(PreprocessDone()) == [Dispatch(0)]
    assert m.handle(SliceReplied(0, 1)) == []  # barrier holds until every slice answers
    assert m.phase is Phase.DISPATCHED
    assert m.handle(SliceReplied(0, 0)) == [RunPostprocess(0)]
    assert m.handle(PostprocessDone(0.0)) == [RunPreprocess(1)]
    assert run_stage(m, 1) == [RunPreprocess(2)]
    assert run_stage(m, 2) == [Finish(None)]
    assert m.phase is Phase.DONE and m.terminal


def test_reply_for_wrong_stage_or_twice_is_an_error():
    m = machine()
    m.handle(Start(0.0))
    m.handle(PreprocessDone())
    with pytest.raises(RuntimeError):
        m.handle(SliceReplied(1, 0))
    m.handle(SliceReplied(0, 0))
    with pytest.raises(RuntimeError):
        m.handle(SliceReplied(0, 0))


def test_wait_then_event_arrives():
    m = machine((None, WaitSpec(PRED, 10.0, "fail"), None))
    m.handle(Start(100.0))
    assert run_stage(m, 0, now=100.0) == []
    assert m.phase is Phase.WAITING and m.deadline == 110.0
    assert m.handle(Tick(105.0)) == []
    assert m.handle(EventArrived(PRED)) == [RunPreprocess(1)]


def test_event_before_its_wait_is_remembered():
    m = machine((None, WaitSpec(PRED, 10.0, "fail"), None))
    m.handle(Start(0.0))
    assert m.handle(EventArrived(PRED)) == []
    assert run_stage(m, 0) == [RunPreprocess(1)]


def test_timeout_fail_policy():
    m = machine((None, WaitSpec(PRED, 5.0, "fail"), None))
    m.handle(Start(0.0))
    run_stage(m, 0, now=1.0)
    (fin,) = m.handle(Tick(6.0))
    assert isinstance(fin, Finish) and fin.failure.hook == "wait"
    assert "timed out after 5 s waiting for nightmops.predictions_ready" in fin.failure.error
    assert m.phase is Phase.FAILED
    assert m.handle(EventArrived(PRED)) == []  # too late: ignored


def test_timeout_continue_policy():
    m = machine((None, WaitSpec(PRED, 5.0, "continue"), None))
    m.handle(Start(0.0))
    run_stage(m, 0, now=0.0)
    assert m.handle(Tick(5.0)) == [RunPreprocess(1)]
    assert m.skipped_waits == [PRED]


def test_slice_failure_fails_after_all_answer():
    m = machine(n_slices=3)
    m.handle(Start(0.0))
    m.handle(PreprocessDone())
    f = Failure("a", "process", 2, "boom")
    assert m.handle(SliceReplied(0, 1, f)) == []
    assert m.handle(SliceReplied(0, 0)) == []
    (fin,) = m.handle(SliceReplied(0, 2))
    assert fin == Finish(f)
    assert m.failure == f


def test_master_hook_failure():
    m = machine()
    m.handle(Start(0.0))
    f = Failure("a", "preprocess", 0, "bad")
    assert m.handle(HookFailed(f)) == [Finish(f)]


def test_gate_asks_for_entry():
    m = machine(gate=1)
    m.handle(Start(0.0))
    assert run_stage(m, 0) == [RequestEntry(1)]
    assert m.phase is Phase.GATED
    assert m.handle(Admitted()) == [RunPreprocess(1)]


def test_wait_comes_before_gate():
    m = machine((None, WaitSpec(PRED, 5.0, "fail"), None), gate=1)
    m.handle(Start(0.0))
    assert run_stage(m, 0) == []
    assert m.handle(EventArrived(PRED)) == [RequestEntry(1)]
