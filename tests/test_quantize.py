import pytest
import torch
from torch import nn

from hwai import models, train
from hwai.errors import UserError
from hwai.passes.quantize import QuantConfig, QuantLayer, fake_weight, quant_layers, quantize, weight_qparams


@pytest.fixture(scope="module")
def trained(digits):
    train.seed_everything(0)
    model = models.create("cnn", 10, 1, 8, width=0.25)
    train.train(model, digits, train.TrainConfig(epochs=4, augment=False), progress=False)
    return model.eval()


def test_int8_ptq_keeps_accuracy(trained, digits):
    base = train.evaluate(trained, digits)
    q = quantize(trained, QuantConfig(bits=8), calib=digits, progress=False)
    assert len(quant_layers(q)) == 7  # six convs and the classifier
    assert train.evaluate(q, digits) >= base - 0.03


def test_qat_improves_on_ptq_at_4_bits(trained, digits):
    cfg = QuantConfig(bits=4, activation_bits=4)
    ptq = train.evaluate(quantize(trained, cfg, calib=digits, progress=False), digits)
    qat = train.evaluate(quantize(trained, QuantConfig(bits=4, activation_bits=4, qat_epochs=2), calib=digits,
                                  progress=False), digits)
    assert qat > ptq, (ptq, qat)


def test_weights_land_on_a_per_channel_4_bit_grid_with_straight_through_gradients():
    w = torch.randn(6, 3, 3, 3, requires_grad=True)
    q = fake_weight(w, 4)
    for channel in q.detach():
        assert len(torch.unique(channel)) <= 16  # -8..7
    q.sum().backward()
    scale, qmin, qmax = weight_qparams(w, 4)
    inside = (torch.round(w.detach() / scale.view(-1, 1, 1, 1)) <= qmax) & (w.detach() / scale.view(-1, 1, 1, 1) >= qmin)
    # STE: identity inside the range; only a channel's positive extreme (+7.5 steps, rounded to 8) is clipped
    assert torch.equal(w.grad, inside.float()) and inside.float().mean() > 0.95


def test_per_layer_bits_by_name_regex_and_default(trained, digits):
    cfg = QuantConfig(per_layer={"_default": 8, "re:[01]\\.0": 4, "11": 32})
    q = quantize(trained, cfg, calib=digits, progress=False)
    bits = {n: m.weight_bits for n, m in quant_layers(q).items()}
    assert "11" not in bits and isinstance(q[11], nn.Linear)  # the classifier stayed FP32
    assert bits["0.0"] == 4 and bits["1.0"] == 4 and bits["3.0"] == 8


def test_calibration_methods_clip_the_tail(trained, digits):
    scales = {}
    for method in ("minmax", "percentile", "entropy"):
        q = quantize(trained, QuantConfig(method=method, percentile=99.0), calib=digits, progress=False)
        scales[method] = [float(m.act_scale) for m in quant_layers(q).values()]
    assert all(p <= m for p, m in zip(scales["percentile"], scales["minmax"]))
    assert sum(scales["entropy"]) < sum(scales["minmax"])


def test_mistakes_are_user_errors(trained, digits):
    with pytest.raises(UserError):
        QuantConfig(bits=3)
    with pytest.raises(UserError):
        QuantConfig(method="mse")
    with pytest.raises(UserError, match="matches no layer"):
        quantize(trained, QuantConfig(per_layer={"nosuch": 4}), calib=digits)
    with pytest.raises(UserError, match="calibration data"):
        quantize(trained, QuantConfig())
    assert not isinstance(trained[0][0], QuantLayer)  # the input model is never modified
