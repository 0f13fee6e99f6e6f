"""Tests for mcit.metrics: hand-computed values, identities on random matrices, validation."""

from __future__ import annotations


import numpy as np
import pytest

from mcit.metrics import compute_metrics

# Rows: after stage t; columns: task i. Upper triangle = scores on tasks not trained yet.
A3 = [
    [80.0, 30.0, 20.0],
    [88.0, 90.0, 40.0],
    [75.0, 60.0, 85.0],
]
B3 = [10.0, 25.0, 30.0]


def reference_metrics(a, b=None):
    """Direct transcription of the formulas with 1-based t, i (deliberately loop-based)."""
    T = len(a)
    A = lambda t, i: a[t - 1][i - 1]  # noqa: E731
    out = {
        "MFT": sum(A(i, i) for i in range(1, T + 1)) / T,
        "MFN": sum(A(T, i) for i in range(1, T + 1)) / T,
        "MAA": sum(sum(A(t, i) for i in range(1, t + 1)) / t for t in range(1, T + 1)) / T,
        "BWT": None,
        "Forgetting": None,
        "FWT": None,
    }
    if T > 1:
        out["BWT"] = sum(A(T, i) - A(i, i) for i in range(1, T)) / (T - 1)
        out["Forgetting"] = sum(
            max(A(l, i) - A(T, i) for l in range(i, T)) for i in range(1, T)
        ) / (T - 1)
        if b is not None:
            out["FWT"] = sum(A(i - 1, i) - b[i - 1] for i in range(2, T + 1)) / (T - 1)
    return out


def random_lower(rng, T, fill_upper=False):
    a = rng.uniform(0.0, 100.0, size=(T, T))
    if not fill_upper:
        a[np.triu_indices(T, k=1)] = np.nan
    return a


def random_sizes(seed, cases, low, high):
    """(rng, T) for each case: the property tests' seeded loop over random task counts, low <= T < high."""
    rng = np.random.default_rng(seed)
    for _ in range(cases):
        yield rng, int(rng.integers(low, high))


# ------------------------------------------------------------------- hand-computed values


def test_hand_computed_3x3():
    m = compute_metrics(A3, B3)
    # MFT = (80 + 90 + 85) / 3 = 255 / 3 = 85
    assert m["MFT"] == pytest.approx(85.0)
    # MFN = (75 + 60 + 85) / 3 = 220 / 3 = 73.333...
    assert m["MFN"] == pytest.approx(220.0 / 3.0)
    # A_1 = 80; A_2 = (88 + 90) / 2 = 89; A_3 = 220 / 3
    # MAA = (80 + 89 + 220/3) / 3 = (507/3 + 220/3) / 3 = 727 / 9 = 80.777...
    assert m["MAA"] == pytest.approx(727.0 / 9.0)
    # BWT = ((75 - 80) + (60 - 90)) / 2 = (-5 - 30) / 2 = -17.5
    assert m["BWT"] == pytest.approx(-17.5)
    # Forgetting: task 1 best over stages 1..2 = max(80, 88) = 88, drop 88 - 75 = 13;
    # task 2 best over stage 2 = 90, drop 90 - 60 = 30; mean = (13 + 30) / 2 = 21.5
    # (differs from -BWT = 17.5 because task 1 improved at stage 2 before dropping)
    assert m["Forgetting"] == pytest.approx(21.5)
    # FWT = ((a[1][2] - b[2]) + (a[2][3] - b[3])) / 2 = ((30 - 25) + (40 - 30)) / 2 = 7.5
    assert m["FWT"] == pytest.approx(7.5)
    # identity check on the same numbers: 220/3 - 85 = -35/3 = (2/3) * -17.5
    assert m["MFN"] - m["MFT"] == pytest.approx((2.0 / 3.0) * m["BWT"])


def test_returns_exact_key_set_and_plain_floats():
    m = compute_metrics(A3, B3)
    assert set(m) == {"MFT", "MFN", "MAA", "BWT", "Forgetting", "FWT"}
    assert all(type(v) is float for v in m.values())


def test_numpy_input_with_nan_upper_triangle_matches_list_input():
    arr = np.array(A3, dtype=float)
    arr[0, 2] = np.nan  # not needed by any metric (FWT uses a[0][1] and a[1][2] only)
    assert compute_metrics(arr, np.array(B3)) == pytest.approx(compute_metrics(A3, B3))


def test_fwt_hand_computed_2x2():
    # FWT = (a[1][2] - b[2]) / 1 = 35 - 20 = 15 (b[1] is never used)
    m = compute_metrics([[70.0, 35.0], [65.0, 80.0]], zero_shot=[99.0, 20.0])
    assert m["FWT"] == pytest.approx(15.0)


def test_fwt_none_without_zero_shot():
    assert compute_metrics(A3)["FWT"] is None
    assert compute_metrics(A3, None)["FWT"] is None


def test_fwt_none_when_an_upper_diagonal_cell_is_missing():
    a = [row[:] for row in A3]
    a[1][2] = None
    assert compute_metrics(a, B3)["FWT"] is None
    a = [row[:] for row in A3]
    a[0][1] = float("nan")
    assert compute_metrics(a, B3)["FWT"] is None


def test_fwt_none_when_needed_zero_shot_is_missing():
    assert compute_metrics(A3, [10.0, None, 30.0])["FWT"] is None
    # b[1] (first task) is not used by FWT, so it may be missing
    assert compute_metrics(A3, [None, 25.0, 30.0])["FWT"] == pytest.approx(7.5)


def test_single_task():
    m = compute_metrics([[42.5]], zero_shot=[10.0])
    assert m["MFT"] == m["MFN"] == m["MAA"] == pytest.approx(42.5)
    assert m["BWT"] is None and m["Forgetting"] is None and m["FWT"] is None


