import pytest
import torch

from hwai import measure
from hwai.errors import UserError


def test_latency_stats_are_consistent():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    stats = measure.latency(model, torch.randn(4, 64), measure.MeasureConfig(threads=1, min_repeats=20, max_seconds=1))
    assert stats.kind == "measured" and stats.runtime == "torch" and stats.threads == 1 and stats.batch == 4
    assert stats.repeats >= 20 and 0 < stats.min_ms <= stats.median_ms and stats.iqr_ms >= 0
    assert "measured: torch, 1 thread(s)" in stats.describe()


def test_time_cap_and_bad_configs():
    calls = []
    stats = measure.time_callable(lambda: calls.append(1), measure.MeasureConfig(warmup=2, min_repeats=5,
                                                                                  max_repeats=7), "x", 1, 1)
    assert stats.repeats == 7 and len(calls) == 9
    with pytest.raises(UserError):
        measure.MeasureConfig(threads=0)
    with pytest.raises(UserError, match="unknown runtime"):
        measure.latency(torch.nn.Identity(), torch.ones(1), runtime="tvm")


def test_physical_cores_is_positive():
    assert 1 <= measure.physical_cores() <= (torch.get_num_threads() * 4 + 64)
