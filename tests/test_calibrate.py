import numpy as np
import pytest

from hwai import calibrate, cost, targets
from hwai.measure import MeasureConfig


def test_fit_recovers_known_factors():
    rng = np.random.default_rng(0)
    k = len(calibrate.CLASSES) * len(calibrate.FIT_DTYPES)
    true = np.log(np.concatenate([rng.uniform(0.05, 0.8, k), rng.uniform(1e-6, 2e-5, k), [1.0]]))
    feats = []
    for _ in range(60):
        g = int(rng.integers(5, 40))
        feats.append((rng.uniform(1e-6, 1e-3, g), rng.uniform(1e-7, 1e-4, g), rng.integers(-1, k, g)))
    measured = np.array([calibrate._predict(true, f) for f in feats])
    eff, ovh, memory_scale, _ = calibrate.fit(feats, measured, 3e-6)
    theta = calibrate._theta(eff, ovh, memory_scale)
    fitted = np.array([calibrate._predict(theta, f) for f in feats])
    assert np.abs(fitted / measured - 1).max() < 0.05


def test_calibrate_writes_a_valid_calibrated_target(tmp_path):
    cfg = calibrate.CalibrateConfig(fit=calibrate._grid([("cnn", 16, 0.25), ("dscnn", 16, 0.25)]),
                                    held_out=(calibrate.Case("cnn", 16, 0.5),), gemm_size=64, threads=1,
                                    measure=MeasureConfig(warmup=2, min_repeats=10, max_repeats=50, max_seconds=0.2), rounds=1)
    result = calibrate.calibrate(tmp_path / "host.yaml", cfg, progress=False)
    t = targets.load(tmp_path / "host.yaml")
    assert t.name == "host" and t == result.target
    measured = [f for f in t.sources if not f.startswith("energy")]
    assert all(t.sources[f][2].startswith("calibrated ") for f in measured)
    assert all(t.sources[f][2].startswith("not measured") for f in t.sources if f.startswith("energy"))
    assert {"conv:fp32", "conv:int8", "depthwise:fp32", "_default"} <= set(t.efficiency)
    assert t.lanes["fp32"] in calibrate.LANES
    assert t.peak_ops["fp32"] > 1e8 and t.bandwidth_bps["dram"] > 1e8 and result.micro["overhead_s"] > 0
    assert [r["split"] for r in result.rows] == ["fit"] * 4 + ["held-out"]
    fit_errors = [abs(r["error"]) for r in result.rows if r["split"] == "fit"]
    assert max(fit_errors) < 0.3  # 4 measurements, 16 factors: the fit should nearly pass through them
    assert np.isfinite(result.held_out_error())
    g = calibrate.build(calibrate.Case("cnn", 16, 0.25))[2]
    assert cost.predict(g, t).latency_ms > 0


def test_calibrate_rejects_a_non_yaml_out(tmp_path):
    with pytest.raises(calibrate.UserError, match="yaml"):
        calibrate.calibrate(tmp_path / "host.txt", progress=False)
