"""Write the patch bundle: the whole model quantized once (litert-torch PT2E int8), cut into tile models and the
rest (hwai.runtimes.tflm_patch.cut / pieces), each converted to an int8 .tflite, each one's arena measured by
TensorFlow Lite Micro, the C glue and its plan header, and bundle.json + README.md saying what was measured
and what predicted. A stage the tile models cannot express falls back to the whole-model bundle
(hwai.runtimes.tflm), its bundle.json and README saying why.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hwai import io
from hwai.errors import UserError
from hwai.runtimes import litert, tflm
from hwai.runtimes.common import artifact_name, float_model, one_input, pt2e_int8, silenced
from hwai.runtimes.tflm_patch import csource
from hwai.runtimes.tflm_patch.scoring import aligned, choose, predict

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hwai.data import DataBundle

META, README = tflm.META, tflm.README
WHOLE = artifact_name(True, ".tflite")  # the whole model, channels-last input: the reference the patch run equals


@dataclass
class PatchBundle:
    """What `export` wrote: `meta` is bundle.json; `fallback` says why the bundle holds the whole model instead."""

    out_dir: Path
    meta: dict = field(default_factory=dict)
    fallback: str | None = None

    @property
    def patched(self) -> bool:
        return self.fallback is None


def to_tflite(module, example: torch.Tensor, options: dict, channels_last_output: bool) -> bytes:
    """An int8 .tflite of a (quantized) fx module with a channels-last (NHWC) input, and output when asked: the
    glue copies tiles as rows of NHWC, so no model transposes its input."""
    import litert_torch

    wrapped = litert_torch.to_channel_last_io(module, args=[0], outputs=[0] if channels_last_output else [])
    with silenced(), tempfile.TemporaryDirectory() as tmp:
        edge = litert_torch.convert(wrapped, (example.permute(0, 2, 3, 1).contiguous(),), **options)
        edge.export(str(Path(tmp) / "m.tflite"))
        return (Path(tmp) / "m.tflite").read_bytes()


def measure(data: bytes) -> dict:
    """TFLite Micro on this model: the smallest arena AllocateTensors succeeds in (bisected, as the whole-model
    bundle measures it) and the recorder's head / tail split."""
    upper = max(16 * len(data), 1 << 22)
    while True:
        try:
            parts = tflm.allocations(data, upper)
            break
        except UserError as exc:  # too small an arena to start the bisection from: a larger one
            if "allocate" not in str(exc) or upper >= 1 << 31:
                raise
            upper *= 4
    return {"arena_bytes": tflm.measured_arena_bytes(data, upper), **{f"{k}_bytes": v for k, v in parts.items()}}


def export(model: nn.Module, example: torch.Tensor, out_dir: str | Path, calib: DataBundle, split: str | None = None,
           grid: int | None = None, tolerance: float = 0.05) -> PatchBundle:
    """Write the patch bundle of `model` into out_dir (int8, one example row's shape). split / grid: the patch plan
    (a split point of hwai.memory.capture's graph and an n x n grid); None: chosen for TFLite Micro's arena
    (hwai.runtimes.tflm_patch.scoring.choose, within `tolerance` of the lowest). A stage the tile models cannot
    express, or no plan at all, writes the whole-model bundle with the reason in bundle.json."""
    from hwai import memory
    from hwai.runtimes.tflm_patch import cut

    litert.check()
    tflm.check()
    if (split is None) != (grid is None):
        raise UserError("a patch plan needs both split and grid (or neither: hwai chooses)")
    out_dir, example = Path(out_dir), one_input(example)
    graph = memory.capture(float_model(model), example)
    quantizer, options = litert.int8_quantizer()
    q = pt2e_int8(model, example, calib, quantizer, fold=False)
    ctx = {"graph": graph, "requantized_edges": cut.requantize_skips(q), "chosen": None, "tolerance": tolerance}
    qg = cut.qgraph(q)
    if split is None:
        _whole(ctx, q, example, options)
        ctx["chosen"] = choose(graph, ctx["whole_arena"]["tail_bytes"], tolerance)
        split, grid = ctx["chosen"].split, ctx["chosen"].grid
        if split is None:
            return _fallback(model, example, out_dir, calib, "no patch plan lowers the predicted TensorFlow Lite "
                             "Micro arena below the whole model's", None, None)
    try:
        pieces = _cut(qg, graph, split, grid)
        _whole(ctx, q, example, options)
        models, blobs = _convert(pieces, options)
    except cut.Inexpressible as exc:
        return _fallback(model, example, out_dir, calib, str(exc), split, grid)
    return _files(out_dir, _meta(qg, pieces, models, blobs, split, grid, ctx), blobs, ctx["whole"])


