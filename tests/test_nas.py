"""Weight-sharing NAS on tiny supernets: extraction equals the supernet, the sandwich trains the smallest
and largest subnets, training resumes after kill -9, the cost table composes to cost.predict, the
predictor and scorer shapes, extracted subnets go through the passes and export, and the CLI."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from hwai.nas import supernet as hsn
from hwai.nas import training
from hwai.nas.space import NasSpace

TINY = {"mobilenetv2": dict(resolutions=(8, 12), widths=(0.5, 1.0), depths=(1, 2), kernels=(3, 5), expands=(2, 3),
                            stages=((16, 1), (24, 2)), stem=16, head=32),
        "resnet": dict(resolutions=(8, 12), widths=(0.5, 1.0), depths=(1, 2), stages=((16, 1), (24, 2)))}


@contextmanager
def _tiny_ops():
    """Tiny supernets run thousands of tiny convolutions of ever-changing shapes: one thread is as fast
    (and far faster on a busy machine), and oneDNN's per-shape kernel set-up costs more than the work."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn


@pytest.fixture(autouse=True)
def tiny_ops():
    with _tiny_ops():
        yield


def tiny(family: str) -> NasSpace:
    return NasSpace.for_family(family, **TINY[family])


def _perturbed(space: NasSpace) -> hsn.Supernet:
    """A supernet whose BatchNorm statistics and kernel transforms are not at their initial values."""
    torch.manual_seed(0)
    net = hsn.build(space, 10, 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, hsn.ElasticConv2d):
                for t in m.transforms:
                    t.add_(0.05 * torch.randn_like(t))
    return net.eval()


@pytest.mark.parametrize("family", ["mobilenetv2", "resnet"])
def test_extracted_subnet_equals_supernet(family):
    space = tiny(family)
    net = _perturbed(space)
    rows = np.vstack([space.largest(), space.smallest(), space.sample(np.random.default_rng(0), 6)])
    for row in rows:
        arch = space.arch(row)
        plain = hsn.extract(net, arch)
        assert not any(isinstance(m, (hsn.ElasticConv2d, hsn.ElasticBatchNorm2d, hsn.ElasticLinear))
                       for m in plain.modules())
        x = torch.randn(4, 1, arch["resolution"], arch["resolution"])
        net.set_arch(arch)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), net(x), atol=1e-5, rtol=1e-5)
    sizes = [sum(p.numel() for p in hsn.extract(net, space.arch(r)).parameters())
             for r in (space.smallest(), space.largest())]
    assert sizes[0] < sizes[1]


def test_kernel_transformation_is_learned_and_used():
    space = tiny("mobilenetv2")
    net = _perturbed(space)
    conv = next(m for m in net.modules() if isinstance(m, hsn.ElasticConv2d) and m.depthwise)
    w5, w3 = conv.weight_for(4, 1, 5), conv.weight_for(4, 1, 3)
    assert w5.shape == (4, 1, 5, 5) and w3.shape == (4, 1, 3, 3)
    centre = conv.weight[:4, :1, 1:4, 1:4]  # the 3x3 centre of the 5x5 kernel, before the transformation
    assert not torch.allclose(w3, centre)


def _val_loss(net: hsn.Supernet, arch: dict, data) -> float:
    model, view = training.subnet(net, arch, data)
    x, y = next(iter(view.batches("val", 512, shuffle=False)))
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


TRAINED = training.SupernetConfig(epochs=4, lr=1e-2)


@pytest.fixture(scope="module")
def trained(digits):
    """A tiny MobileNetV2 supernet trained 4 epochs on digits at 12x12 (shared by the tests below)."""
    with _tiny_ops():
        data = training.at_resolution(digits, 12)
        net, meta = training.train_supernet(tiny("mobilenetv2"), data, TRAINED, progress=False)
    return net, meta, data


