"""The docs cannot drift from the CLI: every `hwai ...` line of a ```bash block in README.md and in docs/ runs as
written, in order, page by page, in a fresh folder of its own, and must exit 0. A ```python block with a title
(```python title="mynet.py") is a file the page asks the reader to write: it is written into that folder first.
Commands that cannot run here (a second machine, a database server, a device) sit in ```text blocks.

Each page runs in one helper process that imports torch and hwai once and forks a fresh child per command: the
child is `python -m hwai ARGS` with its imports already done (same entry point, `hwai.cli.main`, same argv, its own
process state, its own user target folder per page), which saves a few seconds of imports per command.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
TITLE = re.compile(r'^python\s+title="([^"]+)"')
SHELL = re.compile(r"[;&|<>`$]")  # one command per line, as typed: no shell syntax the test would have to interpret
README_MAX_LINES = 150
COMMAND_TIMEOUT_S = 600


def blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block, in page order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def commands(text: str) -> list[list[str]]:
    """The argv (after `hwai`) of every `hwai ...` line in the page's bash blocks; a trailing `\\` continues a line."""
    found = []
    for info, body in blocks(text):
        if info.split()[:1] != ["bash"]:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if not line.strip().startswith("hwai "):
                continue
            code = line.split(" #", 1)[0]
            assert not SHELL.search(code), f"write one plain command per line (no shell syntax): {line.strip()!r}"
            found.append(shlex.split(code)[1:])
    return found


def files(text: str) -> dict[str, str]:
    """Files the page shows with a title (```python title="NAME"), by name."""
    return {m.group(1): body for info, body in blocks(text) if (m := TITLE.match(info))}


def shown(text: str) -> list[str]:
    """Every `hwai ...` line of any code block (bash or text), for the coverage check."""
    return [line.strip() for _, body in blocks(text) for line in body.splitlines() if line.strip().startswith("hwai ")]


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


RUNNABLE = [p for p in PAGES if commands(p.read_text())]
JOBS = int(os.environ.get("HWAI_DOCS_JOBS", "3"))  # pages run side by side: much of a command's time is waiting


def run_page(page: Path, folder: Path) -> tuple[list[list[str]], subprocess.CompletedProcess, list]:
    """Run the page's commands in `folder` (its titled files written there first) through one runner process."""
    text = page.read_text()
    for name, body in files(text).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(body)
    argvs = commands(text)
    plan = folder.parent / f"{folder.name}-commands.json"
    plan.write_text(json.dumps(argvs))
    # HWAI_TARGET_DIR: the page's own user target folder (calibrate writes there). OMP_WAIT_POLICY: pages run side
    # by side on shared cores, where torch's OpenMP workers would spin while they wait (measured: `hwai train` on
    # digits 3x the CPU time at load ~8); exit codes do not depend on it
    env = {"OMP_WAIT_POLICY": "passive", **os.environ, "HWAI_TARGET_DIR": str(folder.parent / f"{folder.name}-targets")}
    proc = subprocess.run([sys.executable, __file__, str(plan)], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S * len(argvs))
    results = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else []
    return argvs, proc, results


