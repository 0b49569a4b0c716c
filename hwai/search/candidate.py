"""The stages one candidate goes through after cost-model screening (hwai.search.screen):

1. `realize`: the real candidate: baseline weights (or a fresh init for a new architecture), prune,
   fine-tune / train with distillation from the baseline, fuse, quantize;
2. `measure_host`: export to ONNX and time it with ONNX Runtime on this machine (measured);
3. `val_accuracy`: accuracy on the validation split of what ships: the exported INT8 ONNX model on
   ONNX Runtime for a quantized candidate, the PyTorch model for a float one; with its sample count, 95%
   interval and every sample's outcome (the accuracy-drop limit pairs them with the baseline's).
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hwai import graph as hgraph
from hwai import measure
from hwai.data import DataBundle
from hwai.models import ModelSpec, build
from hwai.passes import DistillConfig, FuseConfig, PassContext, PruneConfig, QuantConfig, apply, in_order
from hwai.search.space import BITS_DTYPE, Candidate
from hwai.train import default_augmentation

PARITY_SAMPLES = 256  # real inputs on which the exported ONNX must agree with PyTorch (hwai.runtimes.export.parity)
FINETUNE_LR = 5e-4  # fine-tuning from the baseline's weights: a quarter of AdamW's default peak rate


class AtResolution(nn.Module):
    """Feeds a teacher its own input resolution, so it can distil into a student at another one."""

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.size = model, tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.model(x)


def data_at(bundle: DataBundle, spec: ModelSpec) -> DataBundle:
    """The same data at the candidate's input resolution."""
    if bundle.image_size is None or tuple(bundle.image_size) == tuple(spec.input_size):
        return bundle
    return dataclasses.replace(bundle, input_size=tuple(spec.input_size))


def _prune_config(cand: Candidate) -> list:
    return [PruneConfig(ratio=0.0, structured=True, per_layer=dict(cand.prune))] if cand.prune else []


def finish_configs(cand: Candidate) -> list:
    """The post-training passes of a candidate, in pipeline order: fuse, then quantize."""
    return in_order(([FuseConfig()] if cand.fuse else [])
                    + ([QuantConfig(bits=8, per_layer=dict(cand.bits))] if cand.quantized else []))


def structure(cand: Candidate, example: torch.Tensor) -> nn.Module:
    """The candidate's shapes on untrained weights (its pruned architecture): enough to plan its memory."""
    return apply(build(cand.spec).eval(), _prune_config(cand), PassContext(None, example)).eval()


def node_precision(graph: hgraph.Graph, bits: dict[str, int]) -> dict[str, str]:
    """Every node's dtype: a weighted layer's own bits; other nodes inherit the last weighted layer's
    (in a quantized deployment the activations between quantized layers stay quantized)."""
    out, current = {}, "fp32"
    for node in graph.nodes:
        if node.name in bits:
            current = BITS_DTYPE[bits[node.name]]
        out[node.name] = current
    return out


def predict(graph: hgraph.Graph, targets: list, cand: Candidate, threads: dict[str, int] | None = None) -> dict:
    """Cost-model predictions with a per-layer breakdown of a built candidate (`graph`: its pruned float
    model, unfused: the cost model fuses Conv+BN+ReLU as the target's runtime does) on each target
    (`threads`: target name -> the thread count its latency is for)."""
    from hwai import cost

    precision = node_precision(graph, cand.bits)
    threads = threads or {}
    return {t.name: cost.predict(graph, t, precision=precision, threads=threads.get(t.name)) for t in targets}


def realize(cand: Candidate, baseline: nn.Module, base_spec: ModelSpec, data: DataBundle,
            seed: int = 0, start: nn.Module | None = None) -> tuple[nn.Module, nn.Module]:
    """Build, prune, train with distillation from `baseline`, fuse and quantize the candidate.
    `start`: the weights it starts from (a supernet's subnet); default the baseline's for the same architecture,
    else a fresh init. Returns (the trained float model, before fusion and quantization; the final candidate)."""
    bundle = data_at(data, cand.spec)
    example = bundle.example(2)
    if start is not None:
        model = copy.deepcopy(start)
    else:
        model = copy.deepcopy(baseline) if cand.same_architecture else build(cand.spec)
    teacher = AtResolution(baseline, base_spec.input_size) if data.image_size else baseline
    tune = DistillConfig(epochs=cand.epochs, lr=FINETUNE_LR if cand.same_architecture else None,
                         warmup_epochs=0.0 if cand.same_architecture else 0.5, seed=seed, alpha=0.7, temperature=4.0,
                         **default_augmentation(cand.spec.name, bundle))
    model = apply(model, _prune_config(cand) + [tune], PassContext(bundle, example, teacher=teacher))
    return model, finish(copy.deepcopy(model), cand, bundle)


