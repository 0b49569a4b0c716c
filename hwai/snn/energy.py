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

from dataclasses import asdict, dataclass, field

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
    """Measured latency of the SNN and the ANN on this CPU, in blocks of interleaved runs (hwai.measure.verdict)."""

    snn_ms: float  # median of the block medians
    ann_ms: float  # median of the block medians
    snn_iqr_ms: float
    ann_iqr_ms: float
    ratio: float  # SNN / ANN: geometric mean of the block ratios
    ratio_low: float  # 95% interval of the ratio (Student's t across blocks)
    ratio_high: float
    margin: float  # equivalence margin: 3%, or the A/A spread (the ANN in two runners) where wider
    verdict: str  # "slower" | "faster" | "no measurable difference"
    pairs: int  # timed runs of each, all blocks
    blocks: int
    threads: int
    batch: int
    kind: str = "measured"

    def describe(self) -> str:
        return (f"measured: torch eager on this CPU, {self.threads} thread(s), batch {self.batch}, {self.pairs} runs "
                f"of each in {self.blocks} blocks, interleaved in random order; medians SNN {self.snn_ms:.3f} ms (IQR "
                f"{self.snn_iqr_ms:.3f}), ANN {self.ann_ms:.3f} ms (IQR {self.ann_iqr_ms:.3f}); SNN/ANN "
                f"x{self.ratio:.3f}, 95% interval x{self.ratio_low:.3f}..x{self.ratio_high:.3f}, margin "
                f"±{self.margin:.1%}")

    def to_dict(self) -> dict:
        return {**asdict(self), "measurement": self.describe()}


def compare_latency(snn: nn.Module, ann: nn.Module, example: torch.Tensor, pairs: int = 30, warmup: int = 3,
                    threads: int | None = None) -> LatencyComparison:
    """Time SNN and ANN (the ANN twice: the A/A arm) in blocks of interleaved runs, `pairs` runs of each in all, and
    decide as every hwai latency verdict (hwai.measure.verdict.compare): slower/faster only when the interval across
    blocks lies beyond the equivalence margin."""
    from hwai.measure import MeasureConfig
    from hwai.measure.timing import MIN_ROUND_RUNS
    from hwai.measure.verdict import compare

    if pairs < 3 * MIN_ROUND_RUNS:
        raise UserError(f"a latency comparison needs at least {3 * MIN_ROUND_RUNS} pairs (3 blocks of "
                        f"{MIN_ROUND_RUNS}), got {pairs}")
    blocks = min(10, pairs // MIN_ROUND_RUNS)
    cfg = MeasureConfig(threads=threads, warmup=warmup, min_repeats=pairs, max_repeats=pairs, blocks=blocks)
    c = compare(ann.eval(), snn.eval(), example, cfg, runtime="torch")
    return LatencyComparison(c.after_ms, c.before_ms, c.after_iqr_ms, c.before_iqr_ms, c.ratio, c.ratio_low,
                             c.ratio_high, c.margin, c.verdict, c.runs, c.blocks, c.threads, int(example.shape[0]))
