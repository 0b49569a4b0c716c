"""Start the ranks of a torch.distributed job on this machine and watch them: a rank that dies (kill -9, a crash,
an error) stops the others at once, and the launcher prints one line naming it; a rank that hangs is caught by
the process group's timeout in its peers. No rank outlives the launcher.

Each rank re-runs the same hwai command with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), so `torchrun --nnodes ... -m hwai ...` runs the very same code across machines.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from hwai.errors import UserError

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
ERROR_PREFIX = "hwai: error: "
# what a rank says when a peer died or hung (gloo's messages): a consequence, not the cause
PEER_ERRORS = ("connection reset by peer", "connection closed by peer", "timed out", "broken pipe", "socket closed")


class RankFailed(Exception):
    """A rank died or failed; the message is one line naming it (the CLI prints it and exits non-zero)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def in_worker() -> bool:
    """True inside a rank started by `launch` or torchrun."""
    return all(k in os.environ for k in ENV)


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def init(timeout_s: float, backend: str | None = None) -> str:
    """Join the process group of this rank (gloo on CPU, nccl where CUDA exists); returns the backend."""
    import torch
    import torch.distributed as dist

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return backend


def worker_error(exc: BaseException) -> str:
    """One line for an exception in a rank, naming the rank."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"rank {rank()} of {world_size()}: {text[:300]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child before exec: SIGKILL when the launcher dies (Linux)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _last_error(log: Path) -> str | None:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    mine = [line for line in lines if line.startswith(ERROR_PREFIX)]
    if mine:
        return mine[-1][len(ERROR_PREFIX):]
    return lines[-1][:300] if lines else None


def _peer_error(text: str | None) -> bool:
    return text is not None and any(p in text.lower() for p in PEER_ERRORS)


def _stop(procs: list[subprocess.Popen], grace_s: float = 3.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(args: list[str], world: int, roles: list[str] | None = None, threads: int = 1,
           on_start=None) -> None:
    """Run `python -m hwai ARGS` as `world` ranks on this machine; return when all succeed.

    Rank 0 prints to this process's stdout; every rank's stderr (and other ranks' stdout) goes to a log folder.
    Raises RankFailed with one line naming the first rank that died or failed (the others are stopped).
    `roles[r]` describes rank r in that line; `on_start(pids)` is called once all ranks are started.
    """
    if world < 1:
        raise UserError(f"need at least one rank, got {world}")
    logs = Path(tempfile.mkdtemp(prefix="hwai-shard-"))
    port = _free_port()
    procs: list[subprocess.Popen] = []
    try:
        for r in range(world):
            env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                   "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "HWAI_SHARD_LOGS": str(logs)}
            out = None if r == 0 else open(logs / f"rank{r}.out", "w")
            err = open(logs / f"rank{r}.err", "w")
            procs.append(subprocess.Popen([sys.executable, "-m", "hwai", *args], env=env, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent))
        if on_start is not None:
            on_start([p.pid for p in procs])
        seen: dict[int, int] = {}  # rank -> poll round in which it was first seen failed
        for round_ in itertools.count():
            codes = [p.poll() for p in procs]
            if all(c == 0 for c in codes):
                return
            seen.update({r: round_ for r, c in enumerate(codes) if c not in (None, 0) and r not in seen})
            if seen:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # let a rank that died first be seen before the errors it caused in its peers
        codes = [p.poll() for p in procs]
        seen.update({r: round_ + 1 for r, c in enumerate(codes) if c not in (None, 0) and r not in seen})
        errors = {r: _last_error(logs / f"rank{r}.err") for r in seen}
        culprit = min(seen, key=lambda r: (codes[r] >= 0, _peer_error(errors[r]), seen[r], r))  # the cause, not its echo
        code = codes[culprit]
        who = f"rank {culprit} of {world}" + (f" ({roles[culprit]})" if roles else "")
        if code < 0:
            what = f"was killed by {signal.Signals(-code).name}"
        else:
            detail = errors[culprit]
            what = f"failed: {detail.removeprefix(f'rank {culprit} of {world}: ')}" if detail else f"exited with code {code}"
        alive = [r for r, c in enumerate(codes) if c is None]
        _stop(procs)
        others = [r for r in range(world) if r != culprit]
        stopped = (f"; stopped rank{'s' if len(alive) > 1 else ''} {', '.join(map(str, alive))}" if alive else
                   f"; rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} stopped too" if others else "")
        raise RankFailed(f"{who} {what}{stopped} (logs: {logs})", 2 if code == 2 else 1)
    except KeyboardInterrupt:
        _stop(procs, grace_s=1.0)
        raise
    finally:
        if any(p.poll() is None for p in procs):
            _stop(procs)
