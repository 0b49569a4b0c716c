"""Distributed search: `hwai optimize` and one `hwai worker` share a study in a real PostgreSQL server
(CI starts one, see .ci/run, and sets HWAI_TEST_POSTGRES_URL); the server stopped mid-trial. No trial
lost, none duplicated."""
import json
import os
import re
import subprocess
import sys
import time
import uuid

import optuna
import pytest

URL = os.environ.get("HWAI_TEST_POSTGRES_URL")
CTL = os.environ.get("HWAI_TEST_POSTGRES_CTL")  # e.g. "pg_ctlcluster 15 main": + stop / start (.ci/run sets it)
# one server for the module, stopped mid-trial by one test: under pytest-xdist (make test) both tests run on one worker
pytestmark = [pytest.mark.skipif(not URL, reason="HWAI_TEST_POSTGRES_URL not set (CI sets it; see .ci/run)"),
              pytest.mark.xdist_group("postgres")]


def _storage():
    return optuna.storages.RDBStorage(URL.replace("postgresql://", "postgresql+psycopg://", 1)
                                      if URL.startswith("postgresql://") else URL,
                                      engine_kwargs={"pool_pre_ping": True})  # outlives a server restart

TRIALS = 8
MAIN = """
import sys, time
from hwai.search import OptimizeConfig, SpaceConfig, Constraints, optimize
from hwai.search import study as hstudy
module = sys.modules["hwai.search.optimize"]
run_one = module.Objective.__call__
def held(self, trial):  # trials can take 0.1 s: after its first, main waits until the worker has begun one
    others = lambda: [t for t in trial.study.get_trials(deepcopy=False)
                      if t.user_attrs.get("worker") not in (None, hstudy.worker_id())]
    trial.set_user_attr("worker", hstudy.worker_id())
    deadline = time.monotonic() + 120
    while trial.number > 0 and not others() and time.monotonic() < deadline:
        time.sleep(0.2)
    return run_one(self, trial)
module.Objective.__call__ = held
space = SpaceConfig(widths=(0.25, 0.5, 0.75, 1.0), kernel_sizes=(3,), resolutions=(1.0,), prune_ratios=(0.0,), bits=(32,),
                    fuse=(False,), finetune_epochs=(6, 8, 10), train_epochs=(8,))  # few repeats, long enough trials
cfg = OptimizeConfig(model="mlp", data="digits", width=0.25, input_size=None, target=None, host_target=None,
                     trials=%d, baseline_epochs=3, space=space, constraints=Constraints(max_accuracy_drop=0.5),
                     measure_seconds=0.2)
optimize(cfg, sys.argv[1], storage=sys.argv[2], study_name=sys.argv[3], progress=False)
""" % TRIALS


def test_two_workers_share_one_postgres_study(tmp_path):
    run, name = tmp_path / "run", f"hwai-test-{uuid.uuid4().hex[:8]}"
    storage = _storage()
    main = subprocess.Popen([sys.executable, "-c", MAIN, str(run), URL, name], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while name not in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
            assert time.monotonic() < deadline and main.poll() is None, "the study was not created"
            time.sleep(0.2)
        worker_run = tmp_path / "worker"  # its own folder: the worker loads the data and trains its own baseline
        worker = subprocess.run([sys.executable, "-m", "hwai", "worker", "--storage", URL, "--study", name,
                                 "--run", str(worker_run)], capture_output=True, text=True, timeout=150)
        assert worker.returncode == 0, worker.stderr[-2000:]
        assert main.wait(timeout=150) == 0, main.stderr.read()[-2000:]
        results = json.loads((run / "results.json").read_text())
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        numbers = [t["number"] for t in results["trials"]]
        assert sorted(numbers) == sorted(t.number for t in trials) and len(set(numbers)) == len(numbers)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        # each process checks the count before it starts a trial: at most one extra when both start at once
        assert TRIALS <= len(done) <= TRIALS + 1 and not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
        workers = {t.user_attrs["worker"] for t in done}
        timeline = [(t.number, t.user_attrs["worker"], str(t.datetime_start.time()), str(t.datetime_complete.time()))
                    for t in done]
        assert len(workers) == 2, f"both processes should have run trials, got {timeline}; worker: {worker.stdout}"
        assert "finished" in worker.stdout and (worker_run / "baseline" / "model.pt").is_file()
        for t in done:  # every finished trial has its files, written by whichever process ran it, in its folder
            folders = [d for d in (run, worker_run) if (d / "trials" / str(t.number) / "metrics.json").is_file()]
            assert len(folders) == 1
            saved = json.loads((folders[0] / "trials" / str(t.number) / "metrics.json").read_text())
            assert saved["metrics"]["accuracy"] == t.user_attrs["metrics"]["accuracy"]
    finally:
        for proc in (main,):
            if proc.poll() is None:
                proc.kill()
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass


def _server(action: str, check: bool = True) -> None:
    subprocess.run([*CTL.split(), action, *(["-m", "fast"] if action == "stop" else [])], check=check,
                   capture_output=True, timeout=60)


def _trials(storage, name) -> list:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=True)
    except KeyError:
        return []


