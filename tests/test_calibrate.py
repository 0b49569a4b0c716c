import os
import subprocess
import sys

import numpy as np
import pytest

from hwai import calibrate, cost, targets
from hwai.calibrate import Case, roofline
from hwai.cost import measurements


def test_roofline_fit_recovers_known_factors():
    rng = np.random.default_rng(0)
    k = len(roofline.CLASSES) * len(roofline.FIT_DTYPES)
    true = np.log(np.concatenate([rng.uniform(0.05, 0.8, k), rng.uniform(1e-6, 2e-5, k), [1.0]]))
    feats = []
    for _ in range(60):
        g = int(rng.integers(5, 40))
        feats.append((rng.uniform(1e-6, 1e-3, g), rng.uniform(1e-7, 1e-4, g), rng.integers(-1, k, g)))
    measured = np.array([roofline._predict(true, f) for f in feats])
    eff, ovh, memory_scale, _ = roofline.fit(feats, measured, 3e-6)
    theta = roofline._theta(eff, ovh, memory_scale)
    fitted = np.array([roofline._predict(theta, f) for f in feats])
    assert np.abs(fitted / measured - 1).max() < 0.05


def test_quick_calibration_writes_a_target_and_measurements_the_cost_model_learns_from(tmp_path):
    cfg = calibrate.CalibrateConfig.quick(families=("cnn", "dscnn"), synthetic=1, threads=1)
    result = calibrate.calibrate(tmp_path / "host.yaml", cfg, progress=False)
    t = targets.load(tmp_path / "host.yaml")
    assert t.name == "host" and t == result.target and result.measurements == tmp_path / "host.threads-1.measurements.csv"
    measured = [f for f in t.sources if not f.startswith("energy")]
    assert all(t.sources[f][2].startswith("calibrated ") for f in measured)
    assert all(t.sources[f][2].startswith("not measured") for f in t.sources if f.startswith("energy"))
    assert t.peak_ops["fp32"] > 1e8 and t.bandwidth_bps["dram"] > 1e8 and result.micro["overhead_s"] > 0
    meas = measurements.read(result.measurements)
    assert len(meas.models["us"]) == len(cfg.cases()) == len(result.rows) == 6
    assert result.kernels == len(meas.kernels["us"]) > 40 and meas.threads == 1
    assert {"QLinearConv", "QuantizeLinear"} <= set(meas.kernels["op"])
    assert all(np.isfinite(r["error"]) and r["measured_ms"] > 0 for r in result.rows)
    matched, ran = result.detected
    assert ran > 20 and matched == ran  # every kernel ONNX Runtime ran was detected from the captured graphs
    g = calibrate.build(Case("cnn", 16, 0.25))[2]
    p = cost.predict(g, t, precision="int8")
    assert p.model == "learned" and p.latency_ms > 0 and "host.threads-1.measurements.csv" in p.describe()
    assert p.threads == 1 and "for 1 thread(s)" in p.describe()


def test_calibrate_rejects_a_non_yaml_out(tmp_path):
    with pytest.raises(calibrate.UserError, match="yaml"):
        calibrate.calibrate(tmp_path / "host.txt", progress=False)


def test_a_device_kit_is_measured_without_hwai_and_imported(tmp_path):
    cases = [Case("cnn", 16, 0.5, d) for d in ("fp32", "int8")] + [Case("synthetic", 12, 1.0, "int8", seed=3)]
    kit = calibrate.export_kit(cases, tmp_path / "kit [v1]")
    assert {p.name for p in kit.iterdir()} >= {"kit.json", "measure_kernels.py", "README.txt", "0000.onnx"}
    with pytest.raises(calibrate.UserError, match="not empty"):
        calibrate.export_kit(cases, kit)
    out = tmp_path / "measured on device.csv"
    script = ("import runpy, sys; sys.modules['hwai'] = None; "  # hwai is not importable, as on a device
              f"sys.argv = ['measure_kernels.py', {str(kit)!r}, '--out', {str(out)!r}, '--rounds', '1', '--threads', '1']; "
              f"runpy.run_path({str(kit / 'measure_kernels.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stderr and out.is_file()
    user = tmp_path / "user targets"
    env = {**os.environ, "HWAI_TARGET_DIR": str(user)}
    cli = subprocess.run([sys.executable, "-m", "hwai", "calibrate", "--from", str(out), "--target", "rpi4"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert cli.returncode == 0, cli.stderr
    stored = (user / "rpi4.threads-1.measurements.csv").read_text().splitlines()
    assert (user / "rpi4.yaml").is_file() and [line for line in stored if not line.startswith("# method:")] == \
        out.read_text().splitlines()
    assert any(line.startswith("# method: ") for line in stored)  # the regressor cross-validation chose
    rpi4 = targets.load(user / "rpi4.yaml")
    p = cost.predict(calibrate.build(Case("cnn", 16, 0.75))[2], rpi4, precision="int8")
    assert p.model == "learned" and "rpi4.threads-1.measurements.csv" in p.describe()
