"""Latency harness a benchmark can trust: fixed thread count (default: physical cores), warm-up,
repeats until the median is stable or a time cap, median / IQR / min, and the runtime used.
Per-layer times come from the runtimes' profilers (torch.profiler, ONNX Runtime's profiler), mapped
back to graph nodes; peak memory is sampled from /proc while inference runs.

Runtimes: "torch" (eager, inference mode) and "onnxruntime" (an .onnx path or serialized bytes).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hwai.errors import UserError

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class MeasureConfig:
    """How to time a model."""

    threads: int | None = None  # intra-op threads; None: the number of physical cores
    warmup: int = 5  # untimed runs first (allocations, caches, lazy init)
    min_repeats: int = 20  # timed runs at least
    max_repeats: int = 2000  # timed runs at most
    max_seconds: float = 3.0  # stop adding repeats after this long (min_repeats still run)
    rel_tol: float = 0.02  # stable: the median moved less than this fraction over the last half of runs
    layer_runs: int = 20  # profiled runs for per-layer times (fewer, but >= 5, once max_seconds have passed)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be >= 1, got {self.threads}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise UserError("need 1 <= min_repeats <= max_repeats")


@dataclass
class LatencyStats:
    """Measured latency of whole-model inference (milliseconds)."""

    runtime: str
    threads: int
    repeats: int
    median_ms: float
    iqr_ms: float
    min_ms: float
    mean_ms: float
    batch: int
    kind: str = "measured"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"measured: {self.runtime}, {self.threads} thread(s), batch {self.batch}, {self.repeats} repeats, "
                f"median {self.median_ms:.3f} ms, IQR {self.iqr_ms:.3f} ms, min {self.min_ms:.3f} ms")


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads share a core and do not count)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()))
        except OSError:
            cores.add(("0", str(cpu)))
    return max(1, len(cores))


def time_callable(fn: Callable[[], object], cfg: MeasureConfig, runtime: str, threads: int, batch: int) -> LatencyStats:
    """Time `fn()`: warm-up, then repeats until the median is stable (or the caps are reached)."""
    for _ in range(cfg.warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < cfg.max_repeats:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        n = len(times)
        if n >= cfg.min_repeats and n % 10 == 0:
            if time.perf_counter() - start > cfg.max_seconds:
                break
            half = float(np.median(times[: n // 2]))
            if abs(float(np.median(times)) - half) <= cfg.rel_tol * half:
                break
    arr = np.asarray(times)
    q1, q3 = np.percentile(arr, [25, 75])
    return LatencyStats(runtime, threads, len(arr), float(np.median(arr)), float(q3 - q1), float(arr.min()),
                        float(arr.mean()), batch)


def ort_session(model: str | Path | bytes, threads: int | None = None, profile: bool = False):
    """An ONNX Runtime CPU session with a fixed thread count and full graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = profile
    if profile:  # ORT writes a JSON trace; keep it out of the working directory
        opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"hwai_ort_{os.getpid()}")
    opts.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"ONNX Runtime cannot load {model if not isinstance(model, bytes) else 'the model'}: "
                        f"{str(exc).splitlines()[0][:200]}") from None


def latency(model: torch.nn.Module | str | Path | bytes, example: torch.Tensor, cfg: MeasureConfig = MeasureConfig(),
            runtime: str = "torch") -> LatencyStats:
    """Measure whole-model inference latency of `model` on `example` (its batch size is kept)."""
    threads = cfg.threads or physical_cores()
    if runtime == "torch":
        if not isinstance(model, torch.nn.Module):
            raise UserError("the torch runtime needs a torch model; use runtime onnxruntime for .onnx files")
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        model.eval()
        try:
            with torch.inference_mode():
                return time_callable(lambda: model(example), cfg, "torch", threads, example.shape[0])
        finally:
            torch.set_num_threads(previous)
    if runtime == "onnxruntime":
        session = ort_session(model, threads)
        name = session.get_inputs()[0].name
        feed = {name: example.detach().cpu().numpy()}
        return time_callable(lambda: session.run(None, feed), cfg, "onnxruntime", threads, example.shape[0])
    raise UserError(f"unknown runtime {runtime!r}: use {' or '.join(RUNTIMES)}")


MIN_LAYER_RUNS = 5  # profiled runs kept even past the time cap
RUN_LABEL = "hwai::run"  # profiler range around one whole profiled inference
UNMAPPED = "hwai::unmapped"  # runtime-inserted kernels that belong to no graph node


