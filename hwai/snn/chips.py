"""Does a spiking net fit a neuromorphic chip? The chip's limits (hwai/targets/*.yaml, kind neuromorphic: cores,
neurons per core, synapse memory per core, fan-in, weight bits) against the net's neurons, fan-in and synapses, like
the SRAM check for microcontrollers (kind: predicted).

Counting rules (stated in every verdict's notes):
- neurons: every LIF neuron and every readout unit; each layer gets cores of its own (the usual compiler rule);
- synapses: expanded connections, padding excluded (a conv kernel stored once per connection it makes; chips
  that share kernels across positions need fewer), stored at the chip's weight bits;
- fan-in: inputs per neuron of the synaptic layer that feeds it (Cin/groups x kernel, or in_features).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import nn

from hwai.snn.activity import Activity
from hwai.snn.model import SpikingNet

LIMITS = ("cores", "neurons_per_core", "synapse_bytes_per_core", "max_fan_in", "weight_bits")
FIELDS = {"cores": "cores", "neurons_per_core": "neurons_per_core", "synapse_bytes_per_core": "synapse_kib_per_core",
          "max_fan_in": "max_fan_in", "weight_bits": "weight_bits"}  # Target.chip key -> YAML field


@dataclass
class LayerNeeds:
    """What one neuron layer (with the synaptic layer feeding it) asks of a chip."""

    name: str
    neurons: int
    fan_in: int
    synapses: int  # expanded connections into this layer
    weights: int  # distinct weights of the synaptic layer (what a kernel-sharing chip stores)


@dataclass
class ChipFit:
    """Fits / does not fit on one chip, with every limit that binds (kind: predicted)."""

    target: str
    target_file: str
    fits: bool | None  # None: the profile states no limits to check
    reasons: list[str] = field(default_factory=list)  # the limits the net exceeds, with numbers
    notes: list[str] = field(default_factory=list)  # counting rules, quantisation, limits the profile lacks
    usage: dict = field(default_factory=dict)  # neurons, cores, synapse_bytes, max_fan_in needed
    kind: str = "predicted"

    def verdict(self) -> str:
        if self.fits is None:
            return f"{self.target}: no limits in the profile, fit not checked"
        return f"{self.target}: fits" if self.fits else f"{self.target}: does not fit: " + "; ".join(self.reasons)

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict()}


def needs(net: SpikingNet, activity: Activity) -> list[LayerNeeds]:
    """Per neuron layer (LIF layers and the readout), in order, from measured activity and the net's modules."""
    modules = dict(net.body.named_modules())
    out, feeding = [], None
    for layer in activity.layers:
        if layer.op in ("conv", "linear"):
            feeding = layer
        elif layer.op in ("lif", "readout") and feeding is not None:
            m = modules[feeding.name]
            fan_in = (m.in_features if isinstance(m, nn.Linear)
                      else m.in_channels // m.groups * math.prod(m.kernel_size))
            out.append(LayerNeeds(layer.name, layer.neurons, fan_in, feeding.dense_synops, m.weight.numel()))
            feeding = None
    return out


def chip_fit(net: SpikingNet, activity: Activity, target) -> ChipFit:
    """Check `net` (its activity measured on data, for shapes) against a neuromorphic `target`'s limits."""
    from hwai import targets

    t = target if isinstance(target, targets.Target) else targets.load(target)
    limits = {k: t.chip[k] for k in LIMITS if k in t.chip}
    src = {k: t.sources[FIELDS[k]][2].split(":")[0] for k in limits}  # the citation, without the detail
    result = ChipFit(t.name, t.path, None)
    if not limits:
        return result
    layers = needs(net, activity)
    bits = limits.get("weight_bits", 32)
    neurons = sum(l.neurons for l in layers)
    syn_bytes = sum(l.synapses for l in layers) * bits / 8
    fan_in = max(l.fan_in for l in layers)
    npc, spc = limits.get("neurons_per_core"), limits.get("synapse_bytes_per_core")
    cores = sum(max(math.ceil(l.neurons / npc) if npc else 1, math.ceil(l.synapses * bits / 8 / spc) if spc else 1)
                for l in layers)
    result.usage = {"neurons": neurons, "synapses": sum(l.synapses for l in layers), "synapse_bytes": syn_bytes,
                    "max_fan_in": fan_in, "cores": cores, "weight_bits": bits, "layers": [asdict(l) for l in layers]}
    total = limits.get("cores")
    if total and npc and neurons > total * npc:
        result.reasons.append(f"neurons {neurons:,} > {total:,} cores x {npc:,} per core ({src['neurons_per_core']})")
    if "max_fan_in" in limits and fan_in > limits["max_fan_in"]:
        over = ", ".join(f"{l.fan_in:,} into {l.name}" for l in layers if l.fan_in > limits["max_fan_in"])
        result.reasons.append(f"fan-in (inputs per neuron) {over} > max_fan_in {limits['max_fan_in']:,} "
                              f"({src['max_fan_in']})")
    if total and spc and syn_bytes > total * spc:
        result.reasons.append(f"synapse memory {syn_bytes / 2**20:,.1f} MiB ({result.usage['synapses']:,} synapses x "
                              f"{bits} bits) > {total:,} cores x {spc / 1024:g} KiB ({src['synapse_bytes_per_core']})")
    if total and cores > total:
        result.reasons.append(f"cores {cores:,} needed (each layer on cores of its own, by neurons and synapse memory) "
                              f"> {total:,} ({src['cores']})")
    result.fits = not result.reasons
    result.notes.append("synapses counted as expanded connections (padding excluded); a chip that shares conv "
                        f"kernels stores {sum(l.weights for l in layers):,} weights instead")
    if "weight_bits" in limits:
        result.notes.append(f"weights are stored with {bits} bits on {t.name} (hwai trained fp32; quantisation to "
                            f"{bits} bits is not applied or measured here)")
    missing = [FIELDS[k] for k in LIMITS if k not in limits]
    if missing:
        result.notes.append(f"not checked (not in {t.name}'s profile): {', '.join(missing)}")
    return result
