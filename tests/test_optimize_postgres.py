"""Distributed search: `hwai optimize` and one `hwai worker` share a study in a real PostgreSQL server
(CI starts one, see .ci/run, and sets HWAI_TEST_POSTGRES_URL). No trial lost, none duplicated."""
import json
import os
import subprocess
import sys
import time
import uuid

import optuna
import pytest

URL = os.environ.get("HWAI_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not URL, reason="HWAI_TEST_POSTGRES_URL not set (CI sets it; see .ci/run)")

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
    storage = optuna.storages.RDBStorage(URL.replace("postgresql://", "postgresql+psycopg://", 1)
                                         if URL.startswith("postgresql://") else URL)
    main = subprocess.Popen([sys.executable, "-c", MAIN, str(run), URL, name], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while name not in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
            assert time.monotonic() < deadline and main.poll() is None, "the study was not created"
            time.sleep(0.2)
        worker = subprocess.run([sys.executable, "-m", "hwai", "worker", "--storage", URL, "--study", name,
                                 "--run", str(run)], capture_output=True, text=True, timeout=150)
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
        assert "finished" in worker.stdout
        for t in done:  # every finished trial has its files, written by whichever process ran it
            saved = json.loads((run / "trials" / str(t.number) / "metrics.json").read_text())
            assert saved["metrics"]["accuracy"] == t.user_attrs["metrics"]["accuracy"]
    finally:
        for proc in (main,):
            if proc.poll() is None:
                proc.kill()
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
