"""Profile a model layer by layer: static cost (params, MACs, activation bytes) from the captured graph,
measured time per layer from the runtime's profiler, whole-model latency and peak memory measured on this
host, and, given a target, the cost model's predicted time and energy per layer.

A torch model is profiled in eager torch (graph from hwai.graph) or, with runtime "onnxruntime", exported to a
temporary ONNX file first; an .onnx file (e.g. the INT8 model `hwai compress` writes) is profiled in ONNX
Runtime with its graph read from the file (hwai.graph.onnx), so FP32 and INT8 compare row by row.
"""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from hwai import measure
from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.graph import Graph, capture

SCHEMA = "hwai.profile/1"


@dataclass
class LayerRow:
    """One graph node: static cost, measured time on the host and (with a target) predicted cost."""

    name: str
    op: str
    target: str  # module class, function or ONNX op type
    output_shape: tuple[int, ...]
    dtype: str
    params: int
    macs: int
    weight_bytes: int
    activation_bytes: int  # activations read + written
    fusion: str | None  # "conv+batchnorm+relu" on a fusion group's first node
    measured_ms: float | None  # None: the runtime ran no kernel of its own for this node (fused into another)
    percent: float | None  # share of the summed per-layer times
    predicted_ms: float | None = None
    predicted_energy_uj: float | None = None
    predicted_bound: str | None = None  # "compute" | "memory" | "overhead"