def _whole(ctx: dict, q, example, options: dict) -> None:
    """The whole quantized model as .tflite (channels-last input) and its arena, measured, into ctx (once)."""
    if "whole" not in ctx:
        ctx["whole"] = to_tflite(q, example, options, channels_last_output=False)
        ctx["whole_arena"] = measure(ctx["whole"])


def _fallback(model, example, out_dir: Path, calib, why: str, split: str | None, grid: int | None) -> PatchBundle:
    """The whole-model bundle (hwai.runtimes.tflm), its bundle.json and README saying why there are no patches."""
    tflm.export(model, example, out_dir, int8=True, calib=calib)
    meta = json.loads((out_dir / META).read_text())
    meta["patch"] = {"split": split, "grid": grid, "fallback": why}
    io.write_json(out_dir / META, meta)
    io.write_text(out_dir / README, (out_dir / README).read_text() + f"\nNo patch-based inference here: {why}.\n")
    return PatchBundle(out_dir, meta, why)


@dataclass
class _Pieces:
    """A patch plan cut out of the quantized graph, before conversion."""

    split: str  # the split's node in the quantized graph
    qplan: object  # hwai.memory plan of the quantized graph
    tiles: list  # pieces.Tile
    modules: list  # fx modules: tile models, then the rest
    examples: list  # an input of each module's shape (NCHW)


def _cut(qg, graph, float_split: str, grid: int) -> _Pieces:
    """Tile and rest modules for the plan (float_split, grid) of the float graph; Inexpressible when the stage has
    an op the tile models cannot express."""
    import torch

    from hwai import memory
    from hwai.runtimes.tflm_patch import cut, pieces

    split = cut.locate(qg, graph, float_split)
    try:
        qplan = memory.plan(qg.graph, "int8", split=split, grid=grid)
    except UserError as exc:
        odd = _first_non_local(qg.graph, split)
        if odd is None:
            raise
        raise cut.Inexpressible(odd.target, f"node {odd.name} of the quantized graph has no tile form (a patch "
                                "stage holds convolutions, pools and pointwise ops)") from exc
    tiles, reps = pieces.plan_tiles(qg, split, qplan)
    modules = [pieces.tile_module(qg, split, own, box) for own, box in reps] + [pieces.rest_module(qg, split)]
    examples = [torch.zeros(1, qg.input_shape[1], box[1] - box[0], box[3] - box[2]) for _, box in reps]
    return _Pieces(split, qplan, tiles, modules, examples + [torch.zeros(qg.graph[split].output_shape)])


def _first_non_local(graph, split: str):
    """The first node the split depends on that is not a spatially local op (hwai.memory's `local` mark), or None."""
    ancestors, todo = set(), [split]
    while todo:
        name = todo.pop()
        if name not in ancestors:
            ancestors.add(name)
            todo.extend(graph[name].inputs)
    return next((n for n in graph.nodes if n.name in ancestors and not n.attrs.get("local")), None)


def _convert(pieces: _Pieces, options: dict) -> tuple[list[dict], list[bytes]]:
    """Each module as an int8 .tflite (tile models with channels-last output) and its description with the arena
    TFLite Micro measured; Inexpressible naming the op when TFLite Micro cannot run one."""
    from hwai.runtimes.tflm_patch import cut

    described, blobs = [], []
    last = len(pieces.modules) - 1
    for k, (module, example) in enumerate(zip(pieces.modules, pieces.examples)):
        data = to_tflite(module, example, options, channels_last_output=k < last)
        entry = {"file": f"tile_{k}.tflite", "array": f"g_hwai_tile_{k}", "input_hw": list(example.shape[2:])} \
            if k < last else {"file": "rest.tflite", "array": "g_hwai_rest"}
        try:
            entry.update(bytes=len(data), **measure(data))
        except UserError as exc:  # TFLite Micro has no kernel for an op the converter chose
            op = str(exc).split("opcode '")[1].split("'")[0] if "opcode '" in str(exc) else entry["file"]
            raise cut.Inexpressible(op, str(exc)) from None
        described.append(entry)
        blobs.append(data)
    return described, blobs


