"""ONNX Runtime's profiler, read in one place: sessions with hwai's options, the JSON trace a profiling session
writes, kernel names mapped to graph nodes; and the kernel measurement of a calibration kit (hwai's measurement CSV).

Standalone: needs only Python 3.9+, numpy and onnxruntime, so it runs on a device hwai cannot run on
(a Raspberry Pi, a Jetson). `hwai calibrate --export-kit DIR` writes the kit (ONNX models + kit.json) and a
copy of this file; on the device:

    python3 measure_kernels.py DIR --out measurements.csv [--threads N] [--rounds 3]

then, back on the machine with hwai: `hwai calibrate --from measurements.csv --target NAME`.
`hwai calibrate` runs the same code on this machine.

How it measures: every model gets a plain and a profiling ONNX Runtime session (full graph optimization,
sequential, N intra-op threads). A round is one pass over all models: per model, the profiled runs, then the
plain runs until the estimate settles, each block after warm-up runs (back-to-back inferences, as an
application runs them).
Rounds are spread in time because noise on a shared machine comes in bursts. Per round, a model's latency and
each kernel's time is the mean of its faster half of runs (`fast_half`); over rounds the lowest counts (other
processes only ever slow a run down).
The profiler's per-kernel times include its own bookkeeping (a few microseconds per kernel); hwai fits
that away against the whole-model times.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORMAT = "# hwai kernel measurements, format 1"
KIT_FORMAT = "hwai-kit/1"
COLUMNS = ("kind", "case", "family", "dtype", "kernel", "op", "in_shape", "out_shape", "k", "stride", "groups",
           "cin", "cout", "inputs", "us", "spread_us", "runs")
META_KEYS = ("machine", "runtime", "threads", "date", "kit", "rounds")
NCHWC_OPS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


def kernel_op(name: str, op_name: str) -> str:
    """The kernel's op as hwai names it: ONNX Runtime's NCHWc kernels report their ONNX op type, their node
    name ends in `_nchwc`."""
    return f"Nchwc{op_name}" if name.endswith("_nchwc") and op_name in NCHWC_OPS else op_name


def resolve(name: str, aliases: dict) -> str | None:
    """The kit node a profiled kernel comes from: its name, or the output tensor it is named after (NCHWc
    kernels: `<tensor>_nchwc`), or the longest prefix ending at `_` or `/` (ONNX Runtime appends `_token_N`)."""
    base = re.sub(r"(_bn)?_nchwc$", "", name)
    cut = len(base)
    while cut > 0:
        if base[:cut] in aliases:
            return aliases[base[:cut]]
        cut = max(base.rfind("_", 0, cut), base.rfind("/", 0, cut))
    return None


def session(model, threads: int, profile: bool = False, spin: bool = True):
    """An ONNX Runtime CPU session as hwai measures: full graph optimisation, sequential, `threads` intra-op
    threads; `profile` writes a JSON trace into the temp folder (read it with `end_trace`). `model`: a path or
    the serialized bytes. spin=False: the intra-op workers sleep when idle instead of spinning (ONNX Runtime's
    default keeps them spinning after a run, on cores another live session then needs: sessions timed side by side,
    as in a verdict's blocks, need it off)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"hwai_ort_{os.getpid()}")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def end_trace(profiled) -> list:
    """The events of a profiling session's trace (the session stops profiling; the file is removed)."""
    path = Path(profiled.end_profiling())
    try:
        return json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)


def model_runs(trace: list) -> list:
    """(start, end) in microseconds of every whole inference in a trace, in order."""
    return sorted((e["ts"], e["ts"] + e["dur"]) for e in trace
                  if e.get("cat") == "Session" and e.get("name") == "model_run")


def kernels(trace: list):
    """(kernel name, start us, duration us, args) of every kernel a trace timed."""
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            yield e["name"][: -len("_kernel_time")], e["ts"], e["dur"], e.get("args", {})


CLOCKS = ("wall", "cpu", "auto")


