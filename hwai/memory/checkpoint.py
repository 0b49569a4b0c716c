"""Training under an activation-memory budget: `torch.utils.checkpoint` placed on the submodules where it frees
the most memory per second of recomputation (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"),
until the predicted peak fits the budget.

Activation memory here is the tensors autograd saves for backward (parameters and buffers excluded). One profiled
forward records, with saved-tensor hooks, which tensor each submodule saves and how long its forward takes.
Checkpointing a submodule drops the tensors saved only inside it and keeps its inputs instead; in backward it
recomputes everything it saves (its output too, as a new tensor), while the tensors saved before it are still
held. So the predicted peak of a set C is
    max(kept, max over m in C of (kept before m starts + m's inputs + what m saves))
For a budget B the planner adds, greedily, the submodule that drops the most kept bytes per second of recomputed
forward among those whose recomputation fits B (it may replace checkpointed parts of itself), until the kept bytes
fit B; without a budget it bisects for the lowest B it meets. The profile's bytes are exact: measured and
predicted peaks agree (tests/test_memory_checkpoint.py).

Measured (`measure`): the peak of saved-tensor bytes over forward and backward (hooks count what forward saves
and backward frees; during each recomputation the storages it makes and checkpoint keeps are added), peak resident
memory over the step (recomputation, activation gradients and kernel workspace included), and step time.
Batch norm running statistics are restored after each recomputation, so they are updated once per step as
without checkpoints, and gradients equal plain training's.
"""
from __future__ import annotations

import contextlib
import statistics
import time
import traceback
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from hwai.errors import UserError
from hwai.graph import tensors
from hwai.memory.rss import peak_rss


@dataclass(frozen=True)
class Candidate:
    """A submodule that could be checkpointed, as profiled."""

    name: str
    start: int  # index of the first tensor saved during its forward (in save order)
    end: int  # one past the last
    inputs: tuple[int, ...]  # storages of its tensor inputs
    forward_s: float  # measured forward time: the cost of recomputing it


@dataclass(frozen=True)
class CheckpointPlan:
    """Which submodules to checkpoint, and the activation memory predicted with and without (kind "predicted")."""

    modules: tuple[str, ...]  # submodule names, in forward order
    budget_bytes: int | None
    baseline_bytes: int  # saved activations without checkpoints
    kept_bytes: int  # saved activations held from forward to backward with the checkpoints
    peak_bytes: int  # kept + the largest recomputation in backward
    recompute_s: float  # measured forward time of the checkpointed submodules (the extra time per step)
    forward_s: float  # measured forward time of the whole model
    kind: str = "predicted"

    def to_dict(self) -> dict:
        return asdict(self)


class _Saved:
    """Saved-tensor hooks: distinct storages (not parameters or buffers), their bytes and order; live bytes."""

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.order: list[int] = []  # storage of each pack, in pack order (the first pack of a storage defines it)
        self.nbytes: dict[int, int] = {}
        self.packs: dict[int, list[int]] = {}  # storage -> pack indices
        self.refs: dict[int, int] = {}
        self.live = self.peak = 0

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.exclude or storage.nbytes() == 0:
            return tensor
        self.packs.setdefault(ptr, []).append(len(self.order))
        self.order.append(ptr)
        self.nbytes.setdefault(ptr, storage.nbytes())
        if self.refs.get(ptr, 0) == 0:
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[ptr] = self.refs.get(ptr, 0) + 1
        return _Held(self, ptr, tensor)

    @staticmethod
    def unpack(held):
        return held.tensor if isinstance(held, _Held) else held

    def release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.live -= self.nbytes[ptr]

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class _Held:
    __slots__ = ("saved", "ptr", "tensor")

    def __init__(self, saved: _Saved, ptr: int, tensor: torch.Tensor):
        self.saved, self.ptr, self.tensor = saved, ptr, tensor

    def __del__(self):
        self.saved.release(self.ptr)


def _state_storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}