class _OnDemand(dict):
    """page -> its run (a finished Future), run when its test first asks for it."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self.tmp_path_factory = tmp_path_factory

    def __missing__(self, page: Path) -> Future:
        done = Future()
        done.set_result(run_page(page, self.tmp_path_factory.mktemp(page.stem)))
        self[page] = done
        return done


@pytest.fixture(scope="module")
def page_runs(request, tmp_path_factory):
    """Every selected page's run. In one process: started together (JOBS at a time, the pages with most commands
    first). Under pytest-xdist (`make test`): each page when its test runs; the workers are the parallelism (pages
    started together there ran 3 wide beside the other worker's tests on 2 cores: 830 s, against 214 s in one
    process)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        yield _OnDemand(tmp_path_factory)
        return
    selected = [item.callspec.params["page"] for item in request.session.items
                if item.originalname == "test_page_commands_run_as_written"]
    pool = ThreadPoolExecutor(max(1, JOBS))
    order = sorted(selected, key=lambda p: -len(commands(p.read_text())))
    runs = {page: pool.submit(run_page, page, tmp_path_factory.mktemp(page.stem)) for page in order}
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("page", RUNNABLE, ids=_id)
def test_page_commands_run_as_written(page, page_runs):
    argvs, proc, results = page_runs[page].result()
    assert proc.returncode == 0, f"{_id(page)}: the command runner failed:\n{proc.stderr[-3000:]}"
    for argv, (code, seconds, cpu, _) in zip(argvs, results):  # shown with -s / -rP: what each documented step costs
        print(f"{seconds:6.1f} s wall {cpu:6.1f} s CPU  exit {code}  hwai {shlex.join(argv)}")
    for argv, (code, seconds, _, log) in zip(argvs, results):
        assert code == 0, (f"{_id(page)}: `hwai {shlex.join(argv)}` exited {code} after {seconds:.0f} s "
                           f"(earlier commands: {[round(r[1]) for r in results]} s):\n{log}")
    assert len(results) == len(argvs)


def test_readme_is_short_and_its_tour_says_how_long_each_step_takes():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    tour = [line for info, body in blocks(text) if info == "bash" for line in body.splitlines()
            if line.startswith("hwai ")]
    assert len(tour) >= 8, "the README's tour shows the main commands"
    untimed = [line for line in tour if not re.search(r"#.*~\s*\d+\s*(s|min)\b", line)]
    assert not untimed, f"tour lines without an expected time (`# ~N s`): {untimed}"


def test_readme_python_example_runs(tmp_path):
    code = [body for info, body in blocks((ROOT / "README.md").read_text()) if info == "python"]
    assert len(code) == 1
    proc = subprocess.run([sys.executable, "-c", code[0]], cwd=tmp_path, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout and (tmp_path / "cnn-int8.onnx").is_file()


def test_every_command_has_a_guide_that_shows_it():
    """Each command and subcommand of `hwai --help` appears in a code block of some page."""
    import click
    import typer.main

    from hwai.cli import app

    def leaves(group: click.Group, prefix: str) -> list[str]:
        out = []
        for name, cmd in group.commands.items():
            out += leaves(cmd, f"{prefix}{name} ") if isinstance(cmd, click.Group) else [f"{prefix}{name}"]
        return out

    lines = [line for page in PAGES for line in shown(page.read_text())]
    missing = [c for c in leaves(typer.main.get_command(app), "hwai ")
               if not any(line == c or line.startswith(c + " ") for line in lines)]
    assert not missing, f"commands no page shows: {missing}"


def _serve(plan: Path) -> None:
    """Run each argv of `plan` as `hwai ARGV` in a forked child of this warmed-up process; print the results as
    JSON: [exit code, wall seconds, CPU seconds, the tail of the command's output] per command."""
    import onnx  # noqa: F401  (imported once here, before any fork; nothing has started a thread pool yet)
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401

    import hwai.cli
    import hwai.data  # noqa: F401
    import hwai.train  # noqa: F401

    results = []
    for i, argv in enumerate(json.loads(plan.read_text())):
        log = plan.parent / f"{plan.stem}-{i}.log"
        start = time.perf_counter()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: `python -m hwai ARGV`, output to its log
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.argv = ["hwai", *argv]
                hwai.cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - a traceback is a failure; print it into the log
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status, usage = os.wait4(pid, 0)  # usage: the command's CPU time, its own child processes included
        code = os.waitstatus_to_exitcode(status)
        text = log.read_text(errors="replace") if log.exists() else ""
        results.append([code, time.perf_counter() - start, usage.ru_utime + usage.ru_stime, text[-4000:]])
        if code != 0:
            break
    print(json.dumps(results))


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
