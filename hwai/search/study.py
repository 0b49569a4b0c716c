"""The study is the state: Optuna RDB storage (SQLite in the run directory, or a PostgreSQL URL
shared by many workers). This module opens it, recovers trials a dead process left RUNNING, and runs
trials (ask, objective, tell) until the study holds the requested number of finished ones.

Recovery: every trial records its worker (`host:pid`). A RUNNING trial whose worker is on this host
and no longer alive (kill -9), or one that was interrupted (Ctrl-C), is marked FAIL and its parameters
re-enqueued once; workers elsewhere are covered by Optuna's heartbeat (stale after the grace period).
A FAIL trial is never counted, its retry is counted once.

Storage loss: a storage call that fails on a lost connection (the server restarting, a network blip) is
retried for `retry_s` seconds (SQLAlchemy's pool_pre_ping drops dead pooled connections); heartbeats
that fail meanwhile are skipped. A trial whose result could not be stored is failed and re-enqueued once
when the storage is back. After `retry_s` without the storage, StorageLost: nothing finished is lost
(it is in the storage), and the same command resumes.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
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
RETRY_S = 60.0  # how long a lost storage connection is retried before the run stops
CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that does not answer: give up one connection attempt after this
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class SearchStopped(Exception):
    """The search could not go on (every trial failed, or the storage was lost); the message is one line
    for the user, and whatever finished is kept."""


class StorageLost(Exception):
    """The study storage stayed unreachable for longer than the retry window."""

    def __init__(self, reason: str, complete: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.complete = reason, complete

    def message(self, url: str, retry_s: float) -> str:
        safe = f"{self.complete} completed trials are safe" if self.complete is not None else \
            "completed trials are safe"
        return (f"lost the study storage {_safe(url)} ({self.reason}; retried for {retry_s:g} s); {safe} in it; "
                "run the same command to resume")


def transient(exc: BaseException) -> bool:
    """A storage error that a reconnect may cure (connection refused or dropped, database locked)."""
    from sqlalchemy import exc as sa

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (optuna.exceptions.StorageInternalError, sa.OperationalError, sa.InterfaceError,
                             sa.DisconnectionError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def reason(exc: BaseException) -> str:
    """The innermost cause's first line (the driver's own words, e.g. 'connection refused')."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def patiently(call: Callable, retry_s: float = RETRY_S):
    """`call()`, retried with backoff while it fails on a lost storage connection, for up to `retry_s`."""
    deadline, delay = time.monotonic() + retry_s, 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageLost(reason(exc)) from None
            time.sleep(min(delay, left))
            delay = min(2 * delay, 5.0)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_storage(url: str) -> RDBStorage:
    """An RDB storage with heartbeats and one retry of stale trials; a bad URL is a UserError."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our own one-line report, no traceback
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and sep:
        url = f"postgresql+psycopg://{rest}"  # SQLAlchemy's default driver is psycopg2; we ship psycopg 3
    engine = {"pool_pre_ping": True}  # a pooled connection the server dropped is replaced, not used
    if url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1), engine_kwargs=engine)
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


class Heartbeat:
    """Writes a running trial's heartbeat every HEARTBEAT_S (Optuna's own thread dies on the first failed
    write, with a traceback); a write that fails while the storage is away is skipped."""

    def __init__(self, storage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:
                pass  # storage away: the next beat tries again; GRACE_S covers the gap
            if self.stop.wait(HEARTBEAT_S):
                return

    def __enter__(self) -> "Heartbeat":
        if self.storage.get_heartbeat_interval():
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def _requeue(study: optuna.Study, trial_id: int, reason: str) -> None:
    """Fail a trial whose result was lost with the storage, and enqueue its parameters again (once)."""
    storage = study._storage
    storage.set_trial_user_attr(trial_id, "error", reason)
    try:
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # its heartbeat went stale meanwhile and another process failed and re-enqueued it
    storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id))


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for Study.optimize: this is its loop
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def run_one(study: optuna.Study, objective: Callable, retry_s: float = RETRY_S) -> optuna.trial.FrozenTrial | None:
    """Ask for a trial, run `objective` on it with heartbeats, tell the storage how it ended. Returns the
    finished trial, or None when its result was lost with the storage (it is then failed and re-enqueued)."""
    trial = patiently(lambda: _ask(study), retry_s)
    values, state, lost = None, TrialState.FAIL, None
    try:
        with Heartbeat(study._storage, trial._trial_id):
            values, state = objective(trial), TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    except Exception as exc:
        if transient(exc):
            lost = f"the study storage was lost during the trial ({reason(exc)})"
    if lost is not None:
        patiently(lambda: _requeue(study, trial._trial_id, lost), retry_s)
        return None
    patiently(lambda: study.tell(trial, values if state == TrialState.COMPLETE else None, state=state,
                                 skip_if_finished=True), retry_s)
    try:
        return patiently(lambda: study._storage.get_trial(trial._trial_id), retry_s)
    except StorageLost as exc:  # lost right after the result was stored: it counts among the safe ones
        exc.told = state
        raise


def run_trials(study: optuna.Study, objective: Callable, n_trials: int, wait: bool, timeout_s: float | None = None,
               on_trial: Callable | None = None, retry_s: float = RETRY_S) -> None:
    """Run trials until `n_trials` are finished (COMPLETE or PRUNED); with `wait`, also wait for
    trials other workers are running (and take over theirs if they die). Storage calls are retried for
    `retry_s` (see the module docstring); StorageLost after that, with the completed trials counted."""
    start, complete = time.monotonic(), None
    try:
        while True:
            patiently(lambda: recover(study), retry_s)
            c = patiently(lambda: counts(study), retry_s)
            complete = c["COMPLETE"]
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
            finished = run_one(study, objective, retry_s)
            if finished is not None and finished.state == TrialState.COMPLETE:
                complete += 1
            if finished is not None and on_trial is not None:
                patiently(lambda: on_trial(study, finished), retry_s)
    except StorageLost as exc:
        told = getattr(exc, "told", None) == TrialState.COMPLETE  # stored by run_one just before the loss
        exc.complete = None if complete is None else complete + told
        raise