@contextlib.contextmanager
def _frozen_statistics(module: nn.Module):
    """Restore batch norm running statistics on exit (a profiling pass or a recomputation must not update them)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False) if v is not None} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for k, v in buffers.items():
                    getattr(m, k).copy_(v)


def profile(model: nn.Module, example: torch.Tensor, runs: int = 2) -> tuple[_Saved, list[Candidate], dict[int, int], float]:
    """Profile training-mode forwards: saved tensors, candidate submodules (called once, with children), the bytes of
    their inputs, and forward times (the fastest of `runs`)."""
    was_training = model.training
    names = {m: name for name, m in model.named_modules() if name and any(True for _ in m.children())}
    best: dict[str, float] = {}
    total = float("inf")
    for _ in range(runs):
        saved = _Saved(_state_storages(model))
        calls: dict[str, list] = {}  # name -> [[first save, end save, input tensors (held: no address reuse)]]
        stack: list[float] = []

        def pre(m, args, saved=saved, calls=calls, stack=stack):
            calls.setdefault(names[m], []).append([len(saved.order), None, tensors(args)])
            stack.append(time.perf_counter())

        def post(m, args, out, saved=saved, calls=calls, stack=stack):
            calls[names[m]][-1][1] = len(saved.order)
            best[names[m]] = min(best.get(names[m], float("inf")), time.perf_counter() - stack.pop())

        handles = [h for m in names for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
        model.train()
        try:
            with _frozen_statistics(model), saved.hooks():
                start = time.perf_counter()
                model(example)
                total = min(total, time.perf_counter() - start)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
    candidates = [Candidate(name, c[0][0], c[0][1], tuple(t.untyped_storage().data_ptr() for t in c[0][2]), best[name])
                  for name, c in calls.items() if len(c) == 1]
    sizes = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for c in calls.values() for t in c[0][2]}
    return saved, candidates, sizes, total


class _Model:
    """The predicted memory of a set of checkpointed candidates over one profile (sums precomputed per candidate)."""

    def __init__(self, saved: _Saved, candidates: list[Candidate], input_bytes: dict[int, int]):
        first = sorted((packs[0], saved.nbytes[p]) for p, packs in saved.packs.items())
        self.baseline = sum(b for _, b in first)
        self.before = {c.name: sum(b for f, b in first if f < c.start) for c in candidates}  # saved before it starts
        self.inside = {c.name: sum(saved.nbytes[p] for p, packs in saved.packs.items()  # saved only inside it
                                   if c.start <= packs[0] and packs[-1] < c.end and p not in c.inputs) for c in candidates}
        self.made = {c.name: sum(saved.nbytes[p] for p, packs in saved.packs.items()  # what recomputing it saves anew
                                 if any(c.start <= k < c.end for k in packs) and p not in c.inputs) for c in candidates}
        self.held = {c.name: sum(input_bytes.get(p, 0) for p in set(c.inputs) if p not in saved.nbytes)
                     for c in candidates}  # inputs nothing saves: checkpoint holds them

    def predict(self, chosen: list[Candidate]) -> tuple[int, int]:
        """(kept bytes, largest recomputation peak) with `chosen` (non-overlapping) checkpointed."""
        kept = self.baseline - sum(self.inside[c.name] - self.held[c.name] for c in chosen)
        recompute = 0
        for c in chosen:  # its backward: what was saved before it (less what earlier checkpoints dropped) + its recomputation
            earlier = sum(self.inside[o.name] - self.held[o.name] for o in chosen if o.end <= c.start)
            recompute = max(recompute, self.before[c.name] - earlier + self.held[c.name] + self.made[c.name])
        return kept, recompute


def _greedy(candidates: list[Candidate], predict, budget: float) -> tuple[list[Candidate], int, int] | None:
    """Checkpoint the candidate that drops the most kept bytes per second of recomputation, among those whose
    recomputation fits `budget`, until the kept bytes fit too; None when they never do."""
    chosen: list[Candidate] = []
    kept, recompute = predict(chosen)
    while kept > budget:
        options = []
        for c in candidates:  # a candidate may replace checkpointed submodules of its own
            inner = [o for o in chosen if o.name.startswith(c.name + ".")]
            if any(_overlaps(c, o) for o in chosen if o not in inner):
                continue
            trial = [o for o in chosen if o not in inner] + [c]
            k, r = predict(trial)
            cost = c.forward_s - sum(o.forward_s for o in inner)
            if k < kept and r <= budget:
                options.append(((kept - k) / max(cost, 1e-6), -c.start, trial, k, r))
        if not options:
            return None
        _, _, chosen, kept, recompute = max(options, key=lambda o: o[:2])
    return chosen, kept, max(kept, recompute)


def plan(model: nn.Module, example: torch.Tensor, budget_bytes: int | None = None) -> CheckpointPlan:
    """Choose submodules to checkpoint so the predicted activation peak fits `budget_bytes` (None: the lowest peak
    the candidates reach). Raises UserError when the budget cannot be met."""
    saved, candidates, input_bytes, forward_s = profile(model, example)
    predict = _Model(saved, candidates, input_bytes).predict
    baseline = predict([])[0]
    found = _greedy(candidates, predict, budget_bytes if budget_bytes is not None else baseline)
    if budget_bytes is None or found is None:
        low, high = 0.0, float(baseline)  # bisect for the lowest budget the greedy meets
        while high - low > baseline * 1e-3:
            mid = (low + high) / 2
            low, high = (low, mid) if _greedy(candidates, predict, mid) else (mid, high)
        lowest = _greedy(candidates, predict, high)
        if budget_bytes is not None:
            raise UserError(f"an activation-memory budget of {budget_bytes / 2**20:.1f} MiB cannot be met: checkpointing "
                            f"reaches {lowest[2] / 2**20:.1f} MiB at best (without it {baseline / 2**20:.1f} MiB); "
                            "raise the budget or lower the batch size")
        found = lowest
    chosen, kept, peak = found
    chosen.sort(key=lambda c: c.start)
    return CheckpointPlan(tuple(c.name for c in chosen), budget_bytes, baseline, kept, peak,
                          sum(c.forward_s for c in chosen), forward_s)


def _overlaps(a: Candidate, b: Candidate) -> bool:
    return a.name == b.name or a.name.startswith(b.name + ".") or b.name.startswith(a.name + ".")


@contextlib.contextmanager
def applied(model: nn.Module, modules: tuple[str, ...] | list[str]):
    """Run these submodules under `torch.utils.checkpoint` (non-reentrant) while the block runs; their batch norm
    statistics are restored after each recomputation."""
    wrapped = []
    try:
        for name in modules:
            module = model.get_submodule(name)
            wrapped.append((module, module.__dict__.get("forward")))  # a forward of the instance's own, if any
            module.forward = _checkpointed(module, module.forward)  # shadows the class's forward
        yield model
    finally:
        for module, own in reversed(wrapped):
            if own is None:
                del module.forward
            else:
                module.forward = own


_METER: list[_Saved] = []  # the saved-tensor meter of a measured step, if one is running


@contextlib.contextmanager
def _recomputing(module: nn.Module):
    """Around a recomputation in backward: batch norm statistics restored after it; measured when a meter runs."""
    with _frozen_statistics(module), (_Recomputed(_METER[-1]) if _METER else contextlib.nullcontext()):
        yield


def _checkpointed(module: nn.Module, forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), _recomputing(module)), **kwargs)

    return run


class _Recomputed(TorchDispatchMode):
    """During a recomputation in backward: the storages its ops make that are still alive when it ends (the tensors
    checkpoint saved again), added to the meter's live saved bytes for its peak."""

    def __init__(self, saved: _Saved):
        super().__init__()
        self.saved, self.made = saved, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tensors(out):
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self.saved.exclude and ptr not in self.made:
                self.made[ptr] = (StorageWeakRef(storage), storage.nbytes())
        return out

    def __exit__(self, *exc):
        if exc[2] is not None:  # checkpoint stops a recomputation early by raising: its traceback holds the locals
            traceback.clear_frames(exc[2])
        alive = sum(n for ptr, (ref, n) in self.made.items() if not ref.expired() and not self.saved.refs.get(ptr))
        self.saved.peak = max(self.saved.peak, self.saved.live + alive)
        return super().__exit__(*exc)


