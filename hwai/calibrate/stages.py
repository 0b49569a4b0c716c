"""Pipeline stages as calibration cases: a zoo model cut in two before a random conv or linear layer (never
inside a Conv+BN+ReLU group), each part a model of its own with its own inputs and outputs, as `hwai shard run`
runs a stage: a cut inside a residual block makes two tensors cross it (the second part then has two inputs).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn


def _part(gm: fx.GraphModule, inputs: list[fx.Node], body: list[fx.Node], outputs: list[fx.Node]) -> fx.GraphModule:
    """The nodes `body` of `gm` as a module of their own: `inputs` become its arguments, `outputs` its results."""
    graph = fx.Graph()
    env = {n: graph.placeholder(f"x{i}") for i, n in enumerate(inputs)}
    for n in body:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(tuple(env[o] for o in outputs) if len(outputs) > 1 else env[outputs[0]])
    return fx.GraphModule(gm, graph)


def split(model: nn.Module, example: torch.Tensor, seed: int) -> tuple[tuple[nn.Module, tuple], ...]:
    """((first part, its inputs), (second part, its inputs)) of `model` cut before a random conv or linear layer
    (seeded; the first layer excluded)."""
    gm = fx.symbolic_trace(model.eval())
    nodes = list(gm.graph.nodes)
    modules = dict(gm.named_modules())
    cuts = [i for i, n in enumerate(nodes)
            if n.op == "call_module" and isinstance(modules[n.target], (nn.Conv2d, nn.Linear))]
    at = cuts[1:] or cuts
    i = int(at[np.random.default_rng(seed).integers(len(at))])
    before, after = nodes[:i], nodes[i:]
    later = set(after)
    crossing = [n for n in before if any(u in later for u in n.users)]
    result = nodes[-1].args[0]
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    first = _part(gm, [n for n in before if n.op == "placeholder"], [n for n in before if n.op != "placeholder"],
                  crossing)
    second = _part(gm, crossing, [n for n in after if n.op != "output"], outputs)
    with torch.no_grad():
        mid = first(example)
    return (first, (example,)), (second, mid if isinstance(mid, tuple) else (mid,))