def finish(model: nn.Module, cand: Candidate, bundle: DataBundle) -> nn.Module:
    """The post-training passes (fuse, then quantize calibrated on `bundle`) on the trained float model."""
    return apply(model.eval(), finish_configs(cand), PassContext(bundle, bundle.example(2))).eval()


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, calib: DataBundle, int8: bool = False) -> Path:
    """The candidate as ONNX (atomically): FP32, or INT8 QDQ (INT4 weights where asked) when quantized."""
    from hwai.runtimes import export

    return export.to_onnx(model, example, path, int8=int8, calib=calib if int8 else None)


def measure_host(model: nn.Module, bundle: DataBundle, path: Path, cfg: measure.MeasureConfig,
                 int8: bool = False) -> tuple[dict, measure.LatencyStats]:
    """Export to `path` and measure: ONNX file size, ONNX Runtime latency at batch 1, and whether the
    artifact agrees with PyTorch (a candidate whose export disagrees is not deployable)."""
    example = bundle.example(1)
    export_onnx(model, example, path, bundle, int8=int8)
    stats = measure.latency(path, example, cfg, runtime="onnxruntime")
    check = parity(model, path, bundle.example(PARITY_SAMPLES, split="val"))
    return {"host_latency_ms": stats.median_ms, "host_latency_iqr_ms": stats.iqr_ms, "host_threads": stats.threads,
            "host_runtime": "onnxruntime", "host_feedback_ms": stats.median_ms,
            "size_kb": path.stat().st_size / 1024, "parity_ok": check["ok"], "parity_reason": check["reason"],
            "parity_top1_agreement": check["top1_agreement"]}, stats


def val_accuracy(model: nn.Module, onnx_path: Path, bundle: DataBundle, quantized: bool, threads: int,
                 runtime: str = "onnxruntime", artifact: Path | None = None) -> dict:
    """Validation accuracy of what ships: a quantized candidate's exported INT8 artifact on the runtime it ships
    on (ONNX Runtime unless the deployment search chose another; its PyTorch fake-quant accuracy kept beside it),
    a float candidate's PyTorch model (every artifact agrees with it within the parity check). Each with its sample
    count, Wilson 95% interval and per-sample outcomes (hwai.measure.accuracy.Accuracy.fields)."""
    from hwai.measure.accuracy import score
    from hwai.runtimes.deployment import scored

    simulated = score(model, bundle, "val")
    if not quantized:
        return {**simulated.fields(outcomes=True), "accuracy_source": "pytorch"}
    shipped = artifact if artifact is not None and runtime != "onnxruntime" else onnx_path
    return {**scored(runtime, shipped, bundle, threads, split="val").fields(outcomes=True),
            "accuracy_fake_quant": simulated.value, "accuracy_source": f"{runtime} (exported INT8 model)"}


def parity(model: nn.Module, onnx_path: Path, inputs: torch.Tensor) -> dict:
    """ONNX Runtime vs PyTorch on real inputs (hwai.runtimes.export.parity): max |logit diff|, top-1 agreement, ok."""
    from hwai.runtimes import export

    with torch.inference_mode():
        return export.parity(model, onnx_path, inputs).to_dict()


def patch_plan(cand: Candidate, graph) -> tuple[str | None, int]:
    """The candidate's patch plan on `graph` (hwai.memory.capture's): (split node, grid), (None, 1) without patches."""
    from hwai import memory

    if not cand.patch:
        return None, 1
    points = memory.split_points(graph)
    if not points:
        return None, 1
    split = points[max(0, round(cand.patch[0] * len(points)) - 1)]
    grid = min(cand.patch[1], min(graph[split].output_shape[-2:]))  # no more patches than the split's output has rows
    return (split, grid) if grid > 1 else (None, 1)


def planned_memory(cand: Candidate, model: nn.Module, example: torch.Tensor, target, latency_ms: float,
                   weight_bytes: float) -> dict:
    """On a microcontroller target: the peak SRAM of the runtime's arena plan (buffers placed in one arena, in place
    where legal, int8 buffers for int8 layers; patch by patch for the first stage when the candidate says so) instead
    of the layer-by-layer peak, and the target latency with the patches' halo recomputation (hwai.memory; predicted).
    `latency_ms`, `weight_bytes`: the cost model's for the candidate on `target`. Empty for other targets."""
    if target is None or target.kind != "mcu":
        return {}
    from hwai import cost, memory

    graph = memory.capture(model.eval(), example)
    precision = node_precision(graph, cand.bits)
    split, grid = patch_plan(cand, graph)
    plan = memory.plan(graph, precision, split=split, grid=grid)
    latency = latency_ms
    if split is not None:
        plain_ms, patched_ms = cost.patch_latency(graph, plan, target)
        latency *= patched_ms / plain_ms
    weights = weight_bytes
    sram = plan.arena_bytes + (weights if target.weights_in == "sram" else 0)
    message = cost.fit_message(target, sram, weights, plan.arena_bytes)
    return {"target_latency_ms": latency, "peak_sram_kb": sram / 1024, "fits": message.startswith("fits"),
            "fit_message": message, "peak_layer_by_layer_kb": plan.layer_by_layer_bytes / 1024,
            "patch_split": split, "patch_grid": grid if split else None, "patch_extra_macs": plan.extra_macs}
