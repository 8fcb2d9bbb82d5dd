"""One-to-one association by cost: the assignment against scipy, costs, the whole step."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from association.matching.assign import CostConfig, assign, associate, nearest, position_cost
from association.matching.zoneindex import ZoneIndex
from association.stages.update import choose_objects
from association.stages.visit import Candidates
from tests.oracles.reference import offset

BIG = 1e4  # the oracle's 'unmatched' cost when as many pairs as possible must win


def oracle(si, oi, cost, n_src, n_obj, unmatched):
    """scipy's dense assignment with one dummy 'unmatched' column per source.

    Returns (number of real pairs, their total cost, the set of real pairs, objective).
    """
    u = BIG if unmatched is None else unmatched
    c = np.full((n_src, n_obj + n_src), np.inf)
    c[si, oi] = cost
    c[np.arange(n_src), n_obj + np.arange(n_src)] = u
    rows, cols = linear_sum_assignment(c)
    real = cols < n_obj
    pairs = set(zip(rows[real].tolist(), cols[real].tolist(), strict=True))
    return (
        int(real.sum()),
        float(c[rows[real], cols[real]].sum()),
        pairs,
        float(c[rows, cols].sum()),
    )


def unique_optimum(si, oi, cost, n_src, n_obj, unmatched, pairs, best):
    """Whether every other pairing is worse: forbidding any chosen pair costs more."""
    for s, o in pairs:
        keep = ~((si == s) & (oi == o))
        *_, obj = oracle(si[keep], oi[keep], cost[keep], n_src, n_obj, unmatched)
        if not obj > best + 1e-7:
            return False
    return True


@st.composite
def graphs(draw):
    """Candidate graphs: random, chains, dense clusters and stars, on disjoint nodes."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    si, oi = [], []
    ns = no = 0
    for shape in draw(
        st.lists(st.sampled_from(["random", "chain", "dense", "star"]), min_size=1, max_size=5)
    ):
        k = draw(st.integers(1, 9))
        if shape == "random":
            a, b = np.nonzero(rng.random((k, k + 1)) < draw(st.sampled_from([0.15, 0.4])))
        elif shape == "chain":  # s0-o0-s1-o1-...: the classic case for greedy to fail
            a = np.r_[np.arange(k), np.arange(1, k)]
            b = np.r_[np.arange(k), np.arange(k - 1)]
        elif shape == "dense":
            a, b = np.divmod(np.arange(k * k), k)
        else:
            a, b = np.zeros(k, int), np.arange(k)
        si.append(a + ns)
        oi.append(b + no)
        ns += int(a.max(initial=-1)) + 1 if a.size else 0
        no += int(b.max(initial=-1)) + 1 if b.size else 0
    si, oi = np.concatenate(si).astype(np.int64), np.concatenate(oi).astype(np.int64)
    if draw(st.booleans()):
        cost = rng.uniform(-3.0, 10.0, si.size)  # like 0.5 chi2 + 0.5 ln(var)
    else:
        cost = rng.integers(0, 4, si.size).astype(float)  # many ties
    unmatched = draw(st.sampled_from([None, 2.0, 6.0]))
    return si, oi, cost, max(ns, 1), max(no, 1), unmatched, rng


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_assignment_equals_scipy(graph):
    si, oi, cost, ns, no, unmatched, rng = graph
    # ids that order differently from the rows, and pairs in random order
    src_ids = rng.permutation(10 * ns)[:ns] + 1000
    obj_ids = rng.permutation(10 * no)[:no] + 5000
    perm = rng.permutation(si.size)
    chosen = assign(src_ids[si[perm]], obj_ids[oi[perm]], cost[perm], unmatched)
    ours = {(int(si[perm][k]), int(oi[perm][k])) for k in np.flatnonzero(chosen)}
    assert len({s for s, _ in ours}) == len(ours) == len({o for _, o in ours})  # one-to-one
    n, total, pairs, best = oracle(si, oi, cost, ns, no, unmatched)
    our_total = float(sum(cost[(si == s) & (oi == o)][0] for s, o in ours))
    if unmatched is None:
        assert len(ours) == n
    else:
        assert all(cost[(si == s) & (oi == o)][0] < unmatched for s, o in ours)
    u = BIG if unmatched is None else unmatched
    assert our_total + u * (ns - len(ours)) == pytest.approx(best, abs=1e-7)
    assert our_total == pytest.approx(total, abs=1e-7) or unmatched is not None
    if unique_optimum(si, oi, cost, ns, no, unmatched, pairs, best):
        assert ours == pairs
    # the same answer whatever the order of the candidates
    again = assign(src_ids[si], obj_ids[oi], cost, unmatched)
    assert {(int(si[k]), int(oi[k])) for k in np.flatnonzero(again)} == ours


def test_chain_takes_the_global_optimum_not_the_greedy_one():
    # s0-o0 is the cheapest pair, but taking it leaves s1 alone: 1 + 1 beats 0 + nothing
    si, oi = np.array([0, 1, 0]), np.array([0, 0, 1])
    chosen = assign(si, oi, np.array([0.0, 1.0, 1.0]))
    assert chosen.tolist() == [False, True, True]
    # with a cheap 'unmatched', the cheapest pair alone wins
    assert assign(si, oi, np.array([0.0, 1.0, 1.0]), unmatched_cost=0.6).tolist() == [
        True,
        False,
        False,
    ]