def test_smallest_and_largest_subnets_train(trained):
    net, meta, data = trained
    space = net.space
    torch.manual_seed(TRAINED.seed)  # the initial weights train_supernet started from
    fresh = hsn.build(space, 10, 1)
    ends = {"largest": space.arch(space.largest()), "smallest": space.arch(space.smallest())}
    before = {k: _val_loss(fresh, a, data) for k, a in ends.items()}
    after = {k: _val_loss(net, a, data) for k, a in ends.items()}
    assert meta["step"] == meta["total_steps"] == 4 * 23
    for k in ends:
        assert after[k] < 0.75 * before[k], (k, before[k], after[k])


def test_training_resumes_after_kill_9(tmp_path, digits):
    ckpt = tmp_path / "supernet.pt"
    script = textwrap.dedent(f"""
        import time, torch
        torch.backends.mkldnn.enabled = False
        from hwai import data as hdata
        from hwai.nas import training
        from hwai.nas.space import NasSpace
        step = training.train_step
        def slow(*a, **k):
            time.sleep(0.1)
            return step(*a, **k)
        training.train_step = slow
        torch.set_num_threads(1)
        space = NasSpace.for_family("resnet", **{TINY['resnet']!r})
        cfg = training.SupernetConfig(epochs=2, batch_size=64, checkpoint_every_s=0.0)
        training.train_supernet(space, training.at_resolution(hdata.load("digits"), 12), cfg, {str(ckpt)!r}, False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.is_file() and training.load(ckpt)[1]["step"] >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = training.load(ckpt)[1]["step"]
    assert 3 <= killed_at < 46
    assert not list(tmp_path.glob(".*.tmp")), "a half-written checkpoint was left behind"
    space, data = tiny("resnet"), training.at_resolution(digits, 12)
    cfg = training.SupernetConfig(epochs=2, batch_size=64, checkpoint_every_s=0.0)
    resumed, meta = training.train_supernet(space, data, cfg, ckpt, progress=False)
    straight, _ = training.train_supernet(space, data, cfg, None, progress=False)
    assert meta["step"] == meta["total_steps"] == 46 and training.load(ckpt)[1]["step"] == 46
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"{name} differs from an uninterrupted run")


def test_resume_refuses_other_settings(tmp_path, digits):
    from hwai.errors import UserError

    data = training.at_resolution(digits, 12)
    training.train_supernet(tiny("resnet"), data, training.SupernetConfig(epochs=1), tmp_path / "s.pt", False)
    with pytest.raises(UserError, match="other settings"):
        training.train_supernet(tiny("resnet"), data, training.SupernetConfig(epochs=2), tmp_path / "s.pt", False)


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_cost_table_composes_to_cost_predict(precision):
    from hwai import targets
    from hwai.nas import lut

    space, target = tiny("mobilenetv2"), targets.load("stm32h743")
    net = _perturbed(space)
    table = lut.build(space, target, 10, 1, precision, progress=False)
    rows = np.vstack([space.largest(), space.smallest(), space.sample(np.random.default_rng(1), 4)])
    errors = lut.check(table, net, rows, target)
    for metric, e in errors.items():
        assert e["max_rel_error"] < 1e-6, (metric, e)


def test_predictor_and_scorer_shapes():
    from hwai import targets
    from hwai.nas import lut, predictor

    space = tiny("resnet")
    table = lut.build(space, targets.load("esp32s3"), 10, 1, "int8", progress=False)
    idx = space.sample(np.random.default_rng(0), 40)
    macs = table.score(idx)["macs"]
    acc = 0.8 + 0.1 * macs / macs.max() + np.random.default_rng(1).normal(0, 0.002, len(idx))
    records = [{"genes": r.tolist(), "val_accuracy": float(a)} for r, a in zip(idx, acc)]
    fitted, report = predictor.fit(space, records)
    assert report["fit_subnets"] == 30 and report["held_out_subnets"] == 10 and -1 <= report["kendall_tau"] <= 1
    assert report["kendall_tau"] > 0.5  # accuracy that follows MACs is easy to rank
    scores = predictor.Scorer(fitted, table)(space.sample(np.random.default_rng(2), 123))
    assert set(scores) >= {"accuracy", "latency_ms", "energy_mj", "sram_bytes", "fits"}
    assert all(v.shape == (123,) for v in scores.values())
    assert (scores["latency_ms"] > 0).all() and scores["fits"].dtype == bool
    assert space.encode(idx).shape == (40, sum(len(c) for _, c in space.genes()))


def test_nsga2_search_respects_the_latency_limit():
    from hwai import targets
    from hwai.nas import lut, predictor, search

    space = tiny("mobilenetv2")
    table = lut.build(space, targets.load("stm32h743"), 10, 1, "int8", progress=False)
    idx = space.sample(np.random.default_rng(0), 40)
    records = [{"genes": r.tolist(), "val_accuracy": float(a)}
               for r, a in zip(idx, 0.9 + 1e-7 * table.score(idx)["macs"])]
    scorer = predictor.Scorer(predictor.fit(space, records)[0], table)
    limit = float(np.median(table.score(idx)["latency_ms"]))
    found = search.search(space, scorer, search.SearchConfig(trials=200, population=20, max_latency_ms=limit))
    assert found["trials"] == 200 and len(found["front"]) >= 2
    assert (found["front_scores"]["latency_ms"] <= limit).all()
    acc, lat = found["front_scores"]["accuracy"], found["front_scores"]["latency_ms"]
    order = np.argsort(lat)
    assert (np.diff(acc[order]) >= -1e-12).all()  # a front: slower only where more accurate


def test_extracted_subnet_goes_through_passes_and_export(tmp_path, trained, digits):
    import hwai
    from hwai.runtimes import export
    from hwai.train import load_checkpoint, save_checkpoint

    net, space = trained[0], trained[0].space
    arch = space.arch(space.sample(np.random.default_rng(3), 1)[0])
    model, view = training.subnet(net, arch, digits)
    spec = hsn.spec(net, arch)
    example = view.example(2)
    save_checkpoint(tmp_path / "m.pt", model, spec, view.describe())
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(example), model(example))
    pruned = hwai.prune(model, hwai.PruneConfig(ratio=0.3, structured=True), example)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    fp32 = export.to_onnx(pruned, example, tmp_path / "pruned.onnx")
    assert export.parity(pruned, fp32, view.example(64, split="val")).ok
    q = hwai.quantize(model, hwai.QuantConfig(bits=8), calib=view, example=example, progress=False)
    int8 = export.to_onnx(q, example, tmp_path / "int8.onnx", int8=True, calib=view)
    assert export.parity(q, int8, view.example(64, split="val")).ok


def test_trial_api_samples_a_subnet(tmp_path, digits):
    import optuna

    from hwai.nas import trial as ntrial

    space = tiny("resnet")
    data = training.at_resolution(digits, 12)
    training.train_supernet(space, data, training.SupernetConfig(epochs=1), tmp_path / "supernet.pt", False)
    net = ntrial.load_supernet(tmp_path)
    study = optuna.create_study()
    t = study.ask()
    model, spec, view = ntrial.sample_subnet(t, net, data)
    assert spec.name == "nas_resnet" and spec.input_size == (t.params["nas.resolution"],) * 2
    assert view.image_size == spec.input_size and model(view.example(3)).shape == (3, 10)
    assert all(k.startswith("nas.") for k in t.params) and len(t.params) == len(space.genes())


def test_cli_bad_options_exit_2(tmp_path):
    for args in (["--family", "vit"], ["--precision", "int4"], ["--epochs", "0"], ["--max-latency-ms", "-1"],
                 ["--target", "nosuch"], ["--val-fraction", "0.95"]):
        r = run_cli("nas", "--run", tmp_path / "r", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)


def test_cli_end_to_end_resumes_and_exports(tmp_path):
    run = tmp_path / "run [1]"
    args = ["nas", "--data", "digits", "--family", "resnet", "--input-size", "12", "--epochs", "1", "--subnets", "12",
            "--trials", "60", "--candidates", "2", "--target", "stm32h743", "--threads", "1", "--val-fraction", "0.3",
            "--run", run]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["schema"] == "hwai.nas/1" and len(results["candidates"]) >= 1
    assert results["splits"]["val_fraction"] == 0.3 and "retest tau" in r.stdout
    retest, held_out = results["predictor"]["retest"], results["predictor"]["held_out_subnets"]
    assert retest["subnets"] == held_out and retest["val_samples"] == results["splits"]["val"]
    assert results["cost_table"]["check"]["latency_ms"]["max_rel_error"] < 1e-6
    best = results["best"]
    assert best["candidate"] is not None and 0 < best["test_accuracy"] <= 1 and best["measured"]["parity"]["ok"]
    for c in results["candidates"]:
        assert c["predicted"]["latency_ms"] == pytest.approx(c["cost_predict"]["latency_ms"], rel=1e-6)
    mtime = (run / "supernet.pt").stat().st_mtime_ns
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert (run / "supernet.pt").stat().st_mtime_ns == mtime  # reused, not retrained
    assert json.loads((run / "results.json").read_text())["best"]["candidate"] == best["candidate"]
    prof = run_cli("profile", "--model", run / "best" / "model.pt", "--data", "digits")
    assert prof.returncode == 0, prof.stderr
    r = run_cli(*args[:-2], "--epochs", "2", "--run", run)
    assert r.returncode == 2 and "other settings" in r.stderr


def test_optimize_space_supernet_searches_subnets_with_inherited_weights(tmp_path, digits):
    """`hwai optimize --space supernet`: the baseline is the largest subnet, every trial a subnet whose weights
    come from the supernet (then its compression policy), resumable, best exported."""
    from hwai.nas.training import subnet
    from hwai.search import Constraints, OptimizeConfig, SpaceConfig, optimize
    from hwai.train import evaluate, load_checkpoint

    space = tiny("resnet")
    data = training.at_resolution(digits, 12)
    net, _ = training.train_supernet(space, data, training.SupernetConfig(epochs=2, lr=1e-2),
                                     tmp_path / "nas" / "supernet.pt", False)
    policies = SpaceConfig(prune_ratios=(0.0, 0.25), bits=(32, 8), per_layer_bits=False, fuse=(True,),
                           finetune_epochs=(0,), patch_stages=(0.0,))
    cfg = OptimizeConfig(data="digits", space_kind="supernet", supernet=str(tmp_path / "nas"), trials=3,
                         target="stm32h743", host_target=None, space=policies, measure_seconds=0.2,
                         constraints=Constraints(max_accuracy_drop=0.9))
    run = tmp_path / "run"
    results = optimize(cfg, run, progress=False)
    largest = space.arch(space.largest())
    baseline, meta = load_checkpoint(run / "baseline" / "model.pt")
    assert meta["model"]["name"] == "nas_resnet" and meta["metrics"]["arch"] == largest
    assert results["baseline"]["accuracy"] == pytest.approx(evaluate(subnet(net, largest, data)[0], data, "val"))
    done = [t for t in results["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 3
    for t in done:
        genes = {k[4:]: v for k, v in t["params"].items() if k.startswith("nas.")}
        assert len(genes) == len(space.genes())
        model, _ = load_checkpoint(run / "trials" / str(t["number"]) / "model.pt")
        inherited, view = subnet(net, space.arch(space.index(genes)), data)
        if not any(k.startswith("prune.") and v for k, v in t["params"].items()):  # no epochs: the inherited weights
            for a, b in zip(model.state_dict().values(), inherited.state_dict().values()):
                assert torch.equal(a, b)
        assert t["description"].startswith("supernet subnet ")
    assert results["best"]["trial"] is not None and results["best"]["parity"]["ok"]
    again = optimize(OptimizeConfig(**{**cfg.to_dict(), "trials": 4, "space": policies,
                                       "constraints": cfg.constraints}), run, progress=False)
    assert len([t for t in again["trials"] if t["state"] == "COMPLETE"]) == 4
    r = run_cli("optimize", "--space", "nosuch", "--run", tmp_path / "bad")
    assert r.returncode == 2 and "unknown search space" in r.stderr
    r = run_cli("optimize", "--space", "supernet", "--supernet", tmp_path / "none", "--run", tmp_path / "bad")
    assert r.returncode == 2 and "no supernet at" in r.stderr and not (tmp_path / "bad").exists()


def _model(name: str, hits, latency_ms: float):
    from hwai.measure.accuracy import Accuracy
    from hwai.nas.dominance import Model

    return Model(name, Accuracy.of(np.asarray(hits, dtype=bool)), latency_ms)


def _flip(hits: np.ndarray, lose: int, gain: int) -> np.ndarray:
    """`hits` with its first `lose` right samples made wrong and its first `gain` wrong ones made right."""
    out = hits.copy()
    out[np.flatnonzero(hits)[:lose]] = False
    out[np.flatnonzero(~hits)[:gain]] = True
    return out


def test_dominance_needs_lower_latency_and_no_loss_the_paired_test_calls_real():
    from hwai.errors import UserError
    from hwai.nas.dominance import dominates, share_dominated

    base = np.arange(200) >= 20  # 180 of 200 right
    point = _model("trial", base, 10.0)
    expected = {  # name: (hits, latency, dominates the point)
        "same, faster": (base, 9.0, True),
        "same, slower": (base, 11.0, False),
        "same, equally fast": (base, 10.0, False),
        "3 lost (p=0.125), faster": (_flip(base, 3, 0), 9.0, True),  # lower point accuracy, not a real loss
        "8 lost (p=0.004), faster": (_flip(base, 8, 0), 9.0, False),
        "8 lost and 8 gained, faster": (_flip(base, 8, 8), 9.0, True),
        "8 gained, faster": (_flip(base, 0, 8), 9.0, True),
    }
    for name, (hits, latency, verdict) in expected.items():
        assert dominates(_model(name, hits, latency), point) == verdict, name
    with pytest.raises(UserError, match="same validation samples"):
        dominates(_model("other split", base[:100], 1.0), point)
    # the per-trial front is the two Pareto points (a slower, less accurate model is not on it)
    others = [point, _model("fast", _flip(base, 30, 0), 2.0), _model("off the front", _flip(base, 10, 0), 12.0)]
    won = share_dominated([_model("subnet", base, 5.0)], others)
    assert (won["front"], won["dominated"], won["share"]) == (2, 1, 0.5)
    assert won["pairs"] == [["trial", "subnet"], ["fast", None]]


def test_retest_remeasures_the_same_subnets_with_other_recalibration_batches(tmp_path, trained):
    from scipy.stats import kendalltau

    from hwai.nas import predictor

    net, _, data = trained
    space = net.space
    rows = np.vstack([space.largest(), space.smallest(), space.sample(np.random.default_rng(3), 10)])
    records = predictor.measure(net, data, rows, progress=False)
    assert all(r["val_accuracy_n"] == len(data.val[1]) and r["recalibration_seed"] == 0 for r in records)
    records = records[::-1]  # paired by subnet, in any order
    again = predictor.retest(net, data, records, tmp_path / "retest.json", progress=False)
    second = json.loads((tmp_path / "retest.json").read_text())["subnets"]
    assert [s["genes"] for s in second] == [r["genes"] for r in records]
    assert all(s["recalibration_seed"] == predictor.RETEST_SEED != 0 for s in second)
    first_acc, second_acc = [r["val_accuracy"] for r in records], [s["val_accuracy"] for s in second]
    assert again["mean_abs_change"] > 0  # other batches: other BatchNorm statistics, other predictions
    assert again["kendall_tau"] == pytest.approx(kendalltau(first_acc, second_acc).statistic)
    assert -1 <= again["kendall_tau"] < 1 and again["subnets"] == 12 and again["val_samples"] == len(data.val[1])
    with pytest.raises(ValueError, match="other recalibration batches"):
        predictor.retest(net, data, records, seed=0, progress=False)