def test_forgetting_can_be_negative():
    # The max in Forgetting runs over stages i..T-1 and excludes the final stage, so a task
    # that improves at the last stage has a negative term: Forgetting >= 0 is NOT an identity.
    # Forgetting = 50 - 60 = -10; BWT = 60 - 50 = +10
    m = compute_metrics([[50.0, None], [60.0, 70.0]])
    assert m["Forgetting"] == pytest.approx(-10.0)
    assert m["BWT"] == pytest.approx(10.0)


# ------------------------------------------------------------------- properties (random)


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_transcription(seed):
    for rng, T in random_sizes(seed, 60, 1, 9):
        a = random_lower(rng, T, fill_upper=True)
        b = rng.uniform(0, 100, size=T)
        got = compute_metrics(a, b)
        want = reference_metrics(a.tolist(), b.tolist())
        for key, value in want.items():
            if value is None:
                assert got[key] is None, key
            else:
                assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("seed", range(5))
def test_identity_mfn_minus_mft_equals_scaled_bwt(seed):
    for rng, T in random_sizes(100 + seed, 200, 2, 12):
        m = compute_metrics(random_lower(rng, T))
        assert m["MFN"] - m["MFT"] == pytest.approx((T - 1) / T * m["BWT"], abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_upper_triangle_changes_only_fwt(seed):
    for rng, T in random_sizes(200 + seed, 200, 1, 10):
        lower = random_lower(rng, T)
        filled = lower.copy()
        upper = np.triu_indices(T, k=1)
        filled[upper] = rng.uniform(0, 100, size=len(upper[0]))
        m_lower, m_filled = compute_metrics(lower), compute_metrics(filled)
        for key in ("MFT", "MFN", "MAA", "BWT", "Forgetting"):
            if m_lower[key] is None:
                assert m_filled[key] is None
            else:
                assert m_filled[key] == pytest.approx(m_lower[key], abs=1e-12), key


@pytest.mark.parametrize("seed", range(5))
def test_no_forgetting_gives_zero_bwt_and_forgetting(seed):
    for rng, T in random_sizes(300 + seed, 200, 1, 10):
        learned = rng.uniform(0, 100, size=T)
        a = np.full((T, T), np.nan)
        for t in range(T):
            a[t, : t + 1] = learned[: t + 1]  # a[t][i] = a[i][i] for every t >= i
        m = compute_metrics(a)
        assert m["MFN"] == pytest.approx(m["MFT"], abs=1e-12)
        if T == 1:
            assert m["BWT"] is None and m["Forgetting"] is None
        else:
            assert m["BWT"] == pytest.approx(0.0, abs=1e-12)
            assert m["Forgetting"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_forgetting_at_least_minus_bwt(seed):
    # The max over l in i..T-1 includes l = i, so each Forgetting term is >= a[i][i] - a[T][i],
    # whose mean is -BWT. (Forgetting >= 0 does not hold: see test_forgetting_can_be_negative.)
    for rng, T in random_sizes(400 + seed, 200, 2, 10):
        m = compute_metrics(random_lower(rng, T))
        assert m["Forgetting"] >= -m["BWT"] - 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_last_diagonal_cell_shifts_mfn_and_mft_alike(seed):
    for rng, T in random_sizes(500 + seed, 100, 1, 10):
        a = random_lower(rng, T)
        before = compute_metrics(a)
        a[T - 1, T - 1] += rng.uniform(-20, 20)
        after = compute_metrics(a)
        assert after["MFN"] - after["MFT"] == pytest.approx(before["MFN"] - before["MFT"], abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_constant_shift(seed):
    # Adding c everywhere shifts the averages by c and leaves the differences unchanged.
    for rng, T in random_sizes(600 + seed, 100, 2, 10):
        a = random_lower(rng, T, fill_upper=True)
        b = rng.uniform(0, 100, size=T)
        c = float(rng.uniform(-30, 30))
        m, s = compute_metrics(a, b), compute_metrics(a + c, b + c)
        for key in ("MFT", "MFN", "MAA"):
            assert s[key] == pytest.approx(m[key] + c, abs=1e-9)
        for key in ("BWT", "Forgetting", "FWT"):
            assert s[key] == pytest.approx(m[key], abs=1e-9)


# ------------------------------------------------------------------- validation


def test_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        compute_metrics([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(ValueError, match="row 1"):
        compute_metrics([[1.0, None], [2.0]])


def test_rejects_missing_lower_cell_and_names_it():
    with pytest.raises(ValueError, match=r"a\[1\]\[0\]"):
        compute_metrics([[80.0, None], [None, 90.0]])
    with pytest.raises(ValueError, match=r"a\[2\]\[2\]"):
        compute_metrics([[1.0, None, None], [1.0, 1.0, None], [1.0, 1.0, None]])


def test_rejects_nan_and_inf():
    with pytest.raises(ValueError, match=r"a\[1\]\[1\]"):
        compute_metrics([[80.0, None], [70.0, float("nan")]])
    with pytest.raises(ValueError, match=r"a\[0\]\[0\]"):
        compute_metrics(np.array([[np.inf, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"a\[0\]\[1\]"):
        compute_metrics([[1.0, float("inf")], [1.0, 2.0]])


def test_rejects_bad_values_and_shapes():
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([])
    with pytest.raises(ValueError, match=r"a\[0\]\[0\]"):
        compute_metrics([["high"]])
    with pytest.raises(ValueError, match="zero_shot"):
        compute_metrics(A3, zero_shot=[1.0, 2.0])
