"""Spiking nets (hwai.snn): LIF dynamics, surrogate gradients, ReLU->LIF conversion of any conv net, measured
spike / SOP counts, ANN->SNN conversion, energy pricing, neuromorphic target files, the CLI and the report."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import run_cli
from torch import nn

from hwai import targets
from hwai.errors import UserError

pytest.importorskip("snntorch")

from hwai.snn import SNNConfig, measure_activity, spiking  # noqa: E402
from hwai.snn.activity import Activity, LayerActivity, synapses_reached  # noqa: E402
from hwai.snn.config import ConvertConfig  # noqa: E402
from hwai.snn.convert import convert  # noqa: E402
from hwai.snn.energy import energy  # noqa: E402
from hwai.snn.model import LIF  # noqa: E402


def test_lif_membrane_follows_the_closed_form_below_threshold():
    beta, current = 0.8, 0.5
    lif = LIF(beta=beta, threshold=100.0)
    for steps in range(1, 11):
        lif.steps = steps
        spikes = lif(torch.full((steps * 3, 2), current))  # 3 samples x 2 neurons, steps stacked step-major
        # U[t] = beta U[t-1] + I, U[0] = 0  =>  U[T] = I (1 - beta^T) / (1 - beta)
        assert torch.allclose(lif.last_mem, torch.full((3, 2), current * (1 - beta ** steps) / (1 - beta)), atol=1e-6)
        assert spikes.shape == (steps * 3, 2) and not spikes.any()


def test_lif_spikes_and_resets_by_subtraction():
    beta, threshold, current, steps = 0.9, 1.0, 0.45, 20
    lif = LIF(beta=beta, threshold=threshold)
    lif.steps = steps
    out = lif(torch.full((steps, 1), current)).flatten().tolist()
    u, s, expected = 0.0, 0.0, []
    for _ in range(steps):
        u = beta * u + current - s * threshold  # snnTorch: the reset of step t-1's spike lands at step t
        s = float(u > threshold)
        expected.append(s)
    assert out == expected and 0 < sum(out) < steps
    assert float(lif.last_mem) == pytest.approx(u, abs=1e-5)
    assert lif(torch.full((steps, 1), current)).flatten().tolist() == expected  # every call starts from rest


@pytest.mark.parametrize("surrogate, slope, expected", [("fast_sigmoid", 25.0, 1.0), ("atan", 2.0, 1.0)])
def test_surrogate_gradient_is_nonzero_at_threshold(surrogate, slope, expected):
    lif = LIF(beta=0.9, threshold=1.0, surrogate=surrogate, slope=slope)
    current = torch.tensor([1.0, 1.0 + 1e-3, 3.0], requires_grad=True)  # U = I after one step from rest
    lif(current).sum().backward()
    # fast sigmoid: 1 / (slope |U - thr| + 1)^2; atan: (alpha / 2) / (1 + (pi / 2 alpha (U - thr))^2); both 1 here
    assert current.grad[0] == pytest.approx(expected, rel=1e-5)
    assert 0 < current.grad[1] < current.grad[0] and current.grad[2] < 0.05 * current.grad[0]


class _UserNet(nn.Module):
    """A user's conv net: functional relu, a ReLU module called twice, a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.act(self.conv2(y) + y)
        return self.fc(self.act(y).flatten(1))


def test_every_relu_call_site_becomes_its_own_lif_layer(digits):
    model = _UserNet()
    net = spiking(model, digits, SNNConfig(steps=3))
    assert len(net.lif_layers()) == 3 and net.notice is None
    assert isinstance(model.act, nn.ReLU)  # the user's model is not modified
    out = net(digits.example(4))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


class _Untraceable(_UserNet):
    def forward(self, x):
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace this
            return super().forward(x)
        return x


def test_untraceable_model_with_a_shared_relu_is_refused_clearly(digits):
    with pytest.raises(UserError, match="used 2 times"):
        spiking(_Untraceable(), digits, SNNConfig(steps=2))


