import time
import types

import numpy as np
import pytest
import torch
from torch import nn

from hwai.measure import MeasureConfig, timing
from hwai.measure import verdict as hverdict
from hwai.measure.verdict import Fresh, compare, interval, verdict_of

SIM = MeasureConfig(threads=1, warmup=2, min_repeats=20, max_repeats=400, max_seconds=1.0, blocks=10)


class Clock:
    """A perf_counter that only the simulated models advance: timings with exactly the noise a test puts in."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
    return c


def simulated(clock: Clock, ms: float, rng, session_sd: float = 0.0, run_sd: float = 0.01) -> Fresh:
    """A model of `ms` per run whose every fresh session is slower or faster by its own persistent factor (memory
    placement: sd `session_sd`), with independent run-to-run noise on top."""
    def make():
        level = ms * np.exp(rng.normal(0, session_sd))

        def run() -> None:
            clock.now += level * np.exp(rng.normal(0, run_sd)) / 1e3

        return run

    return Fresh(make)


def test_a_a_difference_within_the_margin_is_no_measurable_difference(clock):
    """Two exports of one model, one 1% slower for good (e.g. how its weights are laid out): the blocks resolve the
    1%, but it lies inside the +-3% equivalence margin, so it is not a verdict."""
    rng = np.random.default_rng(0)
    a, a2 = simulated(clock, 1.0, rng, 0.002), simulated(clock, 1.01, rng, 0.002)
    result = compare(a, a2, torch.zeros(1), SIM, runtime="sim")
    assert 1.0 < result.ratio_low < result.ratio_high < 1.03  # measurably different from 1, within the margin
    assert result.verdict == "no measurable difference" and result.margin == pytest.approx(0.03)
    assert result.blocks == 10 and result.runs >= 10 * timing.MIN_ROUND_RUNS and result.threads == 1


def test_identical_callables_show_no_measurable_difference():
    fn = lambda: time.sleep(0.001)  # noqa: E731 - the same body as the second, another object
    cfg = MeasureConfig(threads=1, warmup=1, min_repeats=25, max_repeats=100, max_seconds=0.1, blocks=5)
    result = compare(fn, lambda: time.sleep(0.001), torch.zeros(1), cfg, runtime="sleep")
    assert result.verdict == "no measurable difference" and result.aa_ratio is not None


def test_a_slowdown_is_slower_with_the_interval_beyond_the_margin(clock):
    rng = np.random.default_rng(4)
    result = compare(simulated(clock, 1.0, rng, 0.01), simulated(clock, 1.2, rng, 0.01), torch.zeros(1), SIM,
                     runtime="sim")
    assert result.verdict == "slower" and result.ratio_low > 1 + result.margin and not result.widened
    assert result.ratio == pytest.approx(1.2, rel=0.03) and result.speedup == pytest.approx(1 / result.ratio)


def test_a_callable_that_sleeps_25_percent_longer_is_slower():
    cfg = MeasureConfig(threads=1, warmup=1, min_repeats=30, max_repeats=120, max_seconds=0.25, blocks=6)
    result = compare(lambda: time.sleep(0.004), lambda: time.sleep(0.005), torch.zeros(1), cfg, runtime="sleep")
    if result.margin > 0.2:  # two sessions of the same sleep lay > 20% apart: too busy a machine to tell 25% here
        pytest.skip(f"the machine is too busy for a real-time check: {result.describe()}")
    assert result.verdict == "slower" and result.ratio_low > 1 + result.margin, result.describe()
    assert 1.1 < result.ratio < 1.45 and "6 blocks" in result.describe()


def test_a_wide_a_a_spread_widens_the_margin_and_says_so(clock):
    """Sessions 8% apart (a busy machine at many threads): a 12% slowdown is not told apart from the noise of
    identical sessions, and the margin grows to the A/A spread instead of staying at 3%."""
    rng = np.random.default_rng(3)
    result = compare(simulated(clock, 1.0, rng, 0.08), simulated(clock, 1.12, rng, 0.08), torch.zeros(1), SIM,
                     runtime="sim")
    assert result.widened and result.margin == pytest.approx(result.aa_spread) and result.margin > 0.03
    assert result.ratio_low > 1.03  # beyond a fixed 3% margin: a verdict without the A/A check
    assert result.verdict == "no measurable difference", result.describe()
    assert "margin is widened" in result.describe() and "thread count is kept" in result.describe()


def test_block_interval_is_wider_than_a_run_level_one_on_bursty_timings(clock, monkeypatch):
    """Runs of one session are alike (a session's placement persists): treating 2,000 runs as independent gives a
    narrow interval around whatever the sessions happened to be; the blocks' interval covers the truth (x1)."""
    captured = []
    real = hverdict.time_rounds
    monkeypatch.setattr(hverdict, "time_rounds", lambda *a, **k: captured.append(real(*a, **k)) or captured[-1])
    rng = np.random.default_rng(2)
    result = compare(simulated(clock, 1.0, rng, 0.03), simulated(clock, 1.0, rng, 0.03), torch.zeros(1), SIM,
                     runtime="sim")
    times = captured[0].times
    before = np.log(np.concatenate(times["before"] + times["aa"]))
    after = np.log(np.concatenate(times["after"]))
    diff, se = after.mean() - before.mean(), np.sqrt(after.var() / len(after) + before.var() / len(before))
    run_low, run_high = np.exp(diff - 1.96 * se), np.exp(diff + 1.96 * se)
    assert not run_low < 1 < run_high  # runs as independent draws: a "verdict" on two identical models
    assert result.ratio_low < 1 < result.ratio_high and result.verdict == "no measurable difference"
    assert (result.ratio_high - result.ratio_low) > 5 * (run_high - run_low)


def test_interval_and_verdict_rules():
    ratio, low, high = interval(np.log([1.10, 1.12, 1.08, 1.11, 1.09]))
    assert low < ratio < high and ratio == pytest.approx(1.1, rel=0.01) and verdict_of(low, high, 0.03) == "slower"
    assert verdict_of(0.80, 0.90, 0.03) == "faster" and verdict_of(1.01, 1.02, 0.03) == "no measurable difference"
    assert verdict_of(1.01, 1.02, 0.0) == "slower"  # the margin is what keeps 1-2% from being a verdict
    few = interval(np.log([1.2, 0.9, 1.1]))  # three noisy blocks cannot show 5%
    assert verdict_of(few[1], few[2], 0.03) == "no measurable difference"


def test_compare_tells_a_much_bigger_model_apart_from_a_small_one():
    small, big = nn.Linear(64, 10).eval(), nn.Sequential(nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048),
                                                          nn.Linear(2048, 10)).eval()
    cfg = MeasureConfig(threads=1, warmup=3, min_repeats=30, max_repeats=200, max_seconds=0.3, blocks=5)
    result = compare(small, big, torch.randn(1, 64), cfg, runtime="torch")
    assert result.verdict == "slower" and result.ratio > 3 and result.runs >= 30 and result.kind == "measured"
    assert "interleaved" in result.describe() and "1 thread(s)" in result.describe()
    assert result.to_dict()["speedup"] == pytest.approx(result.speedup)


