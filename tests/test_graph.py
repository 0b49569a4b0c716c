import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwai import graph, models


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "dscnn", "mlp"])
def test_macs_match_torch_flop_counter_and_params_match(name):
    model = models.create(name, num_classes=10, in_channels=3, input_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    g = graph.capture(model, x)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert g.method == "fx" and g.notice is None
    assert g.macs == pytest.approx(counter.get_total_flops() / 2, rel=0.01)
    assert g.params == sum(p.numel() for p in model.parameters())


def test_node_annotations_on_a_hand_computed_conv():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5))
    g = graph.capture(model, torch.randn(2, 3, 4, 4))
    conv = g["0"]
    assert conv.output_shape == (2, 8, 4, 4) and conv.dtype == "float32"
    assert conv.macs == 2 * 8 * 4 * 4 * 3 * 9 and conv.params == 8 * 3 * 9
    assert conv.weight_bytes == 8 * 3 * 9 * 4
    assert conv.input_bytes == 2 * 3 * 16 * 4 and conv.output_bytes == 2 * 8 * 16 * 4
    assert conv.fusion == "conv+batchnorm+relu" and g["1"].fused_into == "0" and g["2"].fused_into == "0"
    assert g["3"].activation_bytes == 0  # flatten is a view
    assert g["4"].macs == 2 * 128 * 5 and g["4"].inputs == ["3"]


def test_residual_add_is_not_fused_and_has_two_producers():
    g = graph.capture(models.create("resnet8", 10, 3, 32), torch.randn(1, 3, 32, 32))
    adds = [n for n in g.nodes if n.op == "add"]
    assert len(adds) == 3 and all(len(n.inputs) == 2 for n in adds)
    assert g["layers.0.0.conv2"].fusion == "conv+batchnorm"  # its ReLU comes after the add


class Dynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = self.a(x)
        return self.b(x)


def test_untraceable_model_falls_back_to_hooks_with_a_notice():
    model = Dynamic()
    g = graph.capture(model, torch.ones(1, 4))
    assert g.method == "hooks" and "torch.fx could not trace Dynamic" in g.notice
    assert [n.name for n in g.nodes] == ["a", "b"]
    assert g.macs == 16 + 8 and g.params == sum(p.numel() for p in model.parameters())


def test_a_module_called_twice_gets_two_nodes_and_its_weights_count_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    g = graph.capture(Twice(), torch.ones(1, 4))
    assert [n.name for n in g.nodes] == ["fc", "fc#1"] and g.nodes[1].inputs == ["fc"]
    assert g.params == 20 and g.macs == 32