def test_learned_beta_and_threshold_train_and_survive_a_checkpoint(digits, tmp_path):
    from hwai.snn.model import create, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    net, spec = create("cnn", digits, SNNConfig(steps=3, learn=True, threshold=0.5), width=0.25)
    fixed = spiking(_UserNet(), digits, SNNConfig(steps=3, threshold=0.5))
    lifs = [m for _, m in net.lif_layers()]
    assert all(isinstance(m.neuron.beta, nn.Parameter) and isinstance(m.neuron.threshold, nn.Parameter) for m in lifs)
    assert not any(isinstance(m.neuron.beta, nn.Parameter) for _, m in fixed.lif_layers())
    x, y = digits.example(32), digits.train[1][:32]
    F.cross_entropy(net(x), y).backward()
    grads = [(m.neuron.beta.grad, m.neuron.threshold.grad) for m in lifs]
    assert all(g is not None and torch.isfinite(g) for pair in grads for g in pair)
    assert any(float(t.abs()) > 0 for _, t in grads)  # the surrogate carries a gradient to the threshold
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        lifs[0].neuron.threshold.fill_(-2.0)  # a threshold pushed below zero is clamped before the next run
    net(x)
    assert lifs[0].neuron.threshold.item() == pytest.approx(1e-3)
    learned = {n: (m.neuron.beta.item(), m.neuron.threshold.item()) for n, m in net.lif_layers()}
    assert any(t != pytest.approx(0.5) for _, t in learned.values())
    path = save_checkpoint(tmp_path / "snn.pt", net.eval(), spec, digits)
    back, _, meta = load_checkpoint(path)
    assert meta["snn"]["learn"] is True
    restored = {n: (m.neuron.beta.item(), m.neuron.threshold.item()) for n, m in back.lif_layers()}
    assert restored.keys() == learned.keys()
    assert all(restored[n] == pytest.approx(learned[n]) for n in learned)
    assert torch.allclose(back(x), net(x), atol=1e-5)


