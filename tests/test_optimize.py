"""The loop end to end on tiny settings: results files, constraints, resume after kill -9, CLI errors."""
import json
import os
import re
import signal
import subprocess
import sys
import time
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


KILL_SCRIPT = """
import sys, time
from hwai.search import OptimizeConfig, SpaceConfig, Constraints, optimize
module = sys.modules["hwai.search.optimize"]
sample = module.sample
def slow(*args, **kw):  # trials can take 0.1 s: give the test a wide mid-trial window, after sampling
    cand = sample(*args, **kw)
    time.sleep(1.0)
    return cand
module.sample = slow
space = SpaceConfig(widths=(0.5, 1.0), kernel_sizes=(3,), resolutions=(1.0,), prune_ratios=(0.0,), bits=(32,),
                    fuse=(False,), finetune_epochs=(3,), train_epochs=(3,))
cfg = OptimizeConfig(model="mlp", data="digits", width=0.25, input_size=None, target=None, host_target=None,
                     trials=5, baseline_epochs=1, space=space, constraints=Constraints(max_accuracy_drop=0.5),
                     measure_seconds=0.2)
optimize(cfg, sys.argv[1], progress=False)
"""


def _states(run: Path) -> list:
    if not (run / "study.db").is_file():
        return []
    try:  # the other process may still be creating the tables
        storage = optuna.storages.RDBStorage(f"sqlite:///{run / 'study.db'}", skip_table_creation=True)
        return optuna.load_study(study_name="hwai-optimize", storage=storage).get_trials(deepcopy=True)
    except Exception:
        return []


def test_kill_9_mid_trial_then_resume(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    before: list = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            trials = _states(run)
            done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            if len(done) >= 2 and any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
                os.kill(proc.pid, signal.SIGKILL)  # mid-trial
                break
            time.sleep(0.1)
        proc.wait(timeout=30)
        before = _states(run)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-trial"
    completed = {t.number: t.user_attrs["metrics"] for t in before if t.state == optuna.trial.TrialState.COMPLETE}
    killed = [t.number for t in before if t.state == optuna.trial.TrialState.RUNNING]
    assert len(completed) >= 2 and len(killed) == 1
    # resume in a fresh process, exactly as a user would
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run)], check=True, capture_output=True, timeout=120)
    results = check_results(run, 5)
    by_number = {t["number"]: t for t in results["trials"]}
    for n, metrics in completed.items():  # every trial finished before the kill is still there, unchanged
        assert by_number[n]["state"] == "COMPLETE" and by_number[n]["metrics"] == metrics
    assert by_number[killed[0]]["state"] == "FAIL"
    retries = [t for t in results["trials"] if t.get("retry_of") == killed[0]]
    assert len(retries) == 1 and retries[0]["state"] == "COMPLETE"  # retried once, counted once
    sampled = next(t.params for t in before if t.number == killed[0])  # what it had sampled before it died
    assert all(retries[0]["params"][k] == v for k, v in sampled.items())  # the retry runs the same candidate


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
    assert re.match(r"hwai: error: all (\d+) trials failed; the first \(trial 0\): RuntimeError: boom", lines[0])
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
