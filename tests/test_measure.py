import pytest
import torch

from hwai import measure
from hwai.errors import UserError
from hwai.measure import layers


def test_latency_stats_are_consistent():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    stats = measure.latency(model, torch.randn(4, 64), measure.MeasureConfig(threads=1, min_repeats=20, max_seconds=1))
    assert stats.kind == "measured" and stats.runtime == "torch" and stats.threads == 1 and stats.batch == 4
    assert stats.repeats >= 20 and 0 < stats.min_ms <= stats.median_ms and stats.iqr_ms >= 0
    assert "measured: torch, 1 thread(s)" in stats.describe()


def test_time_cap_and_bad_configs():
    calls = []
    cfg = measure.MeasureConfig(warmup=2, min_repeats=5, max_repeats=21, rounds=3)
    stats = measure.time_callable(lambda: calls.append(1), cfg, "x", 1, 1)
    assert stats.repeats == 21 and len(calls) == 21 + 3 * 2 and stats.rounds == 3  # 7 runs a round, warm-up each
    with pytest.raises(UserError):
        measure.MeasureConfig(threads=0)
    with pytest.raises(UserError, match="blocks >= 3"):
        measure.MeasureConfig(blocks=2)
    with pytest.raises(UserError, match="margin"):
        measure.MeasureConfig(margin=-0.01)
    with pytest.raises(UserError, match="unknown runtime"):
        measure.latency(torch.nn.Identity(), torch.ones(1), runtime="tvm")


def test_rounds_open_a_fresh_session_each_and_report_their_repeatability(monkeypatch):
    """Sessions 10% apart: each round gets its own (made once per round), the figure is the median round, and the
    figure says how far the rounds lie apart."""
    import types

    from hwai.measure import timing

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    levels, made = iter([1.0, 1.1, 0.9]), []

    def make():
        level = next(levels)
        made.append(level)

        def run():
            clock.now += level / 1e3

        return run

    cfg = measure.MeasureConfig(warmup=1, min_repeats=30, max_repeats=300, rounds=3)
    stats = timing.time_rounds({"m": make}, cfg, threads=2).stats("m", "sim", 1)
    assert sorted(made) == [0.9, 1.0, 1.1] and stats.rounds == 3 and stats.threads == 2
    assert stats.median_ms == pytest.approx(1.0) and stats.round_spread == pytest.approx(0.1)
    assert "3 round(s) with a fresh session each" in stats.describe() and "rounds within ±10.0%" in stats.describe()


def test_physical_cores_is_positive():
    assert 1 <= measure.physical_cores() <= (torch.get_num_threads() * 4 + 64)


def test_peak_memory_sees_a_temporary_allocation():
    import ctypes

    try:  # blocks earlier tests freed may still be resident in the heap, where the 64 MiB could be served from
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # without growing the process: give them back to the system first
    except (OSError, AttributeError):
        pass
    mem = measure.peak_memory(lambda: torch.ones(16 * 2**20).sum(), runs=2)  # 64 MiB, freed after each run
    assert mem is not None and mem.increase_bytes >= 32 * 2**20 and mem.peak_rss_bytes > mem.increase_bytes


def test_ort_kernel_names_map_to_nodes_by_longest_prefix():
    aliases = {"/conv1/Conv": "/conv1/Conv", "/relu/Relu": "/relu/Relu", "/relu/Relu_output_0": "/conv1/Conv"}
    assert layers._owner("/conv1/Conv", aliases) == "/conv1/Conv"
    assert layers._owner("/conv1/Conv_token_25", aliases) == "/conv1/Conv"
    assert layers._owner("/relu/Relu_output_0_nchwc", aliases) == "/conv1/Conv"  # fused conv+relu kernel
    assert layers._owner("Transpose_token_3", aliases) == layers.UNMAPPED


def test_layer_times_average_typical_runs_so_they_add_up_to_a_run():
    spans = []
    for i, (a, b) in enumerate([(1.0, 1.0)] * 6 + [(9.0, 1.0), (1.0, 9.0)]):  # two preempted runs
        t = i * 100.0
        spans += [(layers.RUN_LABEL, t, t + 30), ("a", t, t + a), ("b", t + 10, t + 10 + b)]
    lt = layers._layer_times([(n, s * 1e3, e * 1e3) for n, s, e in spans], "test", [2.0])
    assert lt.layers == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)} and lt.runs == 8 and lt.typical == 6
    assert lt.profiled_ms == pytest.approx(30.0) and lt.interleaved_ms == 2.0 and lt.unmapped_ms == 0


def test_a_wide_spread_is_measured_again_and_flagged():
    """IQR above 20% of the median: the round is measured once more, and reported with its flags; a steady one is
    not repeated."""
    import itertools
    import time

    slow = itertools.cycle([0.0, 0.004])  # every other run 4 ms late: what a busy machine does to a 1 ms model
    calls = []

    def bursty():
        calls.append(1)
        time.sleep(0.001 + next(slow))

    cfg = measure.MeasureConfig(warmup=0, min_repeats=20, max_repeats=20, rounds=2)
    stats = measure.time_callable(bursty, cfg, "x", 1, 1)
    assert stats.repeated == 2 and stats.wide == 2 and len(calls) == 40  # 2 rounds of 10, each taken twice
    assert "spread stayed wide in 2 of 2 round(s)" in stats.describe()
    steady = measure.time_callable(lambda: time.sleep(0.002), cfg, "x", 1, 1)
    assert not steady.repeated and not steady.wide and steady.spread_note() == ""
