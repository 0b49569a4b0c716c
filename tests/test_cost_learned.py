"""The learned kernel model: fitted from stored measurements, used automatically, refusing bad files."""
import csv
import shutil

import numpy as np
import pytest

from hwai import cost, targets
from hwai.calibrate.cases import Case, build
from hwai.cost import features as F
from hwai.cost import measurements
from hwai.cost.kernels import detect, onnxruntime_cpu
from hwai.cost.learned import KernelModel
from hwai.cost.lowering import lower
from hwai.errors import UserError
from hwai.measure.ort_trace import COLUMNS, FORMAT, META_KEYS


def run_cli(*args, target_dir):
    """`python -m hwai ARGS` with its own user target folder."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HWAI_TARGET_DIR": str(target_dir)}
    return subprocess.run([sys.executable, "-m", "hwai", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)

OVERHEAD_US, SCALE, PER_KERNEL_US = 9.0, 1.1, -1.5  # whole model = 9 + 1.1 x sum(kernels) - 1.5 x kernels


def true_kernel_us(op: str, raw: dict) -> float:
    """A made-up but structured ground truth: dispatch + MACs + elements, int8 kernels twice as fast."""
    x, lin = F.matrices(op, {c: np.atleast_1d(raw[c]) for c in F.RAW})
    speed = 0.5 if op.startswith(("QLinear", "QGemm")) else 1.0
    return float(3.0 + speed * (lin[0, 1] * 2e-4 + lin[0, 2] * 2e-3) * (1.3 if "Nchwc" in op else 1.0))


def kernel_rows(case: Case, gemm_factor: float = 1.0):
    """Measurement rows of one case as the device script would write them, timed by `true_kernel_us` (GEMMs
    times `gemm_factor`)."""
    g = build(case)[2]
    channels = np.array([[n.output_shape[1] if len(n.output_shape) > 1 else 1 for n in g.nodes]])
    rows, total = [], 0.0
    for i, s in enumerate(detect(lower(g), onnxruntime_cpu(16), channels, np.full(channels.shape, case.dtype == "int8"))):
        if not s.mask[0]:
            continue
        ins, outs = (tuple(int(np.ravel(d)[0]) for d in shape) for shape in (s.in_shape, s.out_shape))
        res = bool(np.ravel(s.attrs.get("residual", False))[0])
        groups = s.attrs.get("groups", "")
        attrs = {"k": s.attrs.get("k"), "stride": s.attrs.get("stride", 0), "groups": groups or 0,
                 "cin": groups if s.attrs.get("dw") else 0, "residual": res}
        us = true_kernel_us(s.op, F.raw_from_shapes(s.op, ins, outs, attrs)) * (gemm_factor if s.op in F.GEMM else 1.0)
        total += us
        rows.append({"kind": "kernel", "case": case.label, "family": case.family, "dtype": case.dtype,
                     "kernel": f"k{i}", "op": s.op, "in_shape": "x".join(map(str, ins)),
                     "out_shape": "x".join(map(str, outs)), "k": "x".join(map(str, attrs["k"])) if attrs["k"] else "",
                     "stride": s.attrs.get("stride", ""), "groups": groups, "cin": attrs["cin"] or "", "cout": "",
                     "inputs": 3 if res else 1, "us": f"{us:.4f}", "spread_us": "0", "runs": 10})
    whole = OVERHEAD_US + SCALE * total + PER_KERNEL_US * len(rows)
    rows.insert(0, {"kind": "model", "case": case.label, "family": case.family, "dtype": case.dtype,
                    "us": f"{whole:.4f}", "spread_us": "0", "runs": 20})
    return rows, whole


def write_measurements(path, cases, threads: int = 2, speed: float = 1.0, times: dict | None = None,
                       gemm_factor=lambda case: 1.0) -> dict[str, float]:
    """A measurement file of `cases` timed by `true_kernel_us` / `speed` (`times`: family -> another factor;
    `gemm_factor(case)`: a factor on the case's GEMM kernels)."""
    wholes = {}
    with open(path, "w", newline="") as fh:
        fh.write(FORMAT + "\n")
        meta = {"machine": "test machine", "runtime": "onnxruntime test", "threads": threads,
                "date": "2026-01-02T03:04:05", "kit": "test", "rounds": 1}
        for key in META_KEYS:
            fh.write(f"# {key}: {meta[key]}\n")
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for case in cases:
            rows, whole = kernel_rows(case, gemm_factor(case))
            f = (times or {}).get(case.model, 1.0) / speed
            for r in rows:
                r["us"] = f"{float(r['us']) * f:.4f}"
            wholes[case.label] = whole * f
            writer.writerows(rows)
    return wholes


FIT = [Case(m, s, w, d) for m, s, w in (("resnet8", 16, 0.5), ("resnet8", 24, 1.0), ("cnn", 16, 0.5), ("cnn", 24, 0.75),
                                       ("dscnn", 16, 1.0), ("mlp", 16, 0.5), ("mobilenetv2", 16, 0.35))
       for d in ("fp32", "int8")]


@pytest.fixture(scope="module")
def measured_host(tmp_path_factory):
    """A host target with stored (synthetic) measurements next to it."""
    folder = tmp_path_factory.mktemp("targets")
    shutil.copyfile(targets.load("host").path, folder / "host.yaml")
    write_measurements(folder / "host.measurements.csv", FIT)
    return targets.load(folder / "host.yaml")


def test_fit_predict_round_trip_from_stored_measurements(measured_host):
    for case in (Case("resnet8", 32, 0.75, "int8"), Case("cnn", 32, 1.0, "fp32"), Case("dscnn", 24, 0.5, "int8")):
        _, truth = kernel_rows(case)  # a configuration not in the fit
        g = build(case)[2]
        p = cost.predict(g, measured_host, precision=case.dtype)
        assert p.model == "learned" and p.latency_ms == pytest.approx(truth / 1e3, rel=0.06)
        assert sum(l.latency_ms for l in p.layers) < p.latency_ms  # the per-inference overhead is in no layer
        assert p.energy_mj > 0 and p.peak_activation_bytes > 0  # energy and memory still from the roofline
    text = p.describe()
    assert "learned" in text and "host.measurements.csv" in text and "test machine" in text and "2026-01-02" in text
    roof = cost.predict(g, measured_host, precision="int8", model="roofline")
    assert roof.model == "roofline" and roof.latency_ms != pytest.approx(p.latency_ms, rel=0.01)


def test_the_fit_recovers_the_whole_model_terms(measured_host):
    model = cost.learned_model(measured_host)
    assert model.overhead_us == pytest.approx(OVERHEAD_US, rel=0.1)
    assert all(v == pytest.approx(SCALE, rel=0.03) for v in model.terms.scale.values())
    assert all(v == pytest.approx(PER_KERNEL_US, abs=0.3) for v in model.terms.per_kernel_us.values())
    assert model.nchwc_block == 16
    assert cost.learned_model(measured_host) is model  # fitted once per process
    for method in ("linear", "rf"):
        meas = measurements.load(measurements.path_for(measured_host.path))
        other = KernelModel(meas, method, exclude=("cnn",))
        truth = {c.label: kernel_rows(c)[1] for c in FIT if c.model == "cnn"}
        for label, us in other.case_us(meas, truth).items():
            assert us == pytest.approx(truth[label], rel=0.08), (method, label)


def test_batch_scores_equal_predict_with_the_learned_model(measured_host):
    g = build(Case("mobilenetv2", 16, 0.5))[2]
    scorer = cost.prepare(g, measured_host)
    assert type(scorer).__name__ == "LearnedScorer" and scorer.node_names == [n.name for n in g.nodes]
    rng = np.random.default_rng(0)
    n = len(scorer.node_names)
    bits = rng.choice([32, 8], (5, n))
    batch = scorer.score(bits=bits)
    for i in range(5):
        precision = {name: ("int8" if b == 8 else "fp32") for name, b in zip(scorer.node_names, bits[i])}
        p = cost.predict(g, measured_host, precision=precision)
        assert batch.latency_ms[i] == pytest.approx(p.latency_ms, rel=1e-9)
        assert batch.peak_activation_bytes[i] == pytest.approx(p.peak_activation_bytes, abs=1)
    scales = rng.uniform(0.3, 1.0, (8, n))
    s = scorer.score(channel_scale=scales, bits=np.full((8, n), 8))
    assert np.all(np.isfinite(s.latency_ms)) and len(set(np.round(s.latency_ms, 9))) == 8
    full = scorer.score(bits=np.full(n, 8)).latency_ms[0]
    assert s.latency_ms.max() < full * 1.05  # fewer channels never cost much more


BAD = {
    "empty": "",
    "foreign": "name,value\na,1\nb,2\n",
    "binary": "\x00\x01\x02garbage",
    "truncated": None,  # a real file cut in the middle of a row
    "not a number": None,
}


def bad_file(kind: str, good: str, folder) -> object:
    text = BAD[kind]
    if kind == "truncated":
        text = good[: len(good) // 2].rsplit(",", 3)[0]
    elif kind == "not a number":
        lines = good.splitlines()
        lines[-1] = lines[-1].rsplit(",", 3)[0] + ",fast,0,10"
        text = "\n".join(lines)
    path = folder / "m.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_corrupt_or_foreign_measurement_file_is_refused(kind, tmp_path, measured_host):
    bad = bad_file(kind, measurements.path_for(measured_host.path).read_text(), tmp_path)
    with pytest.raises(UserError, match="m.csv") as err:
        measurements.read(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["foreign", "truncated"])
def test_calibrate_from_a_bad_file_is_one_line_exit_2(kind, tmp_path, measured_host):
    bad = bad_file(kind, measurements.path_for(measured_host.path).read_text(), tmp_path)
    result = run_cli("calibrate", "--from", bad, "--target", "host", target_dir=tmp_path / "user")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "m.csv" in result.stderr
    assert not (tmp_path / "user" / "host.measurements.csv").exists()


def test_a_corrupt_file_next_to_a_target_fails_predict_with_one_line(tmp_path):
    shutil.copyfile(targets.load("host").path, tmp_path / "host.yaml")
    (tmp_path / "host.measurements.csv").write_text("kind,case\nmodel,x\n")
    g = build(Case("cnn", 16, 0.5))[2]
    with pytest.raises(UserError, match="host.measurements.csv"):
        cost.predict(g, targets.load(tmp_path / "host.yaml"))


def test_per_kernel_type_shares_and_corrections_for_a_search(measured_host):
    g = build(Case("resnet8", 16, 0.5))[2]
    scorer = cost.prepare(g, measured_host)
    n = len(scorer.node_names)
    bits = np.array([np.full(n, 32), np.full(n, 8)])
    shares, overhead = scorer.type_ms(bits=bits)
    total = scorer.score(bits=bits).latency_ms
    assert sum(shares.values()) + overhead == pytest.approx(total, rel=1e-9)
    assert shares["QLinearConv"][0] == 0 and shares["QLinearConv"][1] > 0
    doubled = cost.prepare(g, measured_host, corrections={"QLinearConv": 2.0}).score(bits=bits).latency_ms
    assert doubled[0] == pytest.approx(total[0], rel=1e-9)
    assert doubled[1] > total[1] + 0.5 * shares["QLinearConv"][1]
    roof = cost.prepare(g, targets.load("stm32h743"), corrections={"conv": 1.5})
    plain = cost.prepare(g, targets.load("stm32h743"))
    assert roof.score().latency_ms[0] > plain.score().latency_ms[0]
    with pytest.raises(UserError, match="finite and positive"):
        cost.prepare(g, measured_host, corrections={"QLinearConv": float("nan")})


def test_calibrations_per_thread_count_are_stored_and_selected(tmp_path):
    shutil.copyfile(targets.load("host").path, tmp_path / "host.yaml")
    cases = FIT
    for threads, speed in ((1, 1.0), (2, 3.0)):
        write_measurements(measurements.path_for(tmp_path / "host.yaml", threads), cases, threads, speed)
    assert measurements.path_for(tmp_path / "host.yaml", 2).name == "host.threads-2.measurements.csv"
    host = targets.load(tmp_path / "host.yaml")
    assert set(measurements.stored(host.path)) == {1, 2}
    g = build(Case("resnet8", 24, 0.75, "int8"))[2]
    one, two = (cost.predict(g, host, precision="int8", threads=n) for n in (1, 2))
    assert (one.threads, two.threads) == (1, 2) and "for 1 thread(s)" in one.describe()
    assert 2.4 < one.latency_ms / two.latency_ms < 3.6  # each from its own calibration (3x apart)
    assert "host.threads-2.measurements.csv" in two.model_source
    four = cost.predict(g, host, precision="int8", threads=4)  # none at 4: the nearest, said in a note
    assert four.threads == 2 and any("no calibration at 4 thread(s)" in n for n in four.notes)
    s1 = cost.prepare(g, host, threads=1).score(bits=np.full(len(g.nodes), 8)).latency_ms[0]
    assert s1 == pytest.approx(one.latency_ms, rel=1e-9)


def test_leave_one_family_out_excludes_the_familys_kernels(tmp_path):
    cases = FIT + [Case("synthetic", 16, 1.0, "fp32", seed=3, near="cnn", channels_hint=24)]
    clean, spoiled = tmp_path / "clean.csv", tmp_path / "spoiled.csv"
    write_measurements(clean, cases)
    write_measurements(spoiled, cases, times={"cnn": 7.0, "synthetic": 5.0})  # only cnn (and what was shaped
    # after cnn's kernels) differ
    a, b = (KernelModel(measurements.read(p), "gbt", exclude=("cnn",)) for p in (clean, spoiled))
    k = measurements.read(spoiled).kernels
    kept = ~np.isin(k["family"].astype(str), ("cnn", "synthetic:cnn"))
    assert sum(b.rows.values()) == int(kept.sum()) < len(k["us"])
    meas = measurements.read(clean)
    labels = [c.label for c in cases if c.model == "cnn"]
    assert b.case_us(meas, labels) == pytest.approx(a.case_us(meas, labels), rel=1e-9)
    c = KernelModel(measurements.read(spoiled), "gbt", exclude=("resnet8",))  # a fit that keeps cnn sees them
    assert c.case_us(meas, labels)[labels[0]] > 2 * a.case_us(meas, labels)[labels[0]]


def test_a_kernel_is_predicted_in_the_context_of_its_models_weights(tmp_path):
    """The same GEMM runs 2x slower in a model whose weights (> 2 MB) leave the caches between inferences
    (measured: a 1024x512 FP32 GEMV 68 us in a 3 MB MLP, 33 us predicted from smaller models). Without the model's
    weight bytes among the kernel features, the held-out models are off by > 10%."""
    def weight_bytes(case):
        return sum(p.numel() for p in build(case)[0].parameters()) * 4

    held = [Case("mlp", 24, 0.5, "fp32"), Case("mlp", 32, 0.5, "fp32")]  # 1.7 MB and 2.6 MB of weights
    fit = [Case("mlp", s, w, "fp32") for s in (16, 24, 32, 40) for w in (0.125, 0.25, 0.5, 1.0)]
    big = lambda case: 2.0 if weight_bytes(case) > 2e6 else 1.0  # noqa: E731
    truth = write_measurements(tmp_path / "m.csv", fit, gemm_factor=big)
    assert [big(c) for c in held] == [1.0, 2.0]
    meas = measurements.read(tmp_path / "m.csv")
    model = KernelModel(meas, "gbt", exclude=tuple(c.label for c in held))  # nothing measured in them is fitted
    got = model.case_us(meas, [c.label for c in held])
    for case in held:
        assert got[case.label] == pytest.approx(truth[case.label], rel=0.10)


def test_a_pipeline_stage_prediction_includes_its_session_overhead(measured_host):
    from hwai import models
    from hwai.shard.link import load as load_link
    from hwai.shard.plan import Device, Planner

    net = models.create("resnet8", num_classes=10, in_channels=3, input_size=16, width=0.5).eval()
    import torch

    planner = Planner(graph_of(net), [Device(measured_host, threads=2)] * 2, [load_link("loopback")])
    pos = next(k for k in planner.positions if len(planner.crossing(k)) == 2)
    model = cost.learned_model(measured_host, threads=2)
    for start, stop in ((0, pos), (pos, len(planner.nodes))):
        part = planner.part(0, start, stop)
        sub = planner.part_graph(start, stop)
        pred = cost.predict(sub, measured_host, precision="fp32", threads=2)
        layers = sum(l.latency_ms for l in pred.layers)
        assert part.latency_ms == pytest.approx(pred.latency_ms, rel=1e-9)
        assert part.latency_ms - layers >= model.overhead_us / 1e3 * 0.999  # the stage's own session run
    del torch


def graph_of(net):
    import torch

    from hwai import graph

    return graph.capture(net, torch.randn(1, 3, 16, 16))