def test_compare_opens_a_fresh_onnx_runtime_session_in_every_block(tmp_path, monkeypatch):
    from hwai.runtimes.export import to_onnx

    path = to_onnx(nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), torch.randn(1, 8), tmp_path / "m.onnx")
    opened = []
    real = hverdict.ort_session
    monkeypatch.setattr(hverdict, "ort_session", lambda *a, **k: opened.append(a) or real(*a, **k))
    cfg = MeasureConfig(threads=1, warmup=1, min_repeats=5, max_repeats=50, max_seconds=0.05, blocks=4)
    result = compare(path, path, torch.randn(1, 8), cfg, baseline=path)
    assert len(opened) >= 4 * 4 and all(a[1] == 1 for a in opened)  # 4 arms x 4 blocks (more if one was wide)
    assert result.baseline_ratio is not None and result.baseline_ms > 0 and result.threads == 1


def test_sessions_timed_side_by_side_do_not_spin(tmp_path):
    """In a block every model's session is alive at once: ONNX Runtime's idle intra-op workers must sleep, not spin
    on the cores the running session needs (at 2 threads on 2 cores spinning made A/A blocks differ by +-25-40%);
    a session timed alone keeps ONNX Runtime's default."""
    from hwai.runtimes.export import to_onnx

    path = to_onnx(nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), torch.randn(1, 8), tmp_path / "m.onnx")
    run = hverdict.maker(path, torch.randn(1, 8), "onnxruntime", 2)()
    session = next(c.cell_contents for c in run.__closure__ if hasattr(c.cell_contents, "get_session_options"))
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    alone = timing.ort_session(path, 2).get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):  # not set: ONNX Runtime's default (spin)
        alone.get_session_config_entry("session.intra_op.allow_spinning")