@dataclass(frozen=True)
class StepMemory:
    """One training step (forward + backward), measured."""

    saved_bytes: int  # peak saved-tensor bytes: saved-tensor hooks, plus the tensors a recomputation saves again
    # (parameters and buffers excluded)
    rss_bytes: int | None  # peak resident memory above the step's start (sampled from /proc; None without /proc)
    step_s: float  # median forward + backward time
    repeats: int
    kind: str = "measured"

    def to_dict(self) -> dict:
        return asdict(self)


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, modules: tuple[str, ...] = (), repeats: int = 3,
            loss_fn=F.cross_entropy) -> list[StepMemory]:
    """Measure a training step without checkpoints and with `modules` checkpointed: one warm-up step each, then
    `repeats` interleaved pairs. Returns [plain, checkpointed]. The model's gradients and statistics are left as
    they were. Resident memory follows live tensors only after `hwai.memory.rss.release_freed_memory()`."""
    grads = {p: p.grad for p in model.parameters()}
    was_training = model.training
    model.train()
    runs: list[list[tuple[int, int | None, float]]] = [[], []]
    try:
        with _frozen_statistics(model):
            for p in model.parameters():  # gradients exist before the measured steps (not activation memory)
                p.grad = torch.zeros_like(p) if p.requires_grad else None
            for r in range(repeats + 1):
                for i, names in enumerate(((), tuple(modules))):
                    with applied(model, names):
                        saved = _Saved(_state_storages(model))
                        times: list[float] = []

                        def step(saved=saved, times=times):
                            start = time.perf_counter()
                            _METER.append(saved)
                            try:
                                with saved.hooks():
                                    loss_fn(model(x), y).backward()
                            finally:
                                _METER.pop()
                            times.append(time.perf_counter() - start)

                        rss = peak_rss(step)
                        if r:  # the first pair warms up (allocator, kernels)
                            runs[i].append((saved.peak, rss, times[0]))
    finally:
        for p, g in grads.items():
            p.grad = g
        model.train(was_training)
    out = []
    for rows in runs:
        rss = [r for _, r, _ in rows if r is not None]
        out.append(StepMemory(max(s for s, _, _ in rows), int(statistics.median(rss)) if rss else None,
                              statistics.median(t for _, _, t in rows), repeats))
    return out
