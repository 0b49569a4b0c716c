"""Which patch plan to ship on TensorFlow Lite Micro: hwai.memory's plans, scored by the arena TFLM will need.

hwai.memory's `best_plan` minimises the peak of its own arena model (in-place depthwise convolutions, no
per-model overhead). TFLite Micro runs a patch plan as two phases in one arena, and neither has in-place
kernels: while the tiles run, the stage-output buffer + the whole input image + one tile model's arena (its
input tile, activations and persistent data); then the stage-output buffer + the rest model's arena, whose
persistent data (tensor structs, per-channel requantization) is most of the whole model's. When the rest phase
is the larger one, a finer grid lowers nothing and costs halo MACs; when the rest holds a wide early layer, a
later split helps more than any grid. Scoring every split point and grid with TFLM's two phases and taking the
fewest halo MACs within `tolerance` of the lowest predicted arena is how hwai trades the patches' extra MACs
for memory here (MCUNetV2 redistributes the receptive field instead, which changes and retrains the network).

Predicted (kind "predicted"): the phases from hwai.memory plans without in-place execution, plus the tile models'
input tile and padded copy (a border tile pads its conv's input explicitly), the rest's persistent bytes taken as
the whole model's (measured by TFLM on the whole model); the PAD copies the converter inserts in the rest for
PyTorch's padding of strided convs are not modelled (the measured arenas say how far off that is).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hwai import memory
from hwai.graph import Graph
from hwai.memory import Plan
from hwai.memory.patch import need
from hwai.runtimes.tflm_patch.pieces import boxes, input_box

ALIGN = 16  # TFLite Micro aligns arena buffers to 16 bytes


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class Choice:
    """A patch plan scored for TFLite Micro."""

    split: str | None  # last node of the patch stage (None: no patches)
    grid: int
    extra_macs: int  # halo recomputation
    stage_bytes: int  # predicted arena while the tiles run: stage output + input image + a tile model's arena
    rest_bytes: int  # predicted arena while the rest runs: stage output + the rest model's arena
    kind: str = "predicted"

    @property
    def arena_bytes(self) -> int:
        return max(self.stage_bytes, self.rest_bytes)


def predict(graph: Graph, plan: Plan, tail_bytes: int) -> Choice:
    """TFLite Micro's two phases for a patch plan of `graph` (int8, input counted): see the module docstring.
    `tail_bytes`: persistent bytes of the rest model (the whole model's, measured, is a close upper bound)."""
    if plan.split is None:
        return Choice(None, 1, 0, 0, max(plan.live_bytes) + tail_bytes)
    stage = max(b for s, b in zip(plan.steps, plan.live_bytes) if s.patch is not None)
    rest = max((b for s, b in zip(plan.steps, plan.live_bytes) if s.patch is None), default=0)
    channels = graph.input_shape[1]
    tile_input = 0
    for r in range(plan.grid):
        for c in range(plan.grid):
            y0, y1, x0, x1 = input_box(graph, boxes(plan, r, c))
            tile_input = max(tile_input, channels * (y1 - y0) * (x1 - x0))  # TFLM copies the tile into its arena
    split_bytes = aligned(math.prod(plan.split_shape))
    stage += tile_input + _padded_copy(graph, plan)
    return Choice(plan.split, plan.grid, plan.extra_macs, stage, split_bytes + rest + tail_bytes)


def _padded_copy(graph: Graph, plan: Plan) -> int:
    """What the largest padded copy adds to a tile model's peak: a tile's conv or pool that reaches past the image is
    fed an explicitly padded copy of its input (TFLite has no one-sided padding), live with that input where the
    plan holds the input and the op's output."""
    worst = 0
    for r in range(plan.grid):
        for c in range(plan.grid):
            for name, box in boxes(plan, r, c).items():
                node = graph[name]
                if node.attrs.get("local") != "window":
                    continue
                y0, y1, x0, x1 = need(node, box)
                source = graph[node.inputs[0]].output_shape if node.inputs else graph.input_shape
                if min(y0, x0) < 0 or y1 > source[2] or x1 > source[3]:  # planned: input + output; run: + copy
                    out = node.output_shape[1] * (box[1] - box[0]) * (box[3] - box[2])
                    worst = max(worst, source[1] * (y1 - y0) * (x1 - x0) - out)
    return worst


def choose(graph: Graph, tail_bytes: int, tolerance: float = 0.05, grids: tuple[int, ...] = (2, 3, 4, 5, 6, 8),
           max_extra: float = 0.3) -> Choice:
    """The fewest halo MACs among the (split, grid) plans whose predicted TFLite Micro arena is within `tolerance`
    of the lowest (no patches is a candidate too). Plans whose halos add more than `max_extra` of the model's MACs
    are not considered: the latency a patch plan may cost.
    `graph`: hwai.memory.capture's graph of the float model."""
    order = memory.best_order(graph)
    whole = predict(graph, memory.plan(graph, "int8", inplace=False, order=order), tail_bytes)
    scored = [whole]
    for split in memory.split_points(graph, order):
        side = min(graph[split].output_shape[-2:])
        for grid in sorted(g for g in grids if g <= side):
            plan = memory.plan(graph, "int8", inplace=False, split=split, grid=grid, order=order)
            if plan.extra_macs > max_extra * graph.macs:
                break  # finer grids only add halo
            scored.append(predict(graph, plan, tail_bytes))
    low = min(c.arena_bytes for c in scored)
    return min((c for c in scored if c.arena_bytes <= low * (1 + tolerance)), key=lambda c: (c.extra_macs, c.arena_bytes))
