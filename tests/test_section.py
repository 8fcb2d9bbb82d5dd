"""The ordered section: overlapping executions pass in the order their data came."""

from __future__ import annotations

from framework.section import OrderedSection


def section(*entries):
    """entries: (fov, resources, key or None)."""
    s = OrderedSection()
    for fov, res, key in entries:
        s.add(fov, res)
        if key is not None:
            s.ready(fov, key)
    return s


def test_overlap_waits_for_earlier_key():
    s = section((1, frozenset({"a", "b"}), 10), (2, frozenset({"b", "c"}), 20), (3, {"z"}, 30))
    assert s.may_enter(1)
    assert not s.may_enter(2)
    assert s.blocking(2) == [1]
    assert s.may_enter(3)  # disjoint: no wait
    s.leave(1)
    assert s.may_enter(2)


def test_order_is_by_key_not_by_registration():
    s = section((1, frozenset({"a"}), 50), (2, frozenset({"a"}), 40))
    assert s.may_enter(2) and not s.may_enter(1)
    assert s.blocking(1) == [2]


def test_an_execution_without_a_key_blocks_nobody_and_cannot_enter():
    s = section((1, frozenset({"a"}), None), (2, frozenset({"a"}), 40))
    assert s.may_enter(2)
    assert not s.may_enter(1)
    assert s.blocking(1) == [2]
    s.leave(2)
    s.ready(1, 60)
    assert s.may_enter(1)


def test_none_resources_conflict_with_everything():
    s = section((1, None, 1), (2, frozenset({"x"}), 2))
    assert not s.may_enter(2)
    s.remove(1)
    assert s.may_enter(2)


def test_later_never_blocks_earlier():
    s = section((1, frozenset({"a"}), 1), (2, frozenset({"a"}), 2))
    assert s.may_enter(1)
    assert s.blocking(1) == []