def test_sop_count_is_spikes_times_fan_out_exact_at_borders():
    conv = nn.Conv2d(2, 5, 3, padding=1)
    mask = (torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    # brute force: every non-zero input reaches out_channels x (kernel taps that land inside the output)
    cols = F.unfold(mask, 3, padding=1)  # (batch, cin * 9, positions): one entry per synapse used
    assert synapses_reached(conv, mask) == pytest.approx(float(cols.sum()) * 5)
    assert synapses_reached(nn.Linear(7, 3), torch.ones(4, 7)) == 4 * 7 * 3


def test_spike_counts_are_reproducible_with_a_seed(digits):
    torch.manual_seed(0)
    net = spiking(_UserNet(), digits, SNNConfig(steps=4, coding="rate", threshold=0.3))
    first, again = (measure_activity(net, digits, limit=64, seed=0) for _ in range(2))
    other = measure_activity(net, digits, limit=64, seed=1)
    assert [l.spikes for l in first.layers] == [l.spikes for l in again.layers]
    assert first.raster == again.raster and first.spikes > 0
    assert [l.spikes for l in first.layers] != [l.spikes for l in other.layers]
    assert first.layers[0].op == "conv" and first.layers[0].macs == 0  # rate coding: the image arrives as spikes


def test_direct_coding_pays_the_first_layer_once(digits):
    net = spiking(_UserNet(), digits, SNNConfig(steps=5))
    act = measure_activity(net, digits, limit=32)
    first = act.layers[0]
    assert first.name == "conv1" and first.sops == 0
    assert first.macs == pytest.approx(first.dense_synops, rel=0.05)  # once, not 5 times (normalised pixels != 0)
    lif = [l for l in act.layers if l.op == "lif"]
    assert all(l.updates == l.neurons * 5 for l in lif)
    assert act.spikes_per_neuron == pytest.approx(sum(l.spikes for l in lif) / sum(l.neurons for l in lif))


def test_conversion_accuracy_rises_with_time_steps(trained_resnet8, digits):
    from hwai.train import evaluate

    ann_acc = evaluate(trained_resnet8, digits)
    cfg = ConvertConfig(steps=(2, 8, 32), percentiles=(99.9, 100.0), calibration_samples=128, val_steps=8)
    conv = convert(trained_resnet8, digits, cfg)
    acc = {a.steps: a.accuracy for a in conv.results}
    assert acc[2] + 0.15 < acc[32] and acc[8] <= acc[32] + 0.03
    assert acc[32] >= ann_acc - 0.2 and conv.ann_accuracy == pytest.approx(ann_acc)
    assert conv.percentile in (99.9, 100.0) and set(conv.val_accuracy) == {99.9, 100.0}
    spikes = [a.spikes_per_neuron for a in conv.results]
    assert spikes == sorted(spikes) and conv.results[0].layers[0].macs == 0  # rate coding folded into conv1


def _activity(**totals) -> Activity:
    layers = [LayerActivity("fc", "linear", (4,), sops=totals["sops"], macs=totals["macs"], dense_synops=totals["dense"]),
              LayerActivity("lif", "lif", (4,), neurons=4, spikes=2.0, updates=totals["updates"])]
    return Activity("test", 10, 8, "direct", 0.9, layers)


def test_energy_prices_activity_with_the_profile():
    act = _activity(sops=1000.0, macs=100.0, updates=50.0, dense=400)
    e = energy(act, "neuromorphic-45nm")
    assert e.snn_uj == pytest.approx((1000 * 0.9 + 100 * 4.6 + 50 * 6.4) * 1e-6)
    assert e.ann_uj == pytest.approx(400 * 4.6e-6) and e.ratio == pytest.approx(e.snn_uj / e.ann_uj)
    loihi = energy(act, "loihi")
    assert loihi.ann_uj is None and loihi.macs_uj is None and "not included" in loihi.notes[0]
    assert loihi.snn_uj == pytest.approx((1000 * 23.6 + 50 * 81) * 1e-6)
    with pytest.raises(UserError, match="not a neuromorphic energy profile"):
        energy(act, "stm32h743")


def _neuromorphic() -> dict:
    return yaml.safe_load(open(targets.load("neuromorphic-45nm").path))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("energy_sop_pj"), "energy_sop_pj: missing required field"),
    (lambda d: d.pop("runtime"), "runtime: missing"),
    (lambda d: d.update(energy_sop_nj=d.pop("energy_sop_pj")), "energy_sop_nj: unknown field for kind neuromorphic"),
    (lambda d: d["energy_neuron_update_pj"].pop("source"), "energy_neuron_update_pj: must be {value"),
    (lambda d: d["energy_sop_pj"].update(value=0), "energy_sop_pj: value must be > 0"),
    (lambda d: d.update(peak_fp32_gops={"value": 1, "source": "a datasheet"}), "peak_fp32_gops: unknown field"),
])
def test_neuromorphic_target_validation_names_the_field(mutate, message):
    d = copy.deepcopy(_neuromorphic())
    mutate(d)
    with pytest.raises(UserError, match=message.replace("{", r"\{")):
        targets.parse(d, "n.yaml")


def test_neuromorphic_targets_load_and_list(tmp_path):
    t = targets.load("neuromorphic-45nm")
    assert t.kind == "neuromorphic" and t.energy_per_sop_j == pytest.approx(0.9e-12)
    assert t.energy_per_mac_j["fp32"] == pytest.approx(4.6e-12) and "Horowitz" in t.sources["energy_sop_pj"][2]
    assert "Davies" in targets.load("loihi").sources["energy_sop_pj"][2]
    d = _neuromorphic()
    d["energy_int8_pj_per_mac"] = {"value": 0.23, "source": "Horowitz ISSCC 2014: 8-bit multiply + add"}
    assert targets.parse(d).dtypes == ("fp32", "int8")
    out = run_cli("targets")
    assert out.returncode == 0 and "loihi" in out.stdout and "neuromorphic" in out.stdout
    out = run_cli("targets", "show", "neuromorphic-45nm")
    assert out.returncode == 0 and "energy_sop_pj" in out.stdout and "Horowitz" in out.stdout


