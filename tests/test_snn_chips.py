"""Neuromorphic chips (hwai.snn.chips and the chip fields of hwai.targets): a net that exceeds a chip's limits does
not fit, naming the limit; static energy is priced where a profile gives it; chip fields are validated."""
import copy

import pytest
import yaml
from torch import nn

from hwai import targets
from hwai.errors import UserError

pytest.importorskip("snntorch")

from hwai.snn import SNNConfig, measure_activity, spiking  # noqa: E402
from hwai.snn.chips import chip_fit, needs  # noqa: E402
from hwai.snn.energy import energy  # noqa: E402


def _net(digits, channels=4, kernel=3):
    model = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(channels, channels, kernel, padding=kernel // 2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(channels * 64, 10))
    net = spiking(model, digits, SNNConfig(steps=3, reset="zero"))
    return net, measure_activity(net, digits, limit=16)


def _chip(**fields) -> targets.Target:
    raw = yaml.safe_load(open(targets.load("truenorth").path))
    for key, value in fields.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = {"value": value, "source": "a test chip, made up for this test"}
    return targets.parse(raw, "chip.yaml")


def test_needs_count_neurons_fan_in_and_expanded_synapses(digits):
    net, act = _net(digits, channels=4)
    layers = needs(net, act)
    assert [l.neurons for l in layers] == [4 * 64, 4 * 64, 10]
    assert [l.fan_in for l in layers] == [9, 36, 256]
    conv = [l for l in act.layers if l.op == "conv"]
    assert layers[1].synapses == conv[1].dense_synops < 4 * 64 * 36  # padding excluded
    assert layers[2].synapses == 256 * 10 and layers[2].weights == 2560


def test_a_chip_the_model_exceeds_does_not_fit_naming_the_limit(digits):
    small, act_small = _net(digits, channels=4)
    fit = chip_fit(small, act_small, "truenorth")
    assert fit.fits is True and fit.verdict() == "truenorth: fits" and fit.usage["max_fan_in"] == 256
    wide, act_wide = _net(digits, channels=32)  # 3x3x32 = 288 inputs per neuron > TrueNorth's 256-axon crossbar
    fit = chip_fit(wide, act_wide, "truenorth")
    assert fit.fits is False and "does not fit" in fit.verdict()
    assert "288 into 3, 2,048 into readout > max_fan_in 256" in fit.verdict() and "Merolla" in fit.verdict()
    tiny_chip = _chip(cores=2, neurons_per_core=100)  # 522 neurons on 2 x 100
    fit = chip_fit(small, act_small, tiny_chip)
    assert fit.fits is False and "neurons 522 > 2 cores x 100 per core" in fit.verdict()
    assert "cores 7 needed" in fit.verdict()  # 3 + 3 + 1 cores for the three layers (256, 256, 10 neurons)
    memory_chip = _chip(cores=8, synapse_kib_per_core=0.5, weight_bits=8)  # 8 cores x 512 B
    fit = chip_fit(wide, act_wide, memory_chip)
    assert "synapse memory" in fit.verdict() and "8 bits" in fit.verdict()
    unlimited = _chip(cores=None, neurons_per_core=None, synapse_kib_per_core=None, max_fan_in=None, weight_bits=None)
    assert chip_fit(wide, act_wide, unlimited).fits is None
    assert "max_fan_in" in chip_fit(small, act_small, "loihi").notes[-1]  # Loihi states no fan-in cap: unchecked


def test_static_energy_and_all_in_figures(digits):
    net, act = _net(digits)
    chip = _chip(static_mw=2.0)  # 2 mW x 3 steps x 1 ms = 6 uJ
    e = energy(act, chip)
    assert e.static_uj == pytest.approx(6.0) and e.snn_uj == pytest.approx(e.sops_uj + e.updates_uj + 6.0)
    tn = energy(act, "truenorth")
    assert tn.static_uj == 0 and tn.updates_uj == 0 and "all-in" in tn.notes[-1]
    assert "no static power" in energy(act, "loihi").notes[-1]


@pytest.mark.parametrize("field, value, message", [
    ("cores", 2.5, "cores: value must be a whole number"),
    ("energy_sop_pj", 0, "energy_sop_pj: value must be > 0"),
    ("static_w", 1, "static_w: unknown field"),
])
def test_chip_fields_are_validated(field, value, message):
    raw = yaml.safe_load(open(targets.load("truenorth").path))
    raw = copy.deepcopy(raw)
    raw[field] = {"value": value, "source": "a test chip, made up for this test"}
    with pytest.raises(UserError, match=message):
        targets.parse(raw, "chip.yaml")
    assert targets.load("truenorth").energy_per_neuron_update_j == 0  # all-in: a neuron update may cost 0 apart
