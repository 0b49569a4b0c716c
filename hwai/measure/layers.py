"""Per-layer times from the runtimes' profilers (torch.profiler, ONNX Runtime's profiler), mapped back to graph
nodes, with the whole-model runs interleaved so the profiler's own cost can be seen."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hwai.measure.timing import MeasureConfig, ort_session, physical_cores

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
def quiet_stderr(into=None):
    """File descriptor 2, where C++ code writes straight (the ORT profiler's start/stop banner, TFLite Micro's
    reports), silenced while inside, or written into the open file `into`."""
    saved = os.dup(2)
    with contextlib.ExitStack() as stack:
        target = into if into is not None else stack.enter_context(open(os.devnull, "w"))
        os.dup2(target.fileno(), 2)
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
        with quiet_stderr():
            prof.start()
        start = time.perf_counter()
        try:
            for i in range(cfg.layer_runs):
                if i >= MIN_LAYER_RUNS and time.perf_counter() - start > cfg.max_seconds:
                    break
                with quiet_stderr():  # toggling warns about GPU tracks, which a CPU-only trace lacks
                    prof.toggle_collection_dynamic(False, [ProfilerActivity.CPU])
                t0 = time.perf_counter()
                plain(example)
                whole.append((time.perf_counter() - t0) * 1e3)
                with quiet_stderr():
                    prof.toggle_collection_dynamic(True, [ProfilerActivity.CPU])
                with record_function(RUN_LABEL):
                    labelled(example)
        finally:
            with quiet_stderr():
                prof.stop()
    spans = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
             if e.name in names or e.name == RUN_LABEL]
    return _layer_times(spans, method, whole)


def _owner(kernel: str, aliases: dict[str, str]) -> str:
    """The graph node an ORT kernel belongs to: the longest alias (node or tensor name) that is the kernel's
    name or a prefix of it ending at '_' or '/' (ORT names fused or duplicated kernels name_token_3, ...)."""
    from hwai.measure.ort_trace import resolve

    return resolve(kernel, aliases) or UNMAPPED


def ort_layer_times(model: str | Path | bytes, example: torch.Tensor, aliases: dict[str, str],
                    cfg: MeasureConfig = MeasureConfig()) -> LayerTimes:
    """Per-node times from ONNX Runtime's profiler (same session options and threads as `latency`); kernel
    names are mapped back to graph nodes through `aliases` (ONNX node and tensor names -> node name)."""
    from hwai.measure.ort_trace import end_trace, kernels, model_runs

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
    trace = end_trace(session)
    spans = [(RUN_LABEL, start, end) for start, end in model_runs(trace)[cfg.warmup:]]
    spans += [(_owner(name, aliases), ts, ts + dur) for name, ts, dur, _ in kernels(trace)]
    return _layer_times(spans, "ONNX Runtime profiler, kernels mapped to ONNX nodes", whole)