def test_missing_snntorch_is_one_line_naming_the_extra(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "snntorch.py").write_text("raise ImportError('No module named snntorch')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-m", "hwai", "snn", "train", "--data", "digits"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "snntorch" in r.stderr and "hwai[snn]" in r.stderr


def test_cli_train_profile_and_report(tmp_path):
    out = tmp_path / "run [1] é"
    r = run_cli("snn", "train", "--model", "mlp", "--data", "digits", "--width", "0.25", "--epochs", "2",
                "--steps", "4", "--learn-neurons", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "spikes/neuron" in r.stdout and "predicted" in r.stdout and "measured" in r.stdout
    assert "than the ANN" in r.stdout or "different from the ANN" in r.stdout
    res = json.loads((out / "results.json").read_text())
    snn = res["snn"]
    assert res["command"] == "snn train" and res["kinds"]["energy_mj"] == "predicted"
    assert res["best"]["metrics"]["accuracy"] == snn["activity"]["accuracy"] > 0.3
    assert snn["energy"][0]["target"] == "neuromorphic-45nm" and snn["energy"][0]["ratio"] > 0
    assert snn["ann_targets"][0]["target"] == "stm32h743" and snn["latency"]["kind"] == "measured"
    assert any(layer["spikes"] for layer in snn["activity"]["raster"]["layers"])
    html = (out / "report.html").read_text()
    for part in ("snn-raster", "snn-rates", "Spiking activity and energy", "energy SNN / ANN"):
        assert part in html
    stored = torch.load(out / "model.pt", weights_only=True)
    assert math.isclose(stored["metrics"]["test_accuracy"], snn["activity"]["accuracy"])
    assert stored["snn"]["learn"] is True and any(k.endswith("neuron.threshold") for k in stored["state_dict"])
    r = run_cli("profile", "--model", out / "model.pt", "--data", "digits", "--target", "stm32h743")
    assert r.returncode == 0, r.stderr
    assert "SOPs" in r.stdout and "ANN MACs" in r.stdout and "stm32h743" in r.stdout
    r = run_cli("report", out, "--format", "md")
    assert r.returncode == 0 and "**Spiking:**" in r.stdout


def test_cli_user_errors_exit_2(tmp_path):
    for bad in (dict(coding="morse"), dict(surrogate="relu"), dict(steps=0), dict(beta=1.5), dict(threshold=0)):
        with pytest.raises(UserError):
            SNNConfig(**bad)
    with pytest.raises(UserError, match="percentiles"):
        ConvertConfig(percentiles=(10.0,))
    for args in (["snn", "train", "--coding", "morse"], ["snn", "convert", "--model", tmp_path / "none.pt"],
                 ["profile", "--model", "mlp", "--data", "digits", "--target", "loihi"]):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)


def test_cli_convert_reports_accuracy_per_steps(tmp_path):
    ann = tmp_path / "ann.pt"
    assert run_cli("train", "--model", "mlp", "--data", "digits", "--width", "0.25", "--epochs", "2",
                   "--out", ann).returncode == 0
    out = tmp_path / "conv"
    r = run_cli("snn", "convert", "--model", ann, "--steps", "4,32", "--percentiles", "99.9,100",
                "--calibration-samples", "200", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "chosen on validation" in r.stdout and "test accuracy" in r.stdout
    conv = json.loads((out / "results.json").read_text())["snn"]["conversion"]
    assert [s["steps"] for s in conv["sweep"]] == [4, 32] and conv["percentile"] in (99.9, 100.0)
    assert conv["sweep"][1]["accuracy"] > conv["sweep"][0]["accuracy"]
    assert "snn-conversion" in (out / "report.html").read_text()
