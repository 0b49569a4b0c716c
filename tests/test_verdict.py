import numpy as np
import torch
from torch import nn

from hwai.measure import MeasureConfig
from hwai.measure.verdict import bootstrap_ratio, compare, verdict_of


def test_bootstrap_interval_decides_only_when_it_excludes_one():
    rng = np.random.default_rng(0)
    base = rng.lognormal(0.0, 0.15, 200)
    same = rng.lognormal(0.0, 0.15, 200)
    slower = rng.lognormal(np.log(1.3), 0.15, 200)
    ratio, low, high = bootstrap_ratio(base, slower)
    assert 1.2 < ratio < 1.4 and low > 1.0 and verdict_of(low, high) == "slower"
    ratio, low, high = bootstrap_ratio(slower, base)
    assert high < 1.0 and verdict_of(low, high) == "faster"
    ratio, low, high = bootstrap_ratio(base, same)
    assert low < 1.0 < high and verdict_of(low, high) == "no measurable difference"
    few = bootstrap_ratio(base[:5], slower[:5] * 0 + 1.05)  # five noisy runs cannot show 5%
    assert verdict_of(few[1], few[2]) == "no measurable difference"


def test_compare_tells_a_much_bigger_model_apart_from_a_small_one():
    small, big = nn.Linear(64, 10).eval(), nn.Sequential(nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048),
                                                          nn.Linear(2048, 10)).eval()
    cfg = MeasureConfig(threads=1, warmup=3, min_repeats=30, max_repeats=200, max_seconds=0.5)
    result = compare(small, big, torch.randn(1, 64), cfg, runtime="torch")
    assert result.verdict == "slower" and result.ratio > 3 and result.runs >= 30 and result.kind == "measured"
    assert "interleaved" in result.describe() and "1 thread(s)" in result.describe()
