"""The ordered section: overlapping executions pass in start order; others don't wait."""

from __future__ import annotations

from framework.section import OrderedSection


def test_overlap_waits_for_earlier():
    s = OrderedSection()
    s.add(1, frozenset({"a", "b"}))
    s.add(2, frozenset({"b", "c"}))
    s.add(3, frozenset({"z"}))
    assert s.may_enter(1)
    assert not s.may_enter(2)
    assert s.blocking(2) == [1]
    assert s.may_enter(3)  # disjoint: no wait
    s.leave(1)
    assert s.may_enter(2)


def test_none_resources_conflict_with_everything():
    s = OrderedSection()
    s.add(1, None)
    s.add(2, frozenset({"x"}))
    assert not s.may_enter(2)
    s.remove(1)
    assert s.may_enter(2)


def test_later_never_blocks_earlier():
    s = OrderedSection()
    s.add(1, frozenset({"a"}))
    s.add(2, frozenset({"a"}))
    assert s.may_enter(1)
    assert s.blocking(1) == []
