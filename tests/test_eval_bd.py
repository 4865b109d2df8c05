"""Bjøntegaard deltas: hand-checkable cases plus values computed once with the
`bjontegaard` package 1.3.0 (``bd_rate/bd_psnr(..., method=m, min_overlap=0)``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saic.eval.bd import bd_psnr, bd_quality, bd_rate, overlap_fraction

RA = [0.25, 0.4, 0.6, 0.9, 1.3, 1.8]
PA = [26.1, 28.0, 29.9, 31.8, 33.6, 35.4]
RT = [0.12, 0.2, 0.33, 0.5, 0.8, 1.2]
PT = [25.7, 27.6, 29.6, 31.3, 33.2, 35.0]


def test_same_curve_is_zero() -> None:
    assert bd_rate(RA, PA, RA, PA) == pytest.approx(0.0, abs=1e-12)
    assert bd_psnr(RA, PA, RA, PA) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_rate_scaled_by_0_8_is_minus_20_percent(method: str) -> None:
    assert bd_rate(RA, PA, np.array(RA) * 0.8, PA, method) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RA, PA, np.array(RA) * 1.25, PA, method) == pytest.approx(25.0, abs=1e-9)


def test_quality_shift_is_bd_psnr() -> None:
    assert bd_quality(RA, PA, RA, np.array(PA) + 0.5) == pytest.approx(0.5, abs=1e-9)
    # anchor/test swapped flips the sign
    assert bd_psnr(RA, np.array(PA) + 0.5, RA, PA) == pytest.approx(-0.5, abs=1e-9)


@pytest.mark.parametrize("method,rate,psnr", [
    ("pchip", -39.27354348070756, 2.167720890897383),
    ("cubic", -39.26374634572728, 2.16615923516212),
])
def test_matches_bjontegaard_package(method: str, rate: float, psnr: float) -> None:
    assert bd_rate(RA, PA, RT, PT, method) == pytest.approx(rate, abs=1e-9)
    assert bd_psnr(RA, PA, RT, PT, method) == pytest.approx(psnr, abs=1e-9)


def test_order_and_duplicates_do_not_matter() -> None:
    perm = [3, 0, 5, 1, 4, 2]
    assert bd_rate([RA[i] for i in perm], [PA[i] for i in perm], RT, PT) == pytest.approx(
        bd_rate(RA, PA, RT, PT), abs=1e-12)
    assert math.isfinite(bd_rate(RA + [RA[0]], PA + [PA[0]], RT, PT))


def test_no_overlap_or_too_few_points_is_nan() -> None:
    assert math.isnan(bd_rate(RA, PA, RT, np.array(PT) + 100))
    assert math.isnan(bd_rate(RA[:1], PA[:1], RT, PT))
    assert math.isnan(bd_rate(RA[:3], PA[:3], RT, PT, "cubic"))
    assert overlap_fraction([0, 1], [2, 3]) == 0.0
    assert overlap_fraction([0, 2], [1, 3]) == pytest.approx(1 / 3)


def test_rd_frontier_drops_inefficient_points() -> None:
    from saic.eval.bd import rd_frontier

    r, q = rd_frontier([1.0, 0.5, 2.0, 1.5, 0.25], [30.0, 28.0, 29.5, 31.0, 28.0])
    assert r == [0.25, 1.0, 1.5] and q == [28.0, 30.0, 31.0]
