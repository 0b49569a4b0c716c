"""ONNX Runtime's profiler, read in one place: sessions with hwai's options, the JSON trace a profiling session
writes, kernel names mapped to graph nodes; and the kernel measurement of a calibration kit (hwai's measurement CSV).

Standalone: needs only Python 3.9+, numpy and onnxruntime, so it runs on a device hwai cannot run on
(a Raspberry Pi, a Jetson). `hwai calibrate --export-kit DIR` writes the kit (ONNX models + kit.json) and a
copy of this file; on the device:

    python3 measure_kernels.py DIR --out measurements.csv [--threads N] [--rounds 3]

then, back on the machine with hwai: `hwai calibrate --from measurements.csv --target NAME`.
`hwai calibrate` runs the same code on this machine.

How it measures: every model gets a plain and a profiling ONNX Runtime session (full graph optimization,
sequential, N intra-op threads). A round is one pass over all models: per model, warm-up runs, then plain and
profiled runs alternately (so both see the same load), then more plain runs until the estimate settles.
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


def session(model, threads: int, profile: bool = False):
    """An ONNX Runtime CPU session as hwai measures: full graph optimisation, sequential, `threads` intra-op
    threads; `profile` writes a JSON trace into the temp folder (read it with `end_trace`). `model`: a path or
    the serialized bytes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
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


def _timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1e6


def _round(plain, profiled, feed: dict, profiled_runs: int, min_runs: int, max_seconds: float) -> list[float]:
    """One round of one model: warm-up, plain and profiled runs alternately, then plain runs until the estimate
    settles (within 2% over the last half) or `max_seconds`; returns the plain latencies (us)."""
    for _ in range(3):
        plain.run(None, feed)
        if profiled is not None:
            profiled.run(None, feed)
    whole = []
    for _ in range(profiled_runs):
        whole.append(_timed(lambda: plain.run(None, feed)))
        profiled.run(None, feed)
    start = time.perf_counter()
    while True:
        n = len(whole)
        if n >= min_runs and n % 10 == 0:
            now = fast_half(whole)
            if time.perf_counter() - start > max_seconds or abs(now - fast_half(whole[: n // 2])) <= 0.02 * now:
                return whole
        whole.append(_timed(lambda: plain.run(None, feed)))


def fast_half(values) -> float:
    """Mean of the faster half of the runs: on a machine other processes use, a run is either undisturbed or
    preempted (slower, never faster), so the faster half estimates the undisturbed time far more stably than
    a median; undisturbed, it is within a few percent of the median. (A mean also averages away the
    profiler's whole-microsecond resolution.)"""
    v = np.sort(np.asarray(values, dtype=float))
    return float(v[: max(1, (len(v) + 1) // 2)].mean())


def _kernel_rounds(trace: list, rounds: int, per_round: int) -> dict:
    """kernel name -> (op, input shape, output shape, inputs of >= 2 dims, [per-round us]) from one trace."""
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


def measure(kit: Path, out: Path, threads: int, rounds: int = 3, profiled_runs: int = 20, min_runs: int = 20,
            max_seconds: float = 0.25, progress=None) -> int:
    """Measure every model of `kit`, write the CSV to `out`; returns the number of kernel rows written.
    `progress(done, total, label)` is called before each model of each round. With `profiled_runs` 0 only
    whole models are timed (no kernel rows)."""
    # long: runs standalone on a device without hwai: sessions, rounds and the CSV as one recipe
    import onnxruntime as ort

    kit = Path(kit)
    spec = json.loads((kit / "kit.json").read_text())
    if spec.get("format") != KIT_FORMAT:
        raise ValueError(f"{kit / 'kit.json'} is not an hwai calibration kit ({KIT_FORMAT})")
    models = spec["models"]
    sessions = []
    for m in models:
        path = kit / m["file"]
        feed = {"input": np.random.default_rng(0).standard_normal(m["input"]).astype(np.float32)}
        plain = session(path, threads)
        profiled = session(path, threads, True) if profiled_runs else None
        feed = {plain.get_inputs()[0].name: feed["input"]}
        sessions.append((plain, profiled, feed))
    whole: list[list[float]] = [[] for _ in models]
    per_round: list[list[float]] = [[] for _ in models]
    total, done = rounds * len(models), 0
    for r in range(rounds):
        for i, (m, (plain, profiled, feed)) in enumerate(zip(models, sessions)):
            if progress:
                progress(done, total, f"round {r + 1}/{rounds}: {m['case']}")
            whole[i].append(_round(plain, profiled, feed, profiled_runs, min_runs, max_seconds))
            per_round[i].append(fast_half(whole[i][-1]))
            done += 1
    rows = []
    for i, (m, (plain, profiled, feed)) in enumerate(zip(models, sessions)):
        best = int(np.argmin(per_round[i]))
        q1, q3 = np.percentile(whole[i][best], [25, 75])
        base = {"case": m["case"], "family": m["family"], "dtype": m["dtype"]}
        rows.append({**base, "kind": "model", "us": f"{per_round[i][best]:.3f}", "spread_us": f"{q3 - q1:.3f}",
                     "runs": len(whole[i][best])})
        if profiled is None:
            continue
        trace = end_trace(profiled)
        aliases, nodes = m.get("aliases", {}), m.get("nodes", {})
        for name, (op, ins, outs, n_act, times) in _kernel_rounds(trace, rounds, profiled_runs).items():
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
            "kit": spec.get("created", ""), "rounds": rounds}
    tmp = Path(str(out) + ".tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write(FORMAT + "\n")
        for key in META_KEYS:
            fh.write(f"# {key}: {meta[key]}\n")
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
    return sum(r["kind"] == "kernel" for r in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Measure an hwai calibration kit with ONNX Runtime's profiler.")
    parser.add_argument("kit", type=Path, help="folder written by `hwai calibrate --export-kit`")
    parser.add_argument("--out", type=Path, default=Path("measurements.csv"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all models, spread in time")
    args = parser.parse_args(argv)

    def show(done: int, total: int, label: str) -> None:
        print(f"\r[{done + 1}/{total}] {label[:70]:<70}", end="", file=sys.stderr, flush=True)

    n = measure(args.kit, args.out, args.threads, args.rounds, progress=show)
    print(f"\nwrote {n} kernel measurements to {args.out}; copy it back and run "
          f"`hwai calibrate --from {args.out.name} --target NAME`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
