"""Kappa on known tables, Wilson intervals on known values, and the release gate at its edges."""

from __future__ import annotations

import math

import pytest

from review.stats import cohen_kappa, release_gate, wilson_interval


@pytest.mark.parametrize(
    "table, expected",
    [
        ([[20, 5], [10, 15]], 0.4),                 # the textbook example: po 0.7, pe 0.5
        ([[45, 15], [25, 15]], 0.06 / 0.46),        # po 0.6, pe 0.54
        ([[10, 0], [0, 10]], 1.0),                  # perfect agreement
        ([[0, 10], [10, 0]], -1.0),                 # perfect disagreement
        ([[25, 25], [25, 25]], 0.0),                # chance level
        ([[5, 1, 0], [1, 5, 1], [0, 1, 5]], None),  # 3 classes, computed below
    ],
)
def test_kappa_on_known_tables(table, expected):
    if expected is None:  # po = 15/19, pe = (6*6 + 7*7 + 6*6) / 19^2
        expected = (15 / 19 - 121 / 361) / (1 - 121 / 361)
    assert cohen_kappa(table) == pytest.approx(expected)


def test_kappa_is_undefined_when_both_raters_use_one_class():
    assert cohen_kappa([[12, 0], [0, 0]]) is None
    assert cohen_kappa([[0, 0], [0, 0]]) is None


def test_kappa_rejects_a_non_square_table():
    with pytest.raises(ValueError):
        cohen_kappa([[1, 2], [3]])


def test_wilson_known_values():
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1 and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # a wider confidence gives a wider interval
    assert wilson_interval(8, 10, 0.99)[0] < wilson_interval(8, 10, 0.9)[0]


def test_gate_passes_exactly_at_the_threshold_and_fails_just_above():
    lo = wilson_interval(28, 30)[0]
    assert release_gate(28, 30, threshold=lo, min_reviews=30).passed
    above = release_gate(28, 30, threshold=math.nextafter(lo, 1), min_reviews=30)
    assert not above.passed
    assert any("lower bound" in m for m in above.missing)


def test_gate_needs_the_minimum_number_of_reviews():
    assert release_gate(30, 30, threshold=0.8, min_reviews=30).passed
    short = release_gate(29, 29, threshold=0.8, min_reviews=30)
    assert not short.passed
    assert short.missing == ["1 more reviewed items (have 29, need 30)"]


def test_gate_with_no_reviews_says_both_things_are_missing():
    g = release_gate(0, 0, threshold=0.5, min_reviews=1)
    assert not g.passed and len(g.missing) == 2 and g.rate is None