def _meta(qg, pieces: _Pieces, models: list[dict], blobs: list[bytes], float_split: str, grid: int, ctx: dict) -> dict:
    """bundle.json: the plan, the tiles, the models, the arena measured and predicted, the MACs, the choice."""
    from hwai import memory

    graph, split, whole = ctx["graph"], pieces.split, ctx["whole_arena"]
    stage_shape = qg.graph[split].output_shape
    tile_arena, rest_arena = max(m["arena_bytes"] for m in models[:-1]), models[-1]["arena_bytes"]
    layout = {"stage_region": aligned(math.prod(stage_shape)), "input_region": aligned(math.prod(qg.input_shape))}
    plan = memory.plan(graph, "int8", split=float_split, grid=grid)
    predicted = predict(graph, memory.plan(graph, "int8", inplace=False, split=float_split, grid=grid),
                        whole["tail_bytes"])
    return {
        "kind": "patch", "model": WHOLE, "whole_bytes": len(ctx["whole"]),
        "converter": "litert-torch (PT2E int8, quantized once, then cut)",
        "requantized_edges": ctx["requantized_edges"], "split": float_split, "split_quantized_graph": split,
        "grid": grid, "tiles": [[t.model, *t.in_box, *t.out_box] for t in pieces.tiles], "models": models,
        "input": {"shape": [1, *qg.input_shape[2:], qg.input_shape[1]], **_qparams(qg.input_quant)},
        "stage": {"shape": [1, *stage_shape[2:], stage_shape[1]], **_qparams(qg.quant[split])},
        "output": _output(blobs[-1], rest_arena),
        "arena": {"kind": "measured", "bytes": layout["stage_region"] + max(layout["input_region"] + tile_arena,
                                                                            rest_arena),
                  **layout, "tile_arena_bytes": tile_arena, "rest_arena_bytes": rest_arena,
                  "whole_model_bytes": whole["arena_bytes"], "whole_model_tail_bytes": whole["tail_bytes"],
                  "input_counted": True,
                  "by": "TensorFlow Lite Micro (tflite-micro Python package, reference kernels): the smallest arena "
                        "each model's AllocateTensors succeeds in"},
        "predicted": {"kind": "predicted", "planner_patch_arena_bytes": plan.arena_bytes,
                      "planner_layer_by_layer_bytes": plan.layer_by_layer_bytes,
                      "tflm_stage_phase_bytes": predicted.stage_bytes, "tflm_rest_phase_bytes": predicted.rest_bytes},
        "macs": {"model": graph.macs, "patch": plan.macs, "extra": plan.extra_macs,
                 "extra_quantized_graph": pieces.qplan.extra_macs},
        "choice": _choice(ctx, graph),
    }


def _choice(ctx: dict, graph) -> dict:
    """How the plan was chosen, beside hwai.memory's own choice (its lowest peak, in place)."""
    from hwai import memory

    chosen = ctx["chosen"]
    planner = memory.best_plan(graph, "int8")
    return {"by": "given" if chosen is None else f"hwai.runtimes.tflm_patch.choose (tolerance {ctx['tolerance']:g})",
            "planner_split": planner.split, "planner_grid": planner.grid, "planner_extra_macs": planner.extra_macs}


def _output(data: bytes, arena_bytes: int) -> dict:
    """Shape, dtype, scale and zero point of a model's output, as TFLite Micro reads them."""
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    detail = runtime.Interpreter.from_bytes(data, arena_size=arena_bytes).get_output_details(0)
    q = detail["quantization_parameters"]
    return {"shape": [int(d) for d in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(q["scales"][0]), "zero_point": int(q["zero_points"][0])}


def _qparams(quant) -> dict:
    """dtype, scale and zero point of a quantize node's value."""
    return {"dtype": "int8", "scale": float(quant.args[1]), "zero_point": int(quant.args[2])}


def _files(out_dir: Path, meta: dict, blobs: list[bytes], whole: bytes) -> PatchBundle:
    """Models, C sources, bundle.json and README into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry, data in zip(meta["models"], blobs):
        io.atomic_write(out_dir / entry["file"], lambda tmp, d=data: Path(tmp).write_bytes(d))
    io.atomic_write(out_dir / WHOLE, lambda tmp: Path(tmp).write_bytes(whole))
    meta["resolver"] = list(dict.fromkeys(c for e in meta["models"] for c in tflm.resolver_calls(out_dir / e["file"])))
    for name, text in csource.generated(meta, blobs).items():
        io.write_text(out_dir / name, text)
    for name in csource.STATIC:
        shutil.copyfile(csource.template(name), out_dir / name)
    io.write_json(out_dir / META, meta)
    io.write_text(out_dir / README, csource.readme(meta))
    return PatchBundle(out_dir, meta)