def clock_for(clock: str, threads: int) -> str:
    """The clock a measurement uses: "cpu" (this thread's CPU time) only at 1 intra-op thread, where ONNX Runtime
    computes in the calling thread, so a run's CPU time is its latency without the time other processes held the
    core; "auto": cpu at 1 thread, else wall."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    if clock == "auto":
        return "cpu" if threads == 1 else "wall"
    if clock == "cpu" and threads != 1:
        raise ValueError("the cpu clock measures latency only at 1 intra-op thread")
    return clock


def _timed(run, clock: str = "wall") -> float:
    now = time.thread_time if clock == "cpu" else time.perf_counter
    t0 = now()
    run()
    return (now() - t0) * 1e6


def _disturbed(run) -> float:
    """Microseconds a run spent not computing (wall time minus this thread's CPU time): other processes held the
    core. Meaningful at 1 intra-op thread, where ONNX Runtime computes in the calling thread."""
    w0, c0 = time.perf_counter(), time.thread_time()
    run()
    return max(0.0, (time.perf_counter() - w0) - (time.thread_time() - c0)) * 1e6


def _round(plain, profiled, feed: dict, profiled_runs: int, min_runs: int, max_seconds: float,
           clock: str = "wall") -> tuple[list[float], list[float]]:
    """One round of one model: the profiled runs in a block, then the plain ones (each after 3 warm-up runs, so
    both run in the steady state of back-to-back inferences, the model's weights as warm in the caches as they
    stay; alternating the two sessions would evict each other's weights) until the estimate settles (within 2%
    over the last half) or `max_seconds`. Returns the plain latencies (us) on `clock` and how long each profiled
    run was disturbed (`_disturbed`; us)."""
    disturbed = []
    if profiled is not None:
        for _ in range(3):
            profiled.run(None, feed)
        disturbed = [_disturbed(lambda: profiled.run(None, feed)) for _ in range(profiled_runs)]
    for _ in range(3):
        plain.run(None, feed)
    whole: list[float] = []
    start = time.perf_counter()
    while True:
        n = len(whole)
        if n >= min_runs and n % 10 == 0:
            now = fast_half(whole)
            if time.perf_counter() - start > max_seconds or abs(now - fast_half(whole[: n // 2])) <= 0.02 * now:
                return whole, disturbed
        whole.append(_timed(lambda: plain.run(None, feed), clock))


def fast_half(values) -> float:
    """Mean of the faster half of the runs: on a machine other processes use, a run is either undisturbed or
    preempted (slower, never faster), so the faster half estimates the undisturbed time far more stably than
    a median; undisturbed, it is within a few percent of the median. (A mean also averages away the
    profiler's whole-microsecond resolution.)"""
    v = np.sort(np.asarray(values, dtype=float))
    return float(v[: max(1, (len(v) + 1) // 2)].mean())


def undisturbed(disturbed, least: int = 5) -> np.ndarray:
    """Indices of the runs other processes did not interrupt (disturbed for under 2 us), at least the `least`
    least disturbed ones: their kernel times are the kernels' own (the profiler times kernels by the wall clock)."""
    d = np.asarray(disturbed, dtype=float)
    order = np.argsort(d, kind="stable")
    return np.sort(order[: max(min(least, len(d)), int((d < 2.0).sum()))])


def _kernel_rounds(trace: list, rounds: int, per_round: int, disturbed: list | None = None) -> dict:
    """kernel name -> (op, input shape, output shape, inputs of >= 2 dims, [per-round us]) from one trace;
    `disturbed`: per round, how long each profiled run was disturbed (1 thread): only the undisturbed runs count."""
    # long: one pass assigning kernel events to runs, then per kernel and round the fast half of its kept runs
    runs = model_runs(trace)
    starts = [s for s, _ in runs]
    per_run: list[dict] = [{} for _ in runs]
    info = {}
    for name, ts, dur, args in kernels(trace):
        i = int(np.searchsorted(starts, ts, side="right")) - 1
        if i < 0 or ts > runs[i][1]:
            continue
        per_run[i][name] = per_run[i].get(name, 0.0) + dur
        if name not in info:
            shapes = [next(iter(x.values())) for x in args.get("input_type_shape", [])]
            out = [next(iter(x.values())) for x in args.get("output_type_shape", [])]
            info[name] = (kernel_op(name, args.get("op_name", "")), shapes[0] if shapes else [], out[0] if out else [],
                          sum(1 for s in shapes if len(s) >= 2))
    warm = 3  # each round begins with 3 profiled warm-up runs
    result = {}
    for name, (op, ins, outs, n_act) in info.items():
        found = []
        for r in range(rounds):
            chunk = per_run[r * (warm + per_round) + warm:(r + 1) * (warm + per_round)]
            if disturbed is not None and len(disturbed[r]) == len(chunk):
                chunk = [chunk[j] for j in undisturbed(disturbed[r])]
            vals = [run[name] for run in chunk if name in run]
            if vals:
                found.append(fast_half(vals))
        result[name] = (op, ins, outs, n_act, found)
    return result


def _shape(s) -> str:
    return "x".join(str(int(d)) for d in s)


def cpu_name() -> str:
    """The CPU model as the OS reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model, architecture and core count in one line."""
    return f"{cpu_name()} ({platform.machine()}, {os.cpu_count()} logical cores)"


def _feeds(m: dict, plain) -> dict:
    """Random inputs of a kit model: `inputs` ([name, shape] pairs, e.g. a pipeline stage's several tensors) or
    the one `input` shape."""
    rng = np.random.default_rng(0)
    shapes = m.get("inputs") or [[plain.get_inputs()[0].name, m["input"]]]
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes}


def measure_rows(kit: Path, threads: int, rounds: int = 3, profiled_runs: int = 20, min_runs: int = 20,
                 max_seconds: float = 0.25, progress=None, clock: str = "auto") -> tuple[list[dict], dict]:
    """Measure every model of `kit`: (CSV rows, header) as `measure` writes them."""
    # long: runs standalone on a device without hwai: sessions, rounds and rows as one recipe
    import onnxruntime as ort

    kit, clock = Path(kit), clock_for(clock, threads)
    spec = json.loads((kit / "kit.json").read_text())
    if spec.get("format") != KIT_FORMAT:
        raise ValueError(f"{kit / 'kit.json'} is not an hwai calibration kit ({KIT_FORMAT})")
    models = spec["models"]
    sessions = []
    for m in models:
        path = kit / m["file"]
        plain = session(path, threads)
        profiled = session(path, threads, True) if profiled_runs else None
        sessions.append((plain, profiled, _feeds(m, plain)))
    whole: list[list[list[float]]] = [[] for _ in models]
    per_round: list[list[float]] = [[] for _ in models]
    disturbances: list[list[list[float]]] = [[] for _ in models]
    total, done = rounds * len(models), 0
    for r in range(rounds):
        for i, (m, (plain, profiled, feed)) in enumerate(zip(models, sessions)):
            if progress:
                progress(done, total, f"round {r + 1}/{rounds}: {m['case']}")
            runs, disturbed = _round(plain, profiled, feed, profiled_runs, min_runs, max_seconds, clock)
            whole[i].append(runs)
            disturbances[i].append(disturbed)
            per_round[i].append(fast_half(runs))
            done += 1
    rows = []
    for i, (m, (plain, profiled, feed)) in enumerate(zip(models, sessions)):
        best = int(np.argmin(per_round[i]))
        q1, q3 = np.percentile(whole[i][best], [25, 75])
        base = {"case": m["case"], "family": m["family"], "dtype": m["dtype"]}
        outs = plain.run(None, feed)  # the model's tensors in and out: what a run copies
        rows.append({**base, "kind": "model", "in_shape": "+".join(_shape(v.shape) for v in feed.values()),
                     "out_shape": "+".join(_shape(np.shape(o)) for o in outs), "inputs": len(feed),
                     "us": f"{per_round[i][best]:.3f}", "spread_us": f"{q3 - q1:.3f}", "runs": len(whole[i][best])})
        if profiled is None:
            continue
        trace = end_trace(profiled)
        aliases, nodes = m.get("aliases", {}), m.get("nodes", {})
        kept = disturbances[i] if clock == "cpu" else None
        for name, (op, ins, outs, n_act, times) in _kernel_rounds(trace, rounds, profiled_runs, kept).items():
            if not times:
                continue
            attrs = nodes.get(resolve(name, aliases) or "", {})
            k = attrs.get("k")
            rows.append({**base, "kind": "kernel", "kernel": name, "op": op, "in_shape": _shape(ins),
                         "out_shape": _shape(outs), "k": _shape(k) if k else "", "stride": attrs.get("stride", ""),
                         "groups": attrs.get("groups", ""), "cin": attrs.get("cin", ""), "cout": attrs.get("cout", ""),
                         "inputs": n_act, "us": f"{min(times):.3f}", "spread_us": f"{np.ptp(times):.3f}",
                         "runs": len(times) * profiled_runs})
    meta = {"machine": machine(), "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "threads": threads, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "kit": spec.get("created", ""), "rounds": rounds, "clock": clock}
    return rows, meta


def write(out: Path, rows: list[dict], meta: dict) -> None:
    """A measurement CSV: the format line, the header (META_KEYS, then any other keys) and the rows."""
    tmp = Path(str(out) + ".tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write(FORMAT + "\n")
        for key in (*META_KEYS, *(k for k in meta if k not in META_KEYS)):
            fh.write(f"# {key}: {meta[key]}\n")
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)


def measure(kit: Path, out: Path, threads: int, rounds: int = 3, profiled_runs: int = 20, min_runs: int = 20,
            max_seconds: float = 0.25, progress=None, clock: str = "auto") -> int:
    """Measure every model of `kit`, write the CSV to `out`; returns the number of kernel rows written.
    `progress(done, total, label)` is called before each model of each round. With `profiled_runs` 0 only
    whole models are timed (no kernel rows). clock: "wall", "cpu" (1 thread only) or "auto" (`clock_for`)."""
    rows, meta = measure_rows(kit, threads, rounds, profiled_runs, min_runs, max_seconds, progress, clock)
    write(out, rows, meta)
    return sum(r["kind"] == "kernel" for r in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Measure an hwai calibration kit with ONNX Runtime's profiler.")
    parser.add_argument("kit", type=Path, help="folder written by `hwai calibrate --export-kit`")
    parser.add_argument("--out", type=Path, default=Path("measurements.csv"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all models, spread in time")
    parser.add_argument("--clock", choices=CLOCKS, default="auto", help="wall time, or this thread's CPU time "
                        "(1 thread only: a run's latency without the time other processes held the core); auto: cpu "
                        "at 1 thread")
    args = parser.parse_args(argv)

    def show(done: int, total: int, label: str) -> None:
        print(f"\r[{done + 1}/{total}] {label[:70]:<70}", end="", file=sys.stderr, flush=True)

    n = measure(args.kit, args.out, args.threads, args.rounds, progress=show, clock=args.clock)
    print(f"\nwrote {n} kernel measurements to {args.out}; copy it back and run "
          f"`hwai calibrate --from {args.out.name} --target NAME`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
