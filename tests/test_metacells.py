import math

import numpy as np
import pytest

from p2g_dask.tl.engine.metacells import MetacellMembership, metacell_membership, metacells, overlap_filter


def _overlap_filter_reference(table, max_shared):
    kept = []
    for i, row in enumerate(table):
        if all(len(set(row) & set(table[j])) <= max_shared for j in kept):
            kept.append(i)
    mask = np.zeros(len(table), bool)
    mask[kept] = True
    return mask


def test_overlap_filter__hand_made_tables():
    table = np.array(
        [
            [0, 1, 2, 3, 4],  # kept
            [0, 1, 2, 3, 9],  # shares 4 with row 0 > 3: dropped
            [0, 1, 2, 7, 8],  # shares 3 with row 0: kept (not more than 3)
            [5, 6, 7, 8, 9],  # shares 2 with row 2: kept
            [0, 1, 2, 3, 8],  # shares 4 with row 0: dropped
        ]
    )
    assert overlap_filter(table, 3).tolist() == [True, False, True, True, False]


def test_overlap_filter__only_kept_metacells_count():
    # Row 2 overlaps row 1 heavily, but row 1 was dropped, so row 2 stays.
    table = np.array([[0, 1, 2, 3], [0, 1, 2, 9], [8, 1, 2, 9]])
    assert overlap_filter(table, 2).tolist() == [True, False, True]


def test_overlap_filter__matches_reference_on_random_tables():
    rng = np.random.default_rng(3)
    for _ in range(20):
        table = np.array([rng.choice(30, 8, replace=False) for _ in range(25)])
        for cut in (2, 4, 6):
            assert overlap_filter(table, cut).tolist() == _overlap_filter_reference(table.tolist(), cut).tolist()


def test_metacells__seeded_knn_matches_brute_force():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 6))
    table = metacells(emb, n_metacells=40, k_neighbors=15, seed=5)
    again = metacells(emb, n_metacells=40, k_neighbors=15, seed=5)
    np.testing.assert_array_equal(table, again)
    seeds = np.random.default_rng(5).choice(400, 40, replace=False)
    distances = ((emb[seeds, None, :] - emb[None, :, :]) ** 2).sum(-1)
    reference = np.argsort(distances, axis=1, kind="stable")[:, :15]
    keep = _overlap_filter_reference(reference.tolist(), math.floor(0.8 * 15))
    np.testing.assert_array_equal(np.sort(table, 1), np.sort(reference[keep], 1))
    assert (table[:, 0] == seeds[keep]).all()


def test_metacells__more_metacells_than_cells_samples_with_replacement(caplog):
    emb = np.random.default_rng(1).normal(size=(30, 3))
    with caplog.at_level("WARNING", logger="p2g_dask"):
        table = metacells(emb, n_metacells=50, k_neighbors=40, seed=1)
    assert "with replacement" in caplog.text and "k_neighbors=40 exceeds" in caplog.text
    assert table.shape == (1, 30)


def test_metacell_membership__dense_equivalent():
    table = np.array([[0, 3], [1, 2]])
    dense = metacell_membership(table, 4).toarray()
    np.testing.assert_array_equal(dense, [[1, 0, 0, 1], [0, 1, 1, 0]])
    with pytest.raises(ValueError, match="outside"):
        metacell_membership(table, 3)


def test_metacell_membership_wrapper__copies_cheaply_and_compares_by_value():
    import copy

    m = MetacellMembership(np.arange(6).reshape(3, 2))
    assert copy.deepcopy(m) is m
    assert m == MetacellMembership(np.arange(6).reshape(3, 2))
    assert m != MetacellMembership(np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(np.asarray(m), np.arange(6).reshape(3, 2))