@dataclass
class LayerTimes:
    """Per-layer measured times (ms per inference, keyed by graph node name) and how they were taken."""

    layers: dict[str, float]  # mean over the typical profiled runs (see _typical_mean)
    profiled_ms: float  # median whole run with the profiler on (includes the profiler's own overhead)
    interleaved_ms: float  # median plain whole-model run, each taken just before a profiled run
    runs: int  # profiled runs
    typical: int  # runs whose total lies in the interquartile range; the per-layer means use these
    unmapped_ms: float  # kernels the runtime inserted that map to no node (e.g. ORT layout transposes)
    method: str  # what timed the layers, in words
    kind: str = "measured"


def _typical_mean(runs: list[dict[str, float]]) -> tuple[dict[str, float], int]:
    """Mean per layer over the runs whose total lies inside the interquartile range of run totals.

    Each layer's own median would pick, layer by layer, a run where that layer was not preempted; on a
    loaded machine those medians add up to less than any real run. Averaging within typical whole runs
    keeps the per-layer times adding up to a typical run.
    """
    totals = np.array([sum(r.values()) for r in runs])
    q1, q3 = np.percentile(totals, [25, 75])
    keep = [r for r, t in zip(runs, totals) if q1 <= t <= q3] or runs
    names = {k for r in keep for k in r}
    return {k: sum(r.get(k, 0.0) for r in keep) / len(keep) for k in names}, len(keep)


def _layer_times(spans: list[tuple[str, float, float]], method: str, whole: list[float]) -> LayerTimes:
    """Group (name, start_us, end_us) spans by the RUN_LABEL span that contains them, then average."""
    runs = sorted((s, e) for n, s, e in spans if n == RUN_LABEL)
    if not runs:
        raise RuntimeError("the profiler recorded no runs")
    starts = [s for s, _ in runs]
    per_run: list[dict[str, float]] = [{} for _ in runs]
    for name, s, e in spans:
        i = int(np.searchsorted(starts, s, side="right")) - 1
        if name != RUN_LABEL and i >= 0 and s <= runs[i][1]:
            per_run[i][name] = per_run[i].get(name, 0.0) + (e - s) / 1e3
    layers, typical = _typical_mean(per_run)
    unmapped = layers.pop(UNMAPPED, 0.0)
    profiled = float(np.median([(e - s) / 1e3 for s, e in runs]))
    return LayerTimes(layers, profiled, float(np.median(whole)), len(runs), typical, unmapped, method)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ profiler's start/stop banner, which it writes straight to file descriptor 2."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _fx_runner(model: torch.nn.Module, names: set[str], record_function) -> Callable:
    """Run the fx-traced model node by node, each graph node inside record_function(node name)."""
    from torch.fx import Interpreter, symbolic_trace

    from hwai.graph import fx_labels

    gm = symbolic_trace(model)
    labels = {k: v for k, v in fx_labels(gm).items() if v in names}

    class Labelled(Interpreter):
        def run_node(self, n):
            label = labels.get(n.name)
            if label is None:
                return super().run_node(n)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            with record_function(label):
                return getattr(self, n.op)(n.target, args, kwargs)

    return Labelled(gm).run


@contextlib.contextmanager
def _hook_labels(model: torch.nn.Module, record_function):
    """Forward hooks open record_function(name) around every leaf module call (repeats: name#1, ...).
    Yields a runner `run(x, labelled)`; unlabelled runs skip the ranges."""
    calls: dict[str, int] = {}
    ranges: list = []
    on = [False]

    def pre(name: str) -> None:
        if on[0]:
            k = calls.get(name, 0)
            calls[name] = k + 1
            ranges.append(record_function(f"{name}#{k}" if k else name))
            ranges[-1].__enter__()

    def post() -> None:
        if on[0]:
            ranges.pop().__exit__(None, None, None)

    def run(x: torch.Tensor, labelled: bool = True):
        calls.clear()
        on[0] = labelled
        try:
            return model(x)
        finally:
            on[0] = False

    handles = []
    for name, module in model.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: pre(name)))
            handles.append(module.register_forward_hook(lambda m, a, o: post()))
    try:
        yield run
    finally:
        for h in handles:
            h.remove()