@dataclass
class Profile:
    """Per-layer table and totals. `total` keys: measured_* (this host) and predicted_* (cost model)."""

    model: str
    runtime: str
    threads: int
    batch: int
    method: str  # how the graph was captured: "fx", "hooks" or "onnx"
    notice: str | None  # one line when the fx fallback (hooks) was used
    layers: list[LayerRow]
    total: dict
    measurement: str  # how measured numbers were measured
    prediction: object | None = None  # hwai.cost.Prediction when a target was given
    graph: Graph | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The documented `--json` schema (see README, "hwai profile")."""
        return {
            "schema": SCHEMA, "model": self.model, "runtime": self.runtime, "threads": self.threads,
            "batch": self.batch, "method": self.method, "notice": self.notice, "measurement": self.measurement,
            "prediction": self.prediction.describe() if self.prediction is not None else None,
            "target": ({"name": self.prediction.target, "file": str(self.prediction.target_file)}
                       if self.prediction is not None else None),
            "kinds": {"measured_ms": "measured", "peak_memory_bytes": "measured",
                      **({"predicted_ms": "predicted", "predicted_energy_uj": "predicted"} if self.prediction else {})},
            "layers": [{**asdict(r), "output_shape": list(r.output_shape)} for r in self.layers],
            "total": self.total,
        }


def _example(data: DataBundle | torch.Tensor, batch: int) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    if batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}")
    x = data.example(batch)
    if x.shape[0] < batch:  # a split smaller than the batch: repeat real samples
        x = x.repeat(-(-batch // x.shape[0]), *([1] * (x.dim() - 1)))[:batch]
    return x


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but handles any eager model
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"])


def _rewarm(cfg: measure.MeasureConfig) -> measure.MeasureConfig:
    """The latency harness has just warmed this model up in this process: two more warm-up runs suffice
    (new sessions and the fx interpreter still get them)."""
    return replace(cfg, warmup=min(cfg.warmup, 2))


def _measure_torch(model: torch.nn.Module, example: torch.Tensor, cfg: measure.MeasureConfig):
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or measure.physical_cores())
    try:  # memory first, before the timing loops have filled the allocator's caches
        with torch.inference_mode():
            peak = measure.peak_memory(lambda: model.eval()(example), runs=2)
    finally:
        torch.set_num_threads(previous)
    g = capture(model, example)
    lat = measure.latency(model, example, cfg, "torch")
    times = measure.torch_layer_times(model, example, g, _rewarm(cfg))
    return g, lat, times, peak


def _measure_onnx(path: Path, example: torch.Tensor, cfg: measure.MeasureConfig):
    from hwai.graph.onnx import capture_onnx

    g, aliases = capture_onnx(path, tuple(example.shape))
    session = measure.ort_session(path, cfg.threads)
    feed = {session.get_inputs()[0].name: example.numpy()}
    peak = measure.peak_memory(lambda: session.run(None, feed), runs=2)  # a fresh session: its arena grows here
    lat = measure.latency(path, example, cfg, "onnxruntime")
    times = measure.ort_layer_times(path, example, aliases, _rewarm(cfg))
    return g, lat, times, peak


def _target(target):
    """The Target to predict on, checked before anything is measured."""
    from hwai import targets

    target = targets.load(target) if isinstance(target, (str, Path)) else target
    if target.kind == "neuromorphic":
        raise UserError(f"{target.name} is a neuromorphic energy profile: it prices a spiking net's spikes "
                        "(hwai snn train/profile), not an ANN's layers; choose a cpu, gpu, mcu or npu target")
    return target


def _predict(graph: Graph, target) -> object:
    from hwai import cost  # helper B's cost model (issue 4)

    return cost.predict(graph, target)


def profile(model_or_onnx_path: torch.nn.Module | str | Path, data: DataBundle | torch.Tensor, target=None,
            runtime: str = "torch", cfg: measure.MeasureConfig = measure.MeasureConfig(), batch: int = 1,
            name: str | None = None) -> Profile:
    """Profile a torch model or an .onnx file on `data` (a DataBundle: `batch` real test inputs; or an example
    tensor). An .onnx file always runs in ONNX Runtime. `target` (name, YAML path or Target) adds predictions."""
    example = _example(data, batch).detach().float()
    target = _target(target) if target is not None else None
    if isinstance(model_or_onnx_path, (str, Path)):
        path, runtime = Path(model_or_onnx_path), "onnxruntime"
        if path.suffix != ".onnx":
            raise UserError(f"{path} is not an .onnx file; pass a torch model or an ONNX file")
        g, lat, times, peak = _measure_onnx(path, example, cfg)
        label, notice = name or path.name, None
    elif runtime == "torch":
        g, lat, times, peak = _measure_torch(model_or_onnx_path, example, cfg)
        label, notice = name or type(model_or_onnx_path).__name__, g.notice
    elif runtime == "onnxruntime":
        with tempfile.TemporaryDirectory(prefix="hwai_profile_") as tmp:
            _export(model_or_onnx_path, example, Path(tmp) / "model.onnx")
            g, lat, times, peak = _measure_onnx(Path(tmp) / "model.onnx", example, cfg)
        label, notice = name or type(model_or_onnx_path).__name__, None
    else:
        raise UserError(f"unknown runtime {runtime!r}: use {' or '.join(measure.RUNTIMES)}")
    prediction = _predict(g, target) if target is not None else None
    return _assemble(label, g, lat, times, peak, prediction, notice)


def _assemble(label: str, g: Graph, lat: measure.LatencyStats, times: measure.LayerTimes,
              peak: measure.MemoryStats | None,
              prediction, notice: str | None) -> Profile:
    predicted = {p.name: p for p in prediction.layers} if prediction is not None else {}
    summed = sum(times.layers.values())
    rows = []
    for n in g.nodes:
        ms = times.layers.get(n.name)
        p = predicted.get(n.name)
        rows.append(LayerRow(n.name, n.op, n.target, n.output_shape, n.dtype, n.params, n.macs, n.weight_bytes,
                             n.activation_bytes, n.fusion, ms, None if ms is None else 100 * ms / summed,
                             p.latency_ms if p else None, p.energy_uj if p else None, p.bound if p else None))
    total = {
        "params": g.params, "macs": g.macs, "weight_bytes": sum(n.weight_bytes for n in g.nodes),
        "activation_bytes": sum(n.activation_bytes for n in g.nodes),
        "measured_ms_median": lat.median_ms, "measured_ms_iqr": lat.iqr_ms, "measured_ms_min": lat.min_ms,
        "measured_repeats": lat.repeats, "measured_spread_note": lat.spread_note(),
        "measured_rounds": lat.rounds, "measured_round_spread": lat.round_spread,  # repeatability: rounds within +-x
        "sum_layers_ms": summed,  # per-layer times added up (profiled runs)
        "sum_over_median": summed / lat.median_ms,
        "interleaved_ms_median": times.interleaved_ms,  # plain whole runs alternated with the profiled runs
        "sum_over_interleaved": summed / times.interleaved_ms,
        "overhead_ms": lat.median_ms - summed,  # whole-model time no layer accounts for (negative: profiling inflated layers)
        "unmapped_ms": times.unmapped_ms,  # runtime kernels of no graph node, e.g. ORT layout transposes
        "profiled_ms_median": times.profiled_ms,  # whole run with the profiler on
        "profiler_overhead_ms": times.profiled_ms - lat.median_ms,
        "layer_runs": times.runs, "layer_runs_typical": times.typical,
        "peak_memory_bytes": peak.increase_bytes if peak else None,  # resident memory above the pre-run baseline
        "peak_rss_bytes": peak.peak_rss_bytes if peak else None,  # the whole process's peak while inference ran
    }
    if prediction is not None:
        total.update({"predicted_ms": prediction.latency_ms, "predicted_energy_mj": prediction.energy_mj,
                      "predicted_peak_activation_bytes": prediction.peak_activation_bytes,
                      "predicted_weight_bytes": prediction.weight_bytes,
                      "predicted_sram_bytes_needed": prediction.sram_bytes_needed,
                      "predicted_fits": prediction.fits, "predicted_fit_message": prediction.fit_message})
    measurement = (f"{lat.describe()}; per layer: {times.method}, mean of the {times.typical} of {times.runs} "
                   f"profiled runs whose total lies in the interquartile range")
    return Profile(label, lat.runtime, lat.threads, lat.batch, g.method, notice, rows, total, measurement,
                   prediction, g)


def module_of(onnx_node: str) -> str:
    """The module an exported ONNX node came from: '/layers/layers.0/layers.0.0/conv1/Conv' -> 'layers.0.0.conv1'
    (torch.onnx names nodes by their module scopes; quantize/dequantize nodes go to the layer they follow)."""
    name = ""
    for scope in onnx_node.strip("/").split("/")[:-1]:
        name = scope if not name or scope.startswith(name + ".") else f"{name}.{scope}"
    return name


def module_times(onnx_path: str | Path, data: DataBundle | torch.Tensor,
                 cfg: measure.MeasureConfig = measure.MeasureConfig()) -> dict[str, float]:
    """Measured ONNX Runtime time per torch module (ms, execution order) of an ONNX file exported by hwai:
    the file's per-layer profile summed by module, so an FP32 and an INT8 export line up row by row."""
    times: dict[str, float] = {}
    for layer in profile(onnx_path, data, cfg=cfg).layers:
        name = module_of(layer.name)
        if layer.measured_ms is not None and name:
            times[name] = times.get(name, 0.0) + layer.measured_ms
    return times


