"""The loop end to end on tiny settings: results files, constraints, resume after kill -9, CLI errors."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from hwai.errors import UserError
from hwai.search import Constraints, OptimizeConfig, SpaceConfig, optimize

# digits, a small MLP, one epoch: a trial takes well under a second
TINY = SpaceConfig(widths=(0.5, 1.0), kernel_sizes=(3,), resolutions=(1.0,), prune_ratios=(0.0,), bits=(32,),
                   fuse=(False,), finetune_epochs=(1,), train_epochs=(1,))
RESULT_KEYS = {"schema", "command", "created", "environment", "model", "target", "constraints", "objectives", "baseline",
               "kinds", "trials", "pareto", "best", "techniques", "layers", "memory", "measurement", "prediction"}


def tiny(trials=4, constraints=Constraints(max_accuracy_drop=0.5), space=TINY, **kw):
    base = dict(model="mlp", data="digits", width=0.25, input_size=None, target=None, host_target=None,
                trials=trials, baseline_epochs=1, space=space, constraints=constraints, measure_seconds=0.2)
    return OptimizeConfig(**{**base, **kw})


def check_results(run: Path, trials: int) -> dict:
    results = json.loads((run / "results.json").read_text())
    assert RESULT_KEYS <= set(results) and results["schema"] == "hwai.results/1"
    numbers = [t["number"] for t in results["trials"]]
    assert len(numbers) == len(set(numbers)), "a trial is listed twice"
    done = [t for t in results["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(done) == trials
    for t in done:
        saved = json.loads((run / "trials" / str(t["number"]) / "metrics.json").read_text())
        assert saved["metrics"]["accuracy"] == t["metrics"]["accuracy"]
    pareto = json.loads((run / "pareto.json").read_text())
    assert sorted(t["number"] for t in pareto["trials"]) == sorted(results["pareto"])
    assert set(results["pareto"]) <= {t["number"] for t in done if t["feasible"]}
    return results


def test_optimize_writes_a_valid_run_and_resumes(tmp_path):
    run = tmp_path / "run"
    results = optimize(tiny(trials=3), run, progress=False)
    check_results(run, 3)
    best = results["best"]
    assert best["trial"] in results["pareto"] and best["parity"]["ok"]
    assert (run / "best" / "model.onnx").is_file() and (run / "best" / "model.pt").is_file()
    m = best["metrics"]  # the best satisfies the limit
    assert results["baseline"]["accuracy"] - m["accuracy"] <= 0.5
    assert results["kinds"]["host_latency_ms"] == "measured" and m["host_latency_ms"] > 0
    first = {t["number"]: t["metrics"] for t in results["trials"]}
    # the same run again with more trials: resumes, keeps the finished ones untouched
    results = optimize(tiny(trials=5), run, progress=False)
    check_results(run, 5)
    assert all(first[t["number"]] == t["metrics"] for t in results["trials"] if t["number"] in first)
    with pytest.raises(UserError, match="other settings"):
        optimize(tiny(trials=5, seed=1), run, progress=False)


def test_no_feasible_candidate_is_said_and_closest_shown(tmp_path):
    results = optimize(tiny(trials=2, constraints=Constraints(max_size_kb=0.01)), tmp_path / "run", progress=False)
    best = results["best"]
    assert best["trial"] is None and best["onnx"] is None and "no candidate satisfied" in best["reason"]
    assert best["closest"]["violations"] and "size" in best["closest"]["violations"][0]
    assert results["pareto"] == [] and not (tmp_path / "run" / "best" / "model.onnx").exists()


def test_int8_candidates_are_judged_by_the_artifact_and_feedback_is_checked(tmp_path, monkeypatch):
    """INT8 accuracy is the exported ONNX on ONNX Runtime (val); screening goes through one batch scorer per
    architecture; host predictions (here also the target's) carry the held-out-checked feedback; the
    measuring thread count is physical cores and recorded."""
    from hwai import cost
    from hwai.measure import physical_cores
    from hwai.runtimes.deployment import accuracy
    from hwai.search.context import prepare

    scorers = []
    real = cost.prepare
    monkeypatch.setattr(cost, "prepare", lambda *a, **k: scorers.append(a[1].name) or real(*a, **k))
    space = SpaceConfig(widths=(0.5, 1.0), kernel_sizes=(3,), resolutions=(1.0,), prune_ratios=(0.0,), bits=(8, 32),
                        per_layer_bits=False, fuse=(True,), finetune_epochs=(1,), train_epochs=(1,))
    cfg = tiny(trials=5, space=space, target="host", host_target="host", runtimes=("onnxruntime",),
               threads=physical_cores())  # one deployment option: ONNX Runtime at all cores
    run = tmp_path / "run"
    results = optimize(cfg, run, progress=False)
    trials = [t for t in results["trials"] if t["state"] == "COMPLETE" and "duplicate_of" not in t["metrics"]]
    data = prepare(cfg, run, progress=False).data
    quantized = [t for t in trials if t["metrics"]["accuracy_source"].startswith("onnxruntime")]
    assert quantized and len(quantized) < len(trials)  # both kinds were built
    for t in trials:
        m = t["metrics"]
        assert m["host_threads"] == physical_cores() and "test_accuracy" not in m  # test: only after the choice
        low, high = m["accuracy_ci"]  # every accuracy with its sample count and Wilson interval
        assert m["accuracy_n"] == len(data.val[1]) and low <= m["accuracy"] <= high and m["accuracy_outcomes"]
        if t in quantized:  # (one resolution in this space: the data as loaded)
            onnx = run / "trials" / str(t["number"]) / "model.onnx"
            assert m["accuracy"] == accuracy("onnxruntime", onnx, data, m["host_threads"], split="val")
            assert 0 < m["accuracy_fake_quant"] <= 1
        assert m["target_latency_ms"] == pytest.approx(m["target_latency_raw_ms"] * m["host_correction"])
    best = results["best"]
    assert best["metrics"]["accuracy"] == best["onnx_val_accuracy"]  # the shipped file, measured again
    assert (run / "best" / "model.onnx").read_bytes() == (run / "trials" / str(best["trial"]) / "model.onnx").read_bytes()
    assert 0 < best["metrics"]["test_accuracy"] <= 1 and 0 < results["baseline"]["test_accuracy"] <= 1
    assert best["metrics"]["test_accuracy_n"] == results["baseline"]["test_accuracy_n"] == len(data.test[1])
    assert results["splits"]["val"] == results["baseline"]["accuracy_n"] == len(data.val[1])
    cal = results["calibration"]
    assert cal["threads"] == physical_cores() and cal["pairs"] == 1 + len(trials)
    assert cal["form"] == "partial pooling" and cal["held_out_error_raw_pct"] > 0 and cal["held_out_error_pct"] >= 0
    assert 0 < cal["factors"]["*"] and any("energy_mj" in line for line in cal["not_applied_to"])
    # one scorer per architecture (two widths; the baseline's is one of them) + one per-layer breakdown of the best
    assert len(scorers) <= 3 < len(results["trials"])

def test_the_default_run_beats_its_baseline_on_the_target(tmp_path):
    """`hwai optimize` with no arguments (make demo): resnet8 on MNIST at 32x32 for the STM32H743. Here the
    same defaults on a reduced budget (digits at 16x16, 2 trials): the chosen model beats the baseline on
    the target's predicted latency within the accuracy-drop limit."""
    import dataclasses

    default = OptimizeConfig()
    assert (default.model, default.data, default.input_size, default.target) == ("resnet8", "mnist", None, "stm32h743")
    from hwai.search.context import ZOO_SIDE

    assert ZOO_SIDE == 32  # a zoo baseline sees 32x32 images unless --input-size says otherwise
    cfg = dataclasses.replace(default, data="digits", input_size=16, trials=2, baseline_epochs=3, measure_seconds=0.2)
    results = optimize(cfg, tmp_path / "run", progress=False)
    best, base = results["best"], results["baseline"]
    assert best["trial"] is not None, best["reason"]
    assert best["metrics"]["target_latency_ms"] < base["target_latency_ms"]
    assert base["accuracy"] - best["metrics"]["accuracy"] <= default.constraints.max_accuracy_drop + 1e-9


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
import torch
from hwai.search import OptimizeConfig, SpaceConfig, Constraints, optimize
run, point = sys.argv[1], sys.argv[2]
module = sys.modules["hwai.search.optimize"]
started, steps = [0], [0]
call = module.Objective.__call__
def tracked(self, trial):
    started[0] += 1
    return call(self, trial)
module.Objective.__call__ = tracked
def armed(kind):  # not in this process's first trial (a resume's first is the retry of the trial killed before)
    return point == kind and started[0] > 1
def die():
    os.kill(os.getpid(), signal.SIGKILL)
step = torch.optim.AdamW.step
def stepping(self, *args, **kw):  # 'train': in the middle of the trial's fine-tuning, at its 3rd optimizer step
    if armed("train"):
        steps[0] += 1
        if steps[0] == 3:
            die()
    return step(self, *args, **kw)
torch.optim.AdamW.step = stepping
export = torch.onnx.export
def exporting(model, args, f, *a, **kw):  # 'export': the ONNX file half written, not yet renamed into place
    export(model, args, f, *a, **kw)
    if armed("export"):
        os.truncate(f, os.path.getsize(f) // 2)
        die()
torch.onnx.export = exporting
replace = os.replace
def replacing(src, dst):  # 'write': trials/N/metrics.json half written, not yet renamed into place
    if armed("write") and Path(dst).name == "metrics.json":
        os.truncate(src, os.path.getsize(src) // 2)
        die()
    return replace(src, dst)
os.replace = replacing
space = SpaceConfig(widths=(0.5, 0.75, 1.0), kernel_sizes=(3,), resolutions=(1.0,), prune_ratios=(0.0,), bits=(32,),
                    fuse=(False,), finetune_epochs=(1, 2), train_epochs=(1, 2))
cfg = OptimizeConfig(model="mlp", data="digits", width=0.25, input_size=None, target=None, host_target=None,
                     trials=6, baseline_epochs=1, space=space, constraints=Constraints(max_accuracy_drop=0.5),
                     measure_seconds=0.2)
optimize(cfg, run, progress=False)
"""


def _states(run: Path) -> list:
    storage = optuna.storages.RDBStorage(f"sqlite:///{run / 'study.db'}", skip_table_creation=True)
    return optuna.load_study(study_name="hwai-optimize", storage=storage).get_trials(deepcopy=True)


def test_kill_9_during_training_export_and_a_file_write_then_resume(tmp_path):
    """kill -9 lands inside real work (no injected sleep): the 3rd optimizer step of a fine-tune, the ONNX
    export with its file half written, and trials/N/metrics.json half written. Each time the resumed run
    keeps every finished trial untouched, fails the killed one and retries it exactly once."""
    run = tmp_path / "run"
    completed: dict[int, dict] = {}
    killed: dict[int, dict] = {}
    for point in ("train", "export", "write", None):
        proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), point or "none"],
                              capture_output=True, text=True, timeout=180)
        trials = {t.number: t for t in _states(run)}
        for n, metrics in completed.items():  # finished before an earlier kill: still there, unchanged
            assert trials[n].state == optuna.trial.TrialState.COMPLETE and trials[n].user_attrs["metrics"] == metrics
        if point is None:
            assert proc.returncode == 0, proc.stderr[-2000:]
            break
        assert proc.returncode == -signal.SIGKILL, f"not killed during {point}: {proc.stderr[-2000:]}"
        running = [n for n, t in trials.items() if t.state == optuna.trial.TrialState.RUNNING]
        assert len(running) == 1, f"the kill during {point} left {running} running"
        at = running[0]
        killed[at] = trials[at].params
        completed.update({n: t.user_attrs["metrics"] for n, t in trials.items()
                          if t.state == optuna.trial.TrialState.COMPLETE})
        if point == "export":
            assert list((run / "trials" / str(at)).glob(".model.onnx.*.tmp")) and \
                not (run / "trials" / str(at) / "model.onnx").exists()
        if point == "write":
            assert not (run / "trials" / str(at) / "metrics.json").exists()
    results = check_results(run, 6)
    by_number = {t["number"]: t for t in results["trials"]}
    for n, params in killed.items():
        assert by_number[n]["state"] == "FAIL" and "died" in by_number[n]["reason"]
        retries = [t for t in results["trials"] if t.get("retry_of") == n]
        assert len(retries) == 1 and retries[0]["state"] == "COMPLETE"  # retried once, counted once
        assert retries[0]["params"] == params  # the same candidate
    assert results["counts"]["failed"] == len(killed) == 3


def _hwai(*args, timeout=60):
    env = {**os.environ, "COLUMNS": "1000"}  # rich wraps at 80 columns when piped; long lines stay whole here
    return subprocess.run([sys.executable, "-m", "hwai", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, input_size, trains):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * input_size[0] * input_size[1], 24)
        self.fc2 = nn.Linear(24, num_classes)
        self.trains = trains

    def forward(self, x):
        if self.training and not self.trains:
            raise RuntimeError("boom: this net cannot train")
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def build(num_classes=10, in_channels=1, input_size=(8, 8)):
    return Net(num_classes, in_channels, input_size, trains=True)


def broken(num_classes=10, in_channels=1, input_size=(8, 8)):
    return Net(num_classes, in_channels, input_size, trains=False)
"""


@pytest.fixture
def user_models(tmp_path):
    """A user's model file in a folder whose name has brackets, spaces and non-ASCII letters."""
    folder = tmp_path / "my models [v2] ü"
    folder.mkdir()
    (folder / "net.py").write_text(NET)
    return folder


def test_optimize_prints_user_paths_verbatim(user_models, tmp_path):
    run = tmp_path / "run [1] ü"
    proc = _hwai("optimize", "--model", f"{user_models}/net.py:build", "--data", "digits", "--input-size", "0",
                 "--trials", "2", "--baseline-epochs", "1", "--max-accuracy-drop", "0.5", "--run", run, timeout=180)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    out = proc.stdout
    assert out.count(f"[{user_models}/net.py:build width") == 2  # both trial lines, brackets and all
    assert f"base: {user_models}/net.py:build (the baseline)" in out
    assert f"results: {run / 'results.json'}; report: {run / 'report.html'}" in out
    assert json.loads((run / "results.json").read_text())["model"]["name"] == f"{user_models}/net.py:build"


def test_worker_prints_user_text_verbatim(user_models, tmp_path):
    url, name = f"sqlite:///{tmp_path / 'study [x] ü.db'}", "study [x] ü"
    cfg = tiny(trials=2, model=f"{user_models}/net.py:build")
    optimize(cfg, tmp_path / "main", storage=url, study_name=name, timeout_s=0, progress=False)  # creates it only
    run = tmp_path / "worker [2] ü"
    proc = _hwai("worker", "--storage", url, "--study", name, "--run", run, timeout=180)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.count(f"[{user_models}/net.py:build width") == 2
    assert f"worker finished 2 trial(s) of study {name}" in proc.stdout
    assert (run / "baseline" / "model.pt").is_file()  # the worker's own baseline, in its own folder


def test_a_run_whose_trials_all_failed_exits_non_zero_with_one_line(user_models, tmp_path):
    run = tmp_path / "run"
    proc = _hwai("optimize", "--model", f"{user_models}/net.py:broken", "--data", "digits", "--input-size", "0",
                 "--trials", "2", "--baseline-epochs", "0", "--target", "none", "--run", run, timeout=180)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert re.match(r"hwai: error: all (\d+) trials failed; the first \(trial 0\): distill: the model's first "
                    r"training step failed on a batch of shape \(\d+, 1, 8, 8\): RuntimeError: boom", lines[0])
    results = json.loads((run / "results.json").read_text())
    counts = results["counts"]
    failed = int(re.search(r"all (\d+) trials", lines[0]).group(1))
    assert counts["failed"] == failed >= 2 and counts["infeasible"] == counts["feasible"] == 0
    assert all(t["outcome"] == "failed" and t["feasible"] is None for t in results["trials"])
    summary = _hwai("report", run, "--format", "md").stdout
    assert f"0 feasible, 0 infeasible (built, break a limit), 0 screened out by the cost model, {failed} failed" in summary


def test_non_finite_numbers_are_rejected_when_parsed(tmp_path):
    proc = _hwai("optimize", "--max-latency-ms", "nan", "--run", tmp_path / "run")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    lines = proc.stderr.strip().splitlines()
    assert lines == ["hwai: error: --max-latency-ms must be a finite number, got nan"]
    for bad in (dict(width=float("nan")), dict(measure_seconds=float("inf")), dict(threads=0)):
        with pytest.raises(UserError, match="width|measure_seconds|threads"):
            tiny(**bad)
    with pytest.raises(UserError, match="--timeout-s must be a finite number"):
        optimize(tiny(), tmp_path / "run", timeout_s=float("inf"), progress=False)


@pytest.mark.parametrize("args", [["optimize", "--storage", "bogus://nowhere"],
                                  ["worker", "--storage", "postgresql://u:secret@127.0.0.1:1/db", "--study", "s"]])
def test_bad_storage_url_is_one_line_exit_2(args, tmp_path):
    proc = _hwai(*args, "--run", str(tmp_path / "run"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwai: error: cannot open storage")
    assert "secret" not in proc.stderr  # the password is not printed
    assert not (tmp_path / "run").exists()