def _wait_mid_trial(storage, name, proc, complete: int, timeout: float = 120) -> list:
    """Wait until `complete` trials are complete and one is running; the trials then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        trials = _trials(storage, name)
        states = [t.state for t in trials]
        if states.count(optuna.trial.TrialState.COMPLETE) >= complete and optuna.trial.TrialState.RUNNING in states:
            return trials
        time.sleep(0.1)
    raise AssertionError(f"no trial running after {complete} complete: {proc.poll()}, {proc.stderr.read()[-2000:]}")


LOSS_TRIALS = 20  # enough that the run is still going when the test stops the server a second time


@pytest.mark.skipif(not CTL, reason="HWAI_TEST_POSTGRES_CTL not set: cannot stop and start the server")
def test_server_stopped_mid_trial_then_resumed(tmp_path):
    """A short outage is waited out; a long one stops the run with one line and exit 1; the same command then
    resumes: completed trials unchanged, none duplicated, the trial in flight retried once."""
    run, name = tmp_path / "run", f"hwai-loss-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "hwai", "optimize", "--model", "mlp", "--data", "digits", "--width", "0.25",
           "--input-size", "0", "--target", "none", "--host-target", "none", "--trials", str(LOSS_TRIALS),
           "--baseline-epochs", "2", "--max-accuracy-drop", "0.5", "--storage", URL, "--study", name,
           "--run", str(run), "--storage-retry-s", "8"]
    storage = _storage()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        before = _wait_mid_trial(storage, name, proc, complete=2)
        _server("stop")  # 1. a short outage, mid-trial: waited out
        time.sleep(3)
        _server("start")
        before = {t.number: t.user_attrs["metrics"] for t in before if t.state.name == "COMPLETE"}
        during = _wait_mid_trial(storage, name, proc, complete=len(before) + 1)
        _server("stop")  # 2. longer than --storage-retry-s: the run stops, with one line
        assert proc.wait(timeout=90) == 1
        lines = proc.stderr.read().strip().splitlines()
    finally:
        _server("start", check=False)  # (already running when the test failed before its stop)
        if proc.poll() is None:
            proc.kill()
    assert len(lines) == 1, lines
    match = re.fullmatch(r"hwai: error: lost the study storage (\S+) \(.*; retried for 8 s\); (\d+) completed trials "
                         r"are safe in it; run the same command to resume", lines[0])
    assert match and ":***@" in match.group(1), lines[0]
    stored = {t.number: t for t in _trials(_storage(), name)}
    complete = {n for n, t in stored.items() if t.state.name == "COMPLETE"}
    assert len(before) < len(complete) and int(match.group(2)) == len(complete)
    mid = {t.number: t.user_attrs["metrics"] for t in during if t.state.name == "COMPLETE"}
    # 3. the same command resumes
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-2000:]
    try:
        trials = optuna.load_study(study_name=name, storage=_storage()).get_trials()
        by_number = {t.number: t for t in trials}
        for n, metrics in {**before, **mid}.items():  # finished before either outage: unchanged
            assert by_number[n].state.name == "COMPLETE" and by_number[n].user_attrs["metrics"] == metrics
        done = [t for t in trials if t.state.name == "COMPLETE"]
        assert len(done) == LOSS_TRIALS and not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
        failed = [t for t in trials if t.state.name == "FAIL"]
        for f in failed:  # a trial lost in flight: failed, its candidate (as far as it was sampled) retried once
            retries = [t for t in trials if t.system_attrs.get("failed_trial") == f.number]
            assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
            assert all(retries[0].params[k] == v for k, v in f.params.items())
        results = json.loads((run / "results.json").read_text())
        assert sorted(t["number"] for t in results["trials"]) == sorted(by_number)
        assert results["counts"]["complete"] == LOSS_TRIALS and results["counts"]["failed"] == len(failed)
    finally:
        optuna.delete_study(study_name=name, storage=_storage())
