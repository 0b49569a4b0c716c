"""Energy of a spiking net (predicted from its measured activity and a neuromorphic target profile), the
same-shape ANN on the same process model and on a conventional target (hwai.cost), and measured latency of
both on this CPU.

On a profile with energy per synaptic operation E_sop, per neuron update E_upd and per multiply-accumulate
E_mac (hwai/targets/*.yaml, kind neuromorphic):
    SNN = SOPs x E_sop + MACs (non-spike input) x E_mac + neuron updates x E_upd
    ANN = dense synaptic operations (its MACs, padding excluded) x E_mac
Both are arithmetic only where the profile says so (neuromorphic-45nm: memory traffic is not modelled).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from hwai.errors import UserError
from hwai.snn.activity import Activity


@dataclass
class EnergyEstimate:
    """Predicted energy per inference on one neuromorphic profile (microjoules)."""

    target: str
    target_file: str
    snn_uj: float  # synaptic operations + input MACs (where priced) + neuron updates
    sops_uj: float
    macs_uj: float | None  # None: the profile has no fp32 multiply-accumulate energy
    updates_uj: float
    ann_uj: float | None  # the same-shape ANN on the same process (needs energy_fp32_pj_per_mac)
    notes: list[str] = field(default_factory=list)
    static_uj: float = 0.0  # static power x steps x time step, where the profile gives both (included in snn_uj)
    kind: str = "predicted"

    @property
    def ratio(self) -> float | None:
        """SNN / ANN energy on this profile (None without an ANN figure)."""
        return self.snn_uj / self.ann_uj if self.ann_uj else None

    def describe(self) -> str:
        return f"predicted (activity x energy per operation, target {self.target} from {self.target_file})"

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio, "prediction": self.describe()}


def energy(activity: Activity, target) -> EnergyEstimate:
    """Price measured `activity` on a neuromorphic `target` (name, YAML path or Target)."""
    from hwai import targets

    t = target if isinstance(target, targets.Target) else targets.load(target)
    if t.kind != "neuromorphic":
        raise UserError(f"target {t.name} is a {t.kind}, not a neuromorphic energy profile; use one of "
                        f"{', '.join(n for n in targets.names() if targets.load(n).kind == 'neuromorphic')}")
    e_mac = t.energy_per_mac_j.get("fp32")
    sops = activity.sops * t.energy_per_sop_j * 1e6
    updates = activity.updates * t.energy_per_neuron_update_j * 1e6
    macs = activity.macs * e_mac * 1e6 if e_mac is not None else None
    notes = []
    if macs is None and activity.macs:
        notes.append(f"{t.name} prices no multiply-accumulates: the {activity.macs:,.0f} MACs on non-spike input "
                     "(e.g. the image under direct coding) are not included")
    static = 0.0
    if "static_w" in t.chip and "timestep_s" in t.chip:
        static = t.chip["static_w"] * activity.steps * t.chip["timestep_s"] * 1e6
    elif t.chip and not t.energy_per_neuron_update_j:
        notes.append(f"{t.name}'s energy per synaptic operation is all-in: static power and neuron updates are inside it")
    elif t.chip:
        notes.append(f"{t.name}'s profile has no static power and time step (not published): static energy is not included")
    return EnergyEstimate(t.name, t.path, sops + updates + (macs or 0.0) + static, sops, macs, updates,
                          activity.dense_synops * e_mac * 1e6 if e_mac is not None else None, notes, static)


def ann_prediction(ann: nn.Module, example: torch.Tensor, target: str = "stm32h743", precision: str = "fp32"):
    """The same-shape ANN predicted on a conventional target by hwai.cost (a Prediction, kind predicted)."""
    from hwai import cost, graph, targets

    return cost.predict(graph.capture(ann.eval(), example[:1]), targets.load(target), precision=precision)


@dataclass
class LatencyComparison:
    """Measured latency of the SNN and the ANN on this CPU, timed in interleaved pairs."""

    snn_ms: float  # median
    ann_ms: float  # median
    snn_iqr_ms: float
    ann_iqr_ms: float
    ratio: float  # median of per-pair SNN / ANN
    p_value: float  # Wilcoxon signed-rank test on the paired differences
    verdict: str  # "slower" | "faster" | "no measurable difference"
    pairs: int
    threads: int
    batch: int
    kind: str = "measured"

    def describe(self) -> str:
        return (f"measured: torch eager on this CPU, {self.threads} thread(s), batch {self.batch}, {self.pairs} "
                f"interleaved SNN/ANN pairs; medians SNN {self.snn_ms:.3f} ms (IQR {self.snn_iqr_ms:.3f}), ANN "
                f"{self.ann_ms:.3f} ms (IQR {self.ann_iqr_ms:.3f}); Wilcoxon signed-rank p = {self.p_value:.2g}")

    def to_dict(self) -> dict:
        return {**asdict(self), "measurement": self.describe()}


def compare_latency(snn: nn.Module, ann: nn.Module, example: torch.Tensor, pairs: int = 30, warmup: int = 3,
                    threads: int | None = None, alpha: float = 0.01) -> LatencyComparison:
    """Time SNN and ANN alternately (the order flips every pair, so load bursts hit both) and test the paired
    differences; the verdict says slower/faster only when p < alpha."""
    from scipy.stats import wilcoxon

    from hwai.measure import physical_cores

    if pairs < 6:
        raise UserError(f"a latency comparison needs at least 6 pairs, got {pairs}")
    threads = threads or physical_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    snn.eval()
    ann.eval()
    times = {"snn": [], "ann": []}

    def once(name: str, model: nn.Module) -> None:
        t0 = time.perf_counter()
        model(example)
        times[name].append((time.perf_counter() - t0) * 1e3)

    try:
        with torch.inference_mode():
            for _ in range(warmup):
                snn(example), ann(example)
            for i in range(pairs):
                order = (("snn", snn), ("ann", ann)) if i % 2 == 0 else (("ann", ann), ("snn", snn))
                for name, model in order:
                    once(name, model)
    finally:
        torch.set_num_threads(previous)
    s, a = np.asarray(times["snn"]), np.asarray(times["ann"])
    p = float(wilcoxon(s, a).pvalue)
    ratio = float(np.median(s / a))
    verdict = "no measurable difference" if p >= alpha else ("slower" if ratio > 1 else "faster")
    iqr = lambda v: float(np.subtract(*np.percentile(v, [75, 25])))  # noqa: E731
    return LatencyComparison(float(np.median(s)), float(np.median(a)), iqr(s), iqr(a), ratio, p, verdict, pairs,
                             threads, int(example.shape[0]))
