"""The study is the state: Optuna RDB storage (SQLite in the run directory, or a PostgreSQL URL
shared by many workers). This module opens it, recovers trials a dead process left RUNNING, and runs
trials until the study holds the requested number of finished ones.

Recovery: every trial records its worker (`host:pid`). A RUNNING trial whose worker is on this host
and no longer alive (kill -9), or one that was interrupted (Ctrl-C), is marked FAIL and its parameters
re-enqueued once; workers elsewhere are covered by Optuna's heartbeat (stale after the grace period).
A FAIL trial is never counted, its retry is counted once.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hwai.errors import UserError

HEARTBEAT_S = 5  # a running trial writes a heartbeat this often
GRACE_S = 30  # ... and is declared dead (FAIL, then retried) after this long without one
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_storage(url: str) -> RDBStorage:
    """An RDB storage with heartbeats and one retry of stale trials; a bad URL is a UserError."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our own one-line report, no traceback
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and sep:
        url = f"postgresql+psycopg://{rest}"  # SQLAlchemy's default driver is psycopg2; we ship psycopg 3
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                          engine_kwargs={"pool_pre_ping": True})
    except ModuleNotFoundError as exc:
        raise UserError(f"storage {_safe(url)} needs the {exc.name} driver: pip install 'hwai[postgres]'") from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open storage {_safe(url)}: {reason[:200]}") from None


def sqlite_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'study.db').resolve()}"


def _safe(url: str) -> str:
    """The URL without its password (it is printed)."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, cred = head.partition("://")
    return f"{scheme}://{cred.split(':')[0]}:***@{tail}"


def load_study(storage: RDBStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(f"no study {name!r} in this storage (studies: {', '.join(names) or 'none'})") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(study: optuna.Study) -> list[int]:
    """Fail and re-enqueue (once) trials a dead local process or an interrupt left behind."""
    storage = study._storage
    optuna.storages.fail_stale_trials(study)  # remote workers: Optuna's heartbeat
    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    recovered = []
    for t in trials:
        who = str(t.user_attrs.get("worker", ""))
        dead = (t.state == TrialState.RUNNING and who.rpartition(":")[0] == host
                and who.rpartition(":")[2].isdigit() and not _alive(int(who.rpartition(":")[2])))
        interrupted = t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried
        if dead:
            try:
                if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
        if dead or interrupted:
            storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(t._trial_id))
            recovered.append(t.number)
    return recovered


def counts(study: optuna.Study) -> dict[str, int]:
    out = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


def run_trials(study: optuna.Study, objective: Callable, n_trials: int, wait: bool, timeout_s: float | None = None,
               on_trial: Callable | None = None) -> None:
    """Run trials until `n_trials` are finished (COMPLETE or PRUNED); with `wait`, also wait for
    trials other workers are running (and take over theirs if they die)."""
    start = time.monotonic()
    while True:
        recover(study)
        c = counts(study)
        done, running, waiting = c["COMPLETE"] + c["PRUNED"], c["RUNNING"], c["WAITING"]
        if done >= n_trials or c["FAIL"] >= max(n_trials, 3) + done:
            return
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return
        if done + running >= n_trials and not waiting:
            if not wait:
                return
            time.sleep(1.0)  # others finish the last trials; recover() takes over if they die
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[on_trial] if on_trial else None,
                       gc_after_trial=False, show_progress_bar=False)