def merge_layers(rows: list[dict], series: dict[str, dict[str, float]]) -> list[dict]:
    """Rows of results.json `layers`: each row gets its time from every series {key: {module: ms}}; without
    rows (no cost-model prediction) one row per module in the series' execution order."""
    if not rows:
        rows = [{"name": name, "op": ""} for name in dict.fromkeys(n for times in series.values() for n in times)]
    return [{**r, **{key: times[r["name"]] for key, times in series.items() if r["name"] in times}} for r in rows]


def side_by_side(original: torch.nn.Module, original_onnx: Path, compressed: torch.nn.Module, compressed_onnx: Path,
                 precision: str, data: DataBundle, cfg: measure.MeasureConfig) -> dict:
    """results.json `layers` (measured ORT time per layer of the original FP32 and the compressed ONNX,
    side by side) and `memory` (live activation bytes of the compressed model over its execution order)."""
    from hwai import memory

    example = data.example(1)
    mcfg = replace(cfg, layer_runs=10)
    series = {"fp32_measured_ms": module_times(original_onnx, data, mcfg),
              ("compressed_fp32" if precision == "fp32" else precision) + "_measured_ms":
                  module_times(compressed_onnx, data, mcfg)}
    nodes = [{"name": n.name, "op": n.op} for n in capture(original, example).nodes]
    rows = [r for r in merge_layers(nodes, series) if any(k in r for k in series)]
    # live activations of the compressed model at its precision (int8 buffers when quantized): layer by layer, as an
    # in-place arena plan, and the best patch plan's peak (hwai.memory; predicted, no target SRAM in compress)
    return {"layers": rows, "memory": memory.report(memory.capture(compressed, example),
                                                    "int8" if precision != "fp32" else "fp32")}
