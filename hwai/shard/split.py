"""Cut a model into pipeline stages with torch.distributed.pipelining at a plan's cut positions.

A model torch.fx traced (the captured graph's method "fx") gets a `pipe_split()` after the last node before
each cut, so any cut works, including after a function (a residual add); `pipeline()` then exports it and
splits it into stage modules. A model captured with module hooks is split at module boundaries with
`split_spec={module: SplitPoint.END}` (the documented torch API), which needs a module called once.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from hwai.errors import UserError
from hwai.graph import Graph, fx_labels


class _Root(nn.Module):
    """A plain module around the traced GraphModule: torch.export cannot unflatten a GraphModule root when
    pipeline() splits it ("Cannot add placeholder ... to root module"), a wrapper works."""

    def __init__(self, traced: nn.Module):
        super().__init__()
        self.traced = traced

    def forward(self, *args):
        return self.traced(*args)


def cut_names(graph: Graph, positions: list[int]) -> list[str]:
    """The node after which each cut falls (positions strictly inside the graph)."""
    n = len(graph.nodes)
    if any(not 0 < k < n for k in positions) or list(positions) != sorted(set(positions)):
        raise UserError("a pipeline needs increasing cut positions strictly inside the graph "
                        "(every stage runs at least one layer)")
    return [graph.nodes[k - 1].name for k in positions]


def _traced_with_splits(model: nn.Module, graph: Graph, names: list[str]):
    """The fx trace of `model` with a `pipe_split()` after each named node. Every tensor crossing a split goes
    through `.contiguous()` first: stages exchange plain buffers (gloo sends contiguous tensors, and the receiver
    allocates its buffer with the traced strides, channels-last included). A model input read after a split is
    cloned in stage 0, since torch.distributed.pipelining feeds the inputs to stage 0 only."""
    from torch.distributed.pipelining import pipe_split
    from torch.fx import symbolic_trace

    traced = symbolic_trace(model)
    labels = fx_labels(traced)
    known = {n.name for n in graph.nodes}
    nodes = list(traced.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    by_label = {labels[n.name]: n for n in nodes if n.name in labels}
    tensors = [n for n in nodes if n.op == "placeholder" or labels.get(n.name) in known]
    current = {n: n for n in tensors}  # the node that now carries each tensor (its latest contiguous copy)
    for name in names:
        after = pos[by_label[name]]
        with traced.graph.inserting_after(by_label[name]):
            marker = traced.graph.call_function(pipe_split, ())
        for n in tensors:
            value = current[n]
            later = [u for u in value.users if pos.get(u, -1) > after]
            if pos[n] > after or not later:
                continue
            with traced.graph.inserting_before(marker):  # the input is copied: only stage 0 may read root inputs
                copy_ = (traced.graph.call_function(torch.clone, (value,), {"memory_format": torch.contiguous_format})
                         if value.op == "placeholder" else traced.graph.call_method("contiguous", (value,)))
            for user in later:
                user.replace_input_with(value, copy_)
            current[n] = copy_
    traced.recompile()
    return traced


def split(model: nn.Module, graph: Graph, positions: list[int], example: torch.Tensor):
    """A `torch.distributed.pipelining.Pipe` of `model` (eval mode) with one stage per part; `example` is one
    micro-batch."""
    from torch.distributed.pipelining import SplitPoint, pipeline

    names = cut_names(graph, positions)
    model = copy.deepcopy(model).eval()
    example = example.clone(memory_format=torch.contiguous_format)  # strides of size-1 dims too
    if graph.method == "fx":
        return pipeline(_Root(_traced_with_splits(model, graph, names)).eval(), (example,))
    modules = dict(model.named_modules())
    spec = {}
    for name in names:
        if name not in modules or "#" in name:
            raise UserError(f"cannot cut after {name!r}: a model torch.fx cannot trace is split at module "
                            "boundaries, after a module called exactly once")
        spec[name] = SplitPoint.END
    try:
        return pipeline(model, (example,), split_spec=spec)
    except RuntimeError as exc:
        raise UserError(f"torch.distributed.pipelining cannot split this model: {str(exc).splitlines()[0]}") from None
