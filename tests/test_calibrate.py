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
    cases = [Case("cnn", 16, 0.5, d) for d in ("fp32", "int8")] + [Case("synthetic", 12, 1.0, "int8", seed=3),
                                                                    Case("resnet8", 16, 0.5, "int8", seed=1, stage=2)]
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
    staged = [line for line in stored if line.startswith("model,resnet8 stage2")]
    assert len(staged) == 1 and "+" in staged[0].split(",")[6]  # a stage cut inside a block: two inputs measured
    rpi4 = targets.load(user / "rpi4.yaml")
    p = cost.predict(calibrate.build(Case("cnn", 16, 0.75))[2], rpi4, precision="int8")
    assert p.model == "learned" and "rpi4.threads-1.measurements.csv" in p.describe()


def test_a_stage_case_is_the_model_cut_in_two():
    import torch

    from hwai.calibrate.cases import example_of, model_of
    from hwai.calibrate.stages import split

    case = Case("resnet8", 16, 0.5, "fp32", seed=1, stage=2)
    model, example = model_of(case), example_of(case)
    for seed in range(6):
        (first, args1), (second, args2) = split(model, example, seed)
        with torch.no_grad():
            assert torch.allclose(second(*args2), model(example), atol=1e-5)  # the two parts are the model
        assert args1 == (example,) and all(isinstance(a, torch.Tensor) for a in args2)
    assert max(len(split(model, example, s)[1][1]) for s in range(6)) == 2  # some cuts fall inside a block


def test_clocks_and_undisturbed_runs():
    from hwai.measure import ort_trace

    assert ort_trace.clock_for("auto", 1) == "cpu" and ort_trace.clock_for("auto", 2) == "wall"
    with pytest.raises(ValueError, match="1 intra-op thread"):
        ort_trace.clock_for("cpu", 4)
    kept = ort_trace.undisturbed([0.0, 300.0, 0.5, 40.0, 0.0, 1.0, 900.0, 0.2], least=3)
    assert list(kept) == [0, 2, 4, 5, 7]  # every undisturbed run
    assert list(ort_trace.undisturbed([50.0, 300.0, 10.0, 40.0], least=2)) == [2, 3]  # else the least disturbed


def test_adaptive_sampling_goes_where_the_error_is(tmp_path):
    """Cross-validated kernel errors find the kernels no feature explains; the next batch favours the kernel
    type whose error weighs most, shaped after its worst kernels; a network shaped after a family's kernel is
    left out with that family."""
    from collections import Counter

    from test_cost_learned import FIT, write_measurements

    from hwai.calibrate import adaptive
    from hwai.cost.learned import kernel_types

    path = tmp_path / "m.csv"
    write_measurements(path, FIT, times={"dscnn": 3.0})  # dscnn's kernels run 3x slower than any feature says
    meas = measurements.read(path)
    idx, err = adaptive.kernel_errors(meas, "linear")
    fam = meas.kernels["family"][idx]
    assert np.median(err[fam == "dscnn"]) > 0.5 > 0.1 > np.median(err[fam == "resnet8"])
    batch, weights = adaptive.next_batch(meas, 24, seed=1, method="linear")
    assert len(batch) == 24 and all(c.model == "synthetic" for c in batch) and set(weights) == set(kernel_types(meas))
    top = max(weights, key=weights.get)
    assert Counter(c.focus for c in batch).most_common(1)[0][0] == adaptive.focus_of(top)
    near = [c for c in batch if c.near]
    assert near and all(c.family == f"synthetic:{c.near}" for c in near)
