"""Measured-vs-predicted feedback: a correction is kept only when it lowers the held-out error."""
import pytest

from hwai.search.feedback import MIN_PAIRS, Pair, fit, pairs


def _pairs(group, factor, noise, n=8, start=1.0):
    """Predictions start, start+1, ...; measurements off by `factor`, times +noise / -noise alternately."""
    return [Pair(group, start + i, (start + i) * factor * (1 + noise * (-1) ** i)) for i in range(n)]


def test_a_systematic_bias_is_corrected_and_held_out_error_drops():
    c = fit(_pairs("fp32", 2.0, 0.02))
    assert c.form == "one factor" and c.factor("fp32") == pytest.approx(2.0, rel=0.01)
    assert c.held_out_error_raw_pct > 45 and c.held_out_error_pct < 3  # raw: every prediction off by half
    assert c.apply(10.0, "fp32") == pytest.approx(20.0, rel=0.01)


def test_kernel_groups_off_by_different_factors_get_their_own():
    c = fit(_pairs("fp32", 2.0, 0.02) + _pairs("int", 0.5, 0.02))
    assert c.form == "per group"
    assert c.factor("fp32") == pytest.approx(2.0, rel=0.01) and c.factor("int") == pytest.approx(0.5, rel=0.01)
    assert c.forms["per group"] < min(c.forms["one factor"], c.forms["none"])


def test_noise_without_bias_keeps_the_cost_model_as_it_is():
    c = fit(_pairs("fp32", 1.0, 0.1))
    assert c.form == "none" and c.factor("fp32") == 1.0 and c.held_out_error_pct == c.held_out_error_raw_pct


def test_too_few_pairs_correct_nothing_and_copies_count_once():
    assert fit(_pairs("fp32", 2.0, 0.0, n=MIN_PAIRS - 1)).form == "none"
    metrics = [{"host_predicted_raw_ms": 1.0, "host_latency_ms": 2.0, "host_group": "int"},
               {"host_predicted_raw_ms": 1.0, "host_latency_ms": 2.0, "duplicate_of": 0},
               {"host_latency_ms": 2.0}]
    assert pairs(metrics) == [Pair("int", 1.0, 2.0)]
