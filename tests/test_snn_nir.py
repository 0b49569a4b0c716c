"""NIR export of spiking nets (hwai.snn.nir_export) and its round trip through Norse and SpikingJelly
(hwai.snn.nir_check): the file reproduces hwai's spikes where the neuron models coincide; what NIR cannot express is
refused in one line."""
import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

from hwai.errors import UserError

pytest.importorskip("snntorch")
nir = pytest.importorskip("nir")

from hwai.snn import SNNConfig, spiking  # noqa: E402
from hwai.snn.nir_export import to_nir, write_nir  # noqa: E402

TINY = """from torch import nn


def net(num_classes, in_channels, input_size):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * input_size[0] * input_size[1], num_classes), nn.Sigmoid())
"""


def _tiny(digits, reset="zero", beta=0.8, threshold=0.3, steps=5):
    """Conv-BN-LIF, max pool, conv-LIF, global average pool, flatten, dropout, linear; per-layer beta/threshold."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Dropout(0.2), nn.Linear(6, 10))
    with torch.no_grad():  # BatchNorm with statistics of its own, so folding it is tested
        bn = model[1]
        bn.running_mean.uniform_(-0.3, 0.3), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
    net = spiking(model, digits, SNNConfig(steps=steps, beta=beta, threshold=threshold, reset=reset, learn=True))
    with torch.no_grad():  # learned values differ per layer
        (_, first), (_, second) = net.lif_layers()
        second.neuron.beta.fill_(0.6)
        second.neuron.threshold.fill_(0.2)
    return net.eval()


def test_round_trip_reproduces_hwai_spikes_exactly_in_norse_and_spikingjelly(digits, tmp_path):
    pytest.importorskip("norse")
    pytest.importorskip("spikingjelly")
    from hwai.snn.nir_check import check

    net = _tiny(digits)
    export = to_nir(net, tuple(digits.sample_shape))
    write_nir(export, tmp_path / "tiny.nir")
    back = nir.read(tmp_path / "tiny.nir")
    kinds = [type(n).__name__ for n in back.nodes.values()]
    for kind in ("Conv2d", "LIF", "SumPool2d", "IF", "Flatten", "Affine"):
        assert kind in kinds
    assert back.metadata["steps"] == 5 and back.metadata["dt"] == export.dt
    results = check(net, export, digits, "test", limit=96)
    assert [r.simulator for r in results] == ["norse", "spikingjelly"]
    for r in results:
        assert r.samples == 96 and r.agreement == 1.0 and r.accuracy == r.hwai_accuracy
        assert r.spike_diff == 0.0 and r.max_logit_diff < 1e-4
        assert all(h > 0 for h, _ in r.spikes.values()) and len(r.spikes) == 2  # both LIF layers spiked


def test_lif_nodes_follow_the_forward_euler_mapping(digits):
    net = _tiny(digits)
    export = to_nir(net, tuple(digits.sample_shape))
    nodes = export.graph.nodes
    lif = nodes["5"]  # the second LIF layer: beta 0.6, threshold 0.2
    assert np.allclose(lif.tau, export.dt / (1 - 0.6)) and np.allclose(lif.r, 1.0)
    assert np.allclose(lif.v_threshold, 0.2) and np.allclose(lif.v_reset, 0) and np.allclose(lif.v_leak, 0)
    assert lif.v_threshold.shape == (6, 4, 4)
    conv = net.body.get_submodule("4")
    # R = tau / dt = 1 / (1 - beta) folded into the conv that feeds the neurons; the 1/16 of the average pool later
    assert np.allclose(nodes["4"].weight, conv.weight.detach().numpy() / 0.4, rtol=1e-5)
    assert np.allclose(nodes["9"].weight, net.body.get_submodule("9").weight.detach().numpy() / 16, rtol=1e-5)
    pool_or = nodes["3_any"]  # max pooling of spikes: a sum and a threshold between 0 and 1
    assert type(pool_or).__name__ == "IF" and np.allclose(pool_or.v_threshold, 0.5)
    assert np.allclose(pool_or.r * export.dt, 1.0)
    assert export.neurons == {"2": "2", "3_any": "", "5": "5"}


def test_what_nir_cannot_express_is_refused(digits):
    with pytest.raises(UserError, match="reset to v_reset"):
        to_nir(_tiny(digits, reset="subtract"), tuple(digits.sample_shape))

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 1, 3, padding=1), nn.Linear(64, 10)

        def forward(self, x):
            return self.fc((torch.relu(self.conv(x)) + x).flatten(1))

    with pytest.raises(UserError, match="chains of layers"):
        to_nir(spiking(Residual(), digits, SNNConfig(reset="zero")), (1, 8, 8))
    analog_max = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                               nn.Linear(32, 10))
    with pytest.raises(UserError, match="max pooling"):
        to_nir(spiking(analog_max, digits, SNNConfig(reset="zero")), (1, 8, 8))


def test_cli_export_writes_nir_checks_it_and_refuses_in_one_line(tmp_path):
    pytest.importorskip("norse")
    pytest.importorskip("spikingjelly")
    run = tmp_path / "run"
    r = run_cli("snn", "train", "--model", "mlp", "--data", "digits", "--width", "0.05", "--epochs", "1",
                "--steps", "3", "--reset", "zero", "--ann-target", "none", "--out", run)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "nir"
    r = run_cli("snn", "export", run / "model.pt", "--nir", "--out", out, "--check", "64")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert (out / "model.nir").is_file() and res["kib"] > 0
    assert [c["agreement"] for c in res["checks"]] == [1.0, 1.0] and "top-1 agreement" in r.stdout
    r = run_cli("export", "--model", run / "model.pt", "--out", tmp_path / "via-export")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "via-export" / "model.nir").is_file()
    (tmp_path / "sig.py").write_text(TINY)  # an op NIR cannot express (a sigmoid on the readout)
    sig = tmp_path / "sig"
    assert run_cli("snn", "train", "--model", f"{tmp_path / 'sig.py'}:net", "--data", "digits", "--epochs", "0",
                   "--steps", "2", "--reset", "zero", "--ann-target", "none", "--out", sig).returncode == 0
    for args, message in ((["snn", "export", sig / "model.pt", "--nir", "--out", tmp_path / "x"], "Sigmoid"),
                          (["snn", "export", sig / "model.pt", "--out", tmp_path / "x"], "--nir")):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