def torch_layer_times(model: torch.nn.Module, example: torch.Tensor, graph, cfg: MeasureConfig = MeasureConfig()
                      ) -> LayerTimes:
    """Per-node times from torch.profiler: every node of `graph` (hwai.graph.Graph) runs inside a
    record_function range named after it (an fx Interpreter for traced graphs, forward hooks on leaf modules
    for hooks-captured ones), with the same thread count and batch as `latency`. Each profiled run follows a
    plain eager run (collection paused), so whole-model and per-layer times see the same machine load."""
    from torch.profiler import ProfilerActivity, profile, record_function

    threads = cfg.threads or physical_cores()
    names, previous, whole = {n.name for n in graph.nodes}, torch.get_num_threads(), []
    torch.set_num_threads(threads)
    model.eval()
    with contextlib.ExitStack() as stack:
        stack.callback(torch.set_num_threads, previous)
        if graph.method == "fx":
            labelled, method = _fx_runner(model, names, record_function), "torch.profiler, one range per fx node"
            plain = model
        else:
            hooked = stack.enter_context(_hook_labels(model, record_function))
            labelled, method = hooked, "torch.profiler, one range per leaf module (hooks)"
            plain = lambda x: hooked(x, labelled=False)  # noqa: E731
        stack.enter_context(torch.inference_mode())
        for _ in range(cfg.warmup):  # the labelled runner calls the same modules: this warms both
            labelled(example)
        prof = profile(activities=[ProfilerActivity.CPU])
        with _quiet_stderr():
            prof.start()
        start = time.perf_counter()
        try:
            for i in range(cfg.layer_runs):
                if i >= MIN_LAYER_RUNS and time.perf_counter() - start > cfg.max_seconds:
                    break
                with _quiet_stderr():  # toggling warns about GPU tracks, which a CPU-only trace lacks
                    prof.toggle_collection_dynamic(False, [ProfilerActivity.CPU])
                t0 = time.perf_counter()
                plain(example)
                whole.append((time.perf_counter() - t0) * 1e3)
                with _quiet_stderr():
                    prof.toggle_collection_dynamic(True, [ProfilerActivity.CPU])
                with record_function(RUN_LABEL):
                    labelled(example)
        finally:
            with _quiet_stderr():
                prof.stop()
    spans = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
             if e.name in names or e.name == RUN_LABEL]
    return _layer_times(spans, method, whole)


def _owner(kernel: str, aliases: dict[str, str]) -> str:
    """The graph node an ORT kernel belongs to: the longest alias (node or tensor name) that is the kernel's
    name or a prefix of it ending at '_' or '/' (ORT names fused or duplicated kernels name_token_3, ...)."""
    from hwai.calibrate.device import resolve

    return resolve(kernel, aliases) or UNMAPPED


def ort_layer_times(model: str | Path | bytes, example: torch.Tensor, aliases: dict[str, str],
                    cfg: MeasureConfig = MeasureConfig()) -> LayerTimes:
    """Per-node times from ONNX Runtime's profiler (same session options and threads as `latency`); kernel
    names are mapped back to graph nodes through `aliases` (ONNX node and tensor names -> node name)."""
    session = ort_session(model, cfg.threads, profile=True)
    plain = ort_session(model, cfg.threads)
    feed = {session.get_inputs()[0].name: example.detach().cpu().numpy()}
    whole: list[float] = []
    start = time.perf_counter()
    for i in range(cfg.warmup + cfg.layer_runs):  # a plain session's run before each profiled run
        if i >= cfg.warmup + MIN_LAYER_RUNS and time.perf_counter() - start > cfg.max_seconds:
            break
        t0 = time.perf_counter()
        plain.run(None, feed)
        if i >= cfg.warmup:
            whole.append((time.perf_counter() - t0) * 1e3)
        session.run(None, feed)
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][cfg.warmup:]
    spans = [(RUN_LABEL, e["ts"], e["ts"] + e["dur"]) for e in runs]
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            spans.append((_owner(e["name"][: -len("_kernel_time")], aliases), e["ts"], e["ts"] + e["dur"]))
    return _layer_times(spans, "ONNX Runtime profiler, kernels mapped to ONNX nodes", whole)


@dataclass
class MemoryStats:
    """Resident memory of this process while inference ran (bytes, measured by sampling /proc/self/statm)."""

    peak_rss_bytes: int  # the whole process: interpreter, libraries, weights, activations
    increase_bytes: int  # above the baseline just before the runs (allocator caches hide reused buffers)
    kind: str = "measured"


def peak_memory(fn: Callable[[], object], runs: int = 3, interval_s: float = 0.001) -> MemoryStats | None:
    """Peak resident memory while `fn` runs `runs` times, sampled from /proc/self/statm by a thread every
    `interval_s`; None where /proc is not available."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return None
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        return int(statm.read_text().split()[1]) * page

    baseline, peak, stop = rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(runs):
            fn()
    finally:
        stop.set()
        sampler.join()
    top = max(peak[0], rss())
    return MemoryStats(top, top - baseline)
