"""The catalogue's id lookup against a plain dict, over random adds and removes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from association.catalogue import ids as ids_module
from association.catalogue.ids import IdIndex

STEPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove"]),
        st.lists(st.integers(1, 400), min_size=0, max_size=60, unique=True),
        st.integers(0, 9),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(STEPS, st.integers(2, 50))
def test_lookup_equals_a_dict(steps, threshold):
    old = ids_module._DELTA_MIN
    ids_module._DELTA_MIN = threshold  # small parts: merges and compactions happen often
    try:
        index, model = IdIndex(), {}
        for op, keys, chunk in steps:
            if op == "add":
                new = np.array(sorted(k for k in keys if k not in model), np.int64)
                index.add(new, chunk)
                model.update(dict.fromkeys(new.tolist(), chunk))
            else:
                index.remove(np.array(sorted(keys), np.int64))
                for k in keys:
                    model.pop(k, None)
            probe = np.arange(0, 402, dtype=np.int64)
            want = np.array([model.get(k, -1) for k in probe.tolist()])
            np.testing.assert_array_equal(index.locate(probe), want)
            assert len(index) == len(model)
    finally:
        ids_module._DELTA_MIN = old


def test_evicting_does_not_copy_the_main_array():
    index = IdIndex()
    index.add(np.arange(1, 1_000_001, dtype=np.int64), 7)
    main = index._main[0]
    index.remove(np.arange(1, 1001, dtype=np.int64))
    assert index._main[0] is main
    assert index.locate(np.array([1, 1000, 1001])).tolist() == [-1, -1, 7]
    index.add(np.arange(1, 11, dtype=np.int64), 3)
    assert index._main[0] is main
    assert index.locate(np.array([1, 10, 11])).tolist() == [3, 3, -1]
