"""Spiking neural networks on snnTorch: spiking versions of zoo and user conv nets (every ReLU becomes a
layer of leaky integrate-and-fire neurons), surrogate-gradient training, ANN->SNN conversion, measured spike
and synaptic-operation counts, and predicted energy on neuromorphic target profiles.

snnTorch is optional (`pip install --no-deps snntorch`, the `snn` extra); nothing here imports it, or torch,
until a function needs it, so `import hwai.snn` stays lean.

    from hwai.snn import SNNConfig, spiking, measure_activity
    net = hwai.snn.create("cnn", data, SNNConfig(steps=8))            # a spiking zoo model
    net = hwai.snn.spiking(my_conv_net, data, SNNConfig(coding="rate"))  # any conv net: ReLU -> LIF
    hwai.snn.write_nir(hwai.snn.to_nir(net, (1, 28, 28)), "model.nir")   # for Norse, SpikingJelly, Lava, ...
"""
from importlib import import_module

from hwai.errors import UserError
from hwai.lazy import exports

EXTRA = "pip install --no-deps 'snntorch==1.0.0' (the hwai[snn] extra)"

# public name -> (module, attribute)
_LAZY = {
    "SNNConfig": ("hwai.snn.config", "SNNConfig"),
    "ConvertConfig": ("hwai.snn.config", "ConvertConfig"),
    "LIF": ("hwai.snn.model", "LIF"),
    "SpikingNet": ("hwai.snn.model", "SpikingNet"),
    "spiking": ("hwai.snn.model", "spiking"),
    "create": ("hwai.snn.model", "create"),
    "save_checkpoint": ("hwai.snn.model", "save_checkpoint"),
    "load_checkpoint": ("hwai.snn.model", "load_checkpoint"),
    "is_checkpoint": ("hwai.snn.model", "is_checkpoint"),
    "convert": ("hwai.snn.convert", "convert"),
    "Activity": ("hwai.snn.activity", "Activity"),
    "measure_activity": ("hwai.snn.activity", "measure_activity"),
    "energy": ("hwai.snn.energy", "energy"),
    "compare_latency": ("hwai.snn.energy", "compare_latency"),
    "to_nir": ("hwai.snn.nir_export", "to_nir"),
    "write_nir": ("hwai.snn.nir_export", "write_nir"),
    "export_nir": ("hwai.snn.nir_export", "export_checkpoint"),
    "check_nir": ("hwai.snn.nir_check", "check"),
    "chip_fit": ("hwai.snn.chips", "chip_fit"),
}


def require_snntorch():
    """The snntorch module, or a UserError naming the extra to install."""
    try:
        return import_module("snntorch")
    except ImportError:
        raise UserError(f"spiking networks need snnTorch, which is not installed: {EXTRA}") from None


__getattr__, __dir__ = exports("hwai.snn", _LAZY, globals())
