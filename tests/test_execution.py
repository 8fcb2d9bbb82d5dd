"""The execution state machine, on its own: no I/O, no clock."""

from __future__ import annotations

import dataclasses

import pytest

from framework.config import WaitSpec
from framework.execution import (
    Abort,
    Admitted,
    Dispatch,
    Ended,
    EventArrived,
    Execution,
    Failure,
    Finish,
    HookFailed,
    LeaveSection,
    Phase,
    PostprocessDone,
    PreprocessDone,
    RecordExpiry,
    RequestEntry,
    RunPostprocess,
    RunPreprocess,
    SliceReplied,
    Start,
    Tick,
    WaitExpired,
)

PRED = "nightmops.predictions_ready"


def machine(waits=(None, None, None), n_slices=2, gate=None, section_end=None) -> Execution:
    section = (
        None if gate is None else (gate, len(waits) - 1 if section_end is None else section_end)
    )
    return Execution(7, ("a", "b", "c")[: len(waits)], tuple(waits), n_slices, section)


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
    assert m.handle(Tick(5.0)) == [RecordExpiry(PRED)]  # journaled first, for the order
    assert m.handle(Tick(6.0)) == []
    assert m.handle(WaitExpired(PRED, 9)) == [RunPreprocess(1)]
    assert m.skipped_waits == [PRED]
    assert m.received[PRED] == 9


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


def test_section_is_left_after_its_last_stage():
    m = machine(gate=0, section_end=1)
    assert m.handle(Start(0.0)) == [RequestEntry(0)]
    m.handle(Admitted())
    assert run_stage(m, 0) == [RunPreprocess(1)]
    assert run_stage(m, 1) == [LeaveSection(), RunPreprocess(2)]
    assert not m.in_section
    assert run_stage(m, 2) == [Finish(None)]


def test_a_preprocess_may_end_the_execution_as_done():
    m = machine()
    m.handle(Start(0.0))
    (fin,) = m.handle(Ended("already stored"))
    assert fin == Finish(None, (), "already stored")
    assert m.phase is Phase.DONE
    assert m.handle(PreprocessDone()) == []  # a terminal execution takes nothing more


def test_abort_fails_from_any_phase_and_failure_carries_the_transitions():
    m = machine((None, WaitSpec(PRED, 5.0, "fail"), None))
    m.handle(Start(0.0))
    run_stage(m, 0)
    assert m.phase is Phase.WAITING
    f = Failure("-", "shutdown", 0, "pipeline stopped")
    (fin,) = m.handle(Abort(f))
    assert fin == Finish(f) and m.phase is Phase.FAILED
    assert fin.failure.transitions[-1] == "Abort: waiting@b -> failed@b"
    assert fin.failure.transitions[0] == "Start: waiting@a -> preprocess@a"


def test_transition_log_is_bounded():
    m = machine((None, WaitSpec(PRED, 5.0, "fail"), None))
    m.handle(Start(0.0))
    run_stage(m, 0)
    for i in range(100):
        m.handle(Tick(float(i) / 100))
    assert len(m.log) == m.log.maxlen


def test_inputs_and_instructions_are_slotted():
    import framework.execution as ex

    for name in [
        "Start",
        "EventArrived",
        "Tick",
        "Admitted",
        "PreprocessDone",
        "SliceReplied",
        "PostprocessDone",
        "HookFailed",
        "Ended",
        "Abort",
        "RequestEntry",
        "LeaveSection",
        "RunPreprocess",
        "Dispatch",
        "RunPostprocess",
        "Finish",
        "Failure",
    ]:
        cls = getattr(ex, name)
        assert dataclasses.is_dataclass(cls) and hasattr(cls, "__slots__"), name
        assert not hasattr(cls.__new__(cls), "__dict__"), name


def test_order_key_is_the_last_event_needed_before_the_section():
    m = machine((None, WaitSpec(PRED, 5.0, "fail"), None), gate=2)
    m.start_seq = 10
    assert m.before_section == (PRED,)
    m.handle(Start(0.0))
    assert m.order_key is None  # still waits for PRED
    m.handle(EventArrived("other", 30))
    assert m.order_key is None
    m.handle(EventArrived(PRED, 25))
    assert m.order_key == 25
    m.handle(EventArrived(PRED, 40))  # a second one changes nothing
    assert m.order_key == 25