def test_ties_go_to_the_smaller_keys_whatever_the_order():
    # two sources, two Objects, every pair costs the same
    si, oi = np.array([7, 7, 3, 3]), np.array([20, 10, 20, 10])
    for perm in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        perm = np.array(perm)
        chosen = assign(si[perm], oi[perm], np.zeros(4))
        pairs = {(int(si[perm][k]), int(oi[perm][k])) for k in np.flatnonzero(chosen)}
        assert pairs == {(3, 10), (7, 20)}


def test_bad_candidates_are_refused():
    with pytest.raises(ValueError, match="appears twice"):
        assign(np.array([1, 1, 2, 2]), np.array([5, 5, 5, 6]), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        assign(np.array([1]), np.array([5]), np.array([np.nan]))
    with pytest.raises(ValueError, match="one length"):
        assign(np.array([1, 2]), np.array([5]), np.zeros(2))
    assert assign(np.empty(0), np.empty(0), np.empty(0)).size == 0


def test_cost_is_rubins_negative_log_likelihood():
    ra0, dec0 = 150.0, 2.0
    sra, sdec = offset(ra0, dec0, np.radians([0.3 / 3600]), np.radians([0.4 / 3600]))
    err = np.array([0.1 / 3600])
    c = position_cost([0], [0], sra, sdec, [ra0], [dec0], err, err, err, err)
    var = 0.1**2 + 0.1**2
    assert c[0] == pytest.approx(0.5 * (0.3**2 + 0.4**2) / var + 0.5 * np.log(var * var), rel=1e-6)
    # missing errors take the fallback; a tiny combined error takes the floor
    c = position_cost([0], [0], sra, sdec, [ra0], [dec0], [np.nan], [-1.0])
    var = 2 * 0.2**2
    assert c[0] == pytest.approx(0.5 * 0.25 / var + np.log(var), rel=1e-6)
    tiny = np.array([1e-9])
    c = position_cost([0], [0], sra, sdec, [ra0], [dec0], tiny, tiny, tiny, tiny, CostConfig())
    assert c[0] == pytest.approx(0.5 * 0.25 / 0.05**2 + np.log(0.05**2), rel=1e-6)


@pytest.mark.parametrize(("ra0", "dec0"), [(150.0, 2.0), (359.99995, -30.0), (10.0, 89.9999)])
def test_two_sources_near_one_object_one_gets_it_the_other_makes_a_new_one(ra0, dec0):
    # two catalogue stars 0.15" apart give two DIASources; only one Object is known
    index = ZoneIndex.build([ra0], [dec0], [42])
    arc = np.radians(1 / 3600)
    sra, sdec = offset(ra0, dec0, np.array([0.05, -0.10]) * arc, np.array([0.0, 0.0]))
    err = np.full(2, 0.05 / 3600)
    res = associate(index, sra, sdec, 1.0, np.array([9, 8]), err, err)
    assert sorted(res.obj_row.tolist()) == [-1, 0]
    assert res.obj_row[0] == 0  # the nearer one (0.05") takes it
    assert res.n_candidates.tolist() == [1, 1]
    nearest, _ = index.nearest(sra, sdec, 1.0)
    assert nearest.tolist() == [0, 0]  # the nearest rule gave both to it


def test_a_second_object_goes_to_the_second_source():
    # two Objects 0.6" apart, two sources each 0.35" from both would both go
    # to the nearer Object under the nearest rule
    ra0, dec0 = 20.0, -10.0
    arc = np.radians(1 / 3600)
    ora, odec = offset(ra0, dec0, np.array([-0.3, 0.3]) * arc, np.zeros(2))
    index = ZoneIndex.build(ora, odec, np.array([1, 2]))
    sra, sdec = offset(ra0, dec0, np.array([-0.05, 0.0]) * arc, np.array([0.0, 0.1]) * arc)
    res = associate(index, sra, sdec, 1.0)
    assert sorted(res.obj_row.tolist()) == [0, 1]


def test_nearest_rule_each_source_its_nearest_ties_to_the_smaller_object():
    src = np.array([7, 7, 7, 5, 5, 9])
    obj = np.array([30, 20, 10, 10, 40, 10])
    dist = np.array([0.5, 0.2, 0.2, 0.9, 0.1, 0.3])
    chosen = nearest(src, obj, dist)
    assert sorted(zip(src[chosen].tolist(), obj[chosen].tolist(), strict=True)) == [
        (5, 40), (7, 10), (9, 10)
    ]  # fmt: skip
    perm = np.random.default_rng(1).permutation(src.size)
    assert np.array_equal(nearest(src[perm], obj[perm], dist[perm]), chosen[perm])
    assert nearest(src[:0], obj[:0], dist[:0]).size == 0


def test_choose_objects_leaves_movers_out_then_one_to_one():
    # sources 1 and 2 both near Object 10; 1 is a mover: 2 gets it
    cand = Candidates(
        np.array([1, 2, 3]), np.array([10, 10, 11]), np.array([-5.0, -4.0, -3.0]),
        np.array([0.1, 0.2, 0.1]), np.zeros(3, bool),
    )  # fmt: skip
    pairs = choose_objects(cand, np.array([1]), "one_to_one")
    assert pairs.diaSourceId.tolist() == [2, 3] and pairs.diaObjectId.tolist() == [10, 11]
    pairs = choose_objects(cand, np.array([], np.int64), "one_to_one")
    assert pairs.diaSourceId.tolist() == [1, 3]  # 2 makes a new Object
    pairs = choose_objects(cand, np.array([], np.int64), "nearest")
    assert pairs.diaSourceId.tolist() == [1, 2, 3]  # the old rule: both take Object 10
