"""Arena plans, patch-based schedules and the PyTorch executor that runs them (hwai.memory.planner / patch / executor)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwai import cost, memory, models, targets
from hwai.errors import UserError
from hwai.memory import executor


class SE(nn.Module):
    """Squeeze-and-excitation: a global pool, two 1x1 convs, a sigmoid gate on the input."""

    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class UserNet(nn.Module):
    """A user's net: a residual block with functional ops, max and average pools, a strided depthwise conv, SE."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c1, self.b1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 5, padding=2, bias=False), nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.dw = nn.Conv2d(16, 16, 3, 2, 1, groups=16)
        self.avg = nn.AvgPool2d(2)
        self.se = SE(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = F.relu(self.b1(self.c1(x)))
        x = F.relu(x + self.b2(self.c2(y)))
        x = torch.relu(self.dw(self.pool(x)))
        x = self.se(self.avg(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class OddNet(nn.Module):
    """Corner cases: a residual on the model input, 'same' padding with an even kernel, dilation, stride 3,
    ceil-mode max pool, padded average pool, a channel concat."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(2, 2, 3, padding=1)
        self.a = nn.Conv2d(2, 6, 4, padding="same")
        self.b = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.c = nn.Conv2d(6, 8, 5, stride=3, padding=1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 1, 1)
        self.fc = nn.Linear(16 * 4 * 4, 3)

    def forward(self, x):
        x = x + self.pre(x)  # a residual on the model input
        x = torch.sigmoid(self.b(F.relu6(self.a(x))))
        y = self.c(x)
        y = torch.cat([self.pool(y), self.pool(-y)], dim=1)
        return self.fc(torch.flatten(self.avg(y), 1))


def _randomize_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


NETS = {
    "user": lambda: (UserNet(), (2, 3, 20, 20)),
    "odd": lambda: (OddNet(), (1, 2, 23, 23)),
    "resnet8": lambda: (models.create("resnet8", 10, 3, 16, width=0.5), (1, 3, 16, 16)),
    "mobilenetv2": lambda: (models.create("mobilenetv2", 10, 3, 32, width=0.35), (1, 3, 32, 32)),
    "dscnn": lambda: (models.create("dscnn", 10, 1, 20, width=0.25), (1, 1, 20, 20)),
    "cnn": lambda: (models.create("cnn", 10, 1, 16, width=0.25), (2, 1, 16, 16)),
}


@pytest.fixture(scope="module", params=sorted(NETS))
def net(request):
    torch.manual_seed(0)
    model, shape = NETS[request.param]()
    model = _randomize_bn(model)
    x = torch.randn(shape)
    return request.param, model, x, memory.capture(model, x)


def _schedules(graph, name):
    points = memory.split_points(graph)
    assert points, f"{name}: no split point"
    picks = sorted({0, len(points) // 2, len(points) - 1})
    return [(None, 1)] + [(points[i], g) for i in picks for g in (2, 3)
                          if g <= min(graph[points[i]].output_shape[-2:])]


def test_executor_matches_the_model_and_the_plan(net):
    """Every schedule gives the model's outputs (FP32), and the executor holds exactly the bytes the plan predicts."""
    name, model, x, graph = net
    with torch.no_grad():
        ref = model(x)
    for i, (split, grid) in enumerate(_schedules(graph, name)):
        for precision in (None, "int8") if i in (0, 2) else (None,):
            plan = memory.plan(graph, precision, split=split, grid=grid)
            run = executor.run(model, x, plan)
            delta = (run.output - ref).abs().max().item()
            assert delta <= 1e-5, f"{name} split {split} grid {grid}: max |delta| {delta}"
            assert run.live_bytes == list(plan.live_bytes), f"{name} split {split} grid {grid} {precision}"
            assert run.peak_bytes == plan.peak_bytes


def test_arena_offsets_never_overlap_for_live_buffers(net):
    name, _, _, graph = net
    for split, grid in _schedules(graph, name)[:3]:
        plan = memory.plan(graph, "int8", split=split, grid=grid)
        b = plan.buffers
        first, last = np.array([x.first for x in b]), np.array([x.last for x in b])
        lo, hi = np.array([x.offset for x in b]), np.array([x.offset + x.nbytes for x in b])
        together = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
        overlap = (lo[:, None] < hi[None, :]) & (lo[None, :] < hi[:, None])
        np.fill_diagonal(together, False)
        assert not (together & overlap).any(), name
        assert plan.peak_bytes <= plan.arena_bytes <= plan.sum_bytes
        assert plan.arena_bytes == hi.max()


def test_layer_by_layer_is_hwai_memory_lifetimes(net):
    """Without in-place and patches the planner's peak is hwai.memory.peak_bytes; int8 quarters every buffer."""
    name, _, x, graph = net
    order = memory.best_order(graph)
    plain = memory.plan(graph, inplace=False)
    assert plain.peak_bytes == plain.layer_by_layer_bytes == memory.peak_bytes(graph, order)
    assert memory.plan(graph, "int8", inplace=False).peak_bytes * 4 == pytest.approx(plain.peak_bytes, abs=8)
    assert plain.input_bytes == x.numel() * 4 and plain.input_counted
    assert memory.plan(graph).peak_bytes <= plain.peak_bytes  # in place never raises the peak here


@pytest.fixture(scope="module")
def mbv2():
    """mobilenetv2 w0.35 at 64 px: (model, input, annotated graph)."""
    torch.manual_seed(0)
    model, x = models.create("mobilenetv2", 10, 3, 64, width=0.35).eval(), torch.randn(1, 3, 64, 64)
    return model, x, memory.capture(model, x)


def test_per_node_precision_sizes_buffers(mbv2):
    g = mbv2[2]
    first = g.nodes[0].name
    mixed = memory.plan(g, {first: "int8"}, inplace=False)
    step = next(s for s in mixed.steps if s.node == first)
    assert step.nbytes * 4 == g.nodes[0].output_bytes and step.elem_bytes == 1
    assert mixed.input_bytes == math.prod(g.input_shape)  # the input takes its first reader's dtype
    with pytest.raises(UserError, match="unknown dtype or node"):
        memory.plan(g, "int3")
    with pytest.raises(UserError, match="unknown dtype or node"):
        memory.plan(g, {"no.such.node": "int8"})


def test_in_place_depthwise_holds_one_channel(mbv2):
    """A depthwise conv in place keeps its input buffer plus one output channel (TinyEngine's scheme)."""
    g = mbv2[2]
    plan = memory.plan(g, "int8")
    dw = next(s for s in plan.steps if s.inplace_into and g[s.node].op == "conv")
    assert dw.scratch_bytes == math.prod(g[dw.node].output_shape[-2:])
    assert plan.peak_bytes < plan.layer_by_layer_bytes


def test_best_plan_lowers_the_peak_and_fits_an_sram_budget(mbv2):
    g = mbv2[2]
    best = memory.best_plan(g, "int8")
    assert best.split is not None and best.arena_bytes * 2 < best.layer_by_layer_bytes
    assert best.peak_bytes == memory.plan(g, "int8", split=best.split, grid=best.grid).peak_bytes
    budget = (best.arena_bytes + memory.plan(g, "int8").arena_bytes) // 2
    fitted = memory.best_plan(g, "int8", sram_bytes=budget)
    assert fitted.arena_bytes <= budget and fitted.extra_macs <= best.extra_macs
    roomy = memory.best_plan(g, "int8", sram_bytes=10 * best.layer_by_layer_bytes)
    assert roomy.split is None and roomy.extra_macs == 0  # no patches when the plain plan fits


def test_halo_macs_and_predicted_latency(mbv2):
    g = mbv2[2]
    plan = memory.plan(g, "int8", split=memory.split_points(g)[4], grid=4)
    assert plan.extra_macs > 0 and plan.macs == g.macs + plan.extra_macs
    patched = memory.patched_graph(g, plan)
    assert patched.macs == pytest.approx(plan.macs, rel=1e-3)
    base_ms, patch_ms = cost.patch_latency(g, plan, targets.load("stm32h743"))
    assert 0 < base_ms < patch_ms  # the same work plus the halo and one kernel call per patch


def test_split_points_stop_at_non_local_ops():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 20, 20)
    g = memory.capture(UserNet().eval(), x)
    points = memory.split_points(g)
    assert "avg" in points and not any(p.startswith("se") or p == "head" for p in points)
    with pytest.raises(UserError, match="not a split point"):
        memory.plan(g, split="head")
    with pytest.raises(UserError, match="does not fit"):
        memory.plan(g, split=points[-1], grid=50)
    from hwai.graph import capture

    with pytest.raises(UserError, match="hwai.memory.capture"):  # a graph without annotations has no split points
        memory.plan(capture(UserNet().eval(), x), split="avg", grid=2)


def test_report_section_feeds_the_memory_chart(tmp_path, mbv2):
    from hwai.report import figures
    from hwai.report.run import Run

    g = mbv2[2]
    sram = memory.plan(g, "int8").arena_bytes - 1  # forces patches
    section = memory.report(g, "int8", sram)
    peaks = section["peaks"]
    assert peaks["patch_bytes"] <= sram < peaks["planned_bytes"] <= peaks["layer_by_layer_bytes"]
    assert len(section["planned_timeline"]) == len(section["timeline"])
    run = Run(tmp_path, tmp_path / "results.json", {"memory": section, "target": {"name": "t", "sram_bytes": sram}})
    fig = figures.memory(run)
    assert [t.name for t in fig.data][1] == "planned, in place (predicted)"
    labels = " ".join(a.text for a in fig.layout.annotations)
    assert "layer by layer (predicted)" in labels and "patch-based" in labels and "target SRAM" in labels


def test_cli_memory_plan(tmp_path):
    import json

    from conftest import run_cli

    out = tmp_path / "plan [a].json"
    done = run_cli("memory", "plan", "--model", "resnet8", "--shape", "3x32x32", "--width", "0.5", "--lowest",
                   "--verify", "--json", out)
    assert done.returncode == 0, done.stderr
    assert "equal to the plan at every step" in done.stdout
    plans = json.loads(out.read_text())
    assert plans["patch"]["arena_bytes"] < plans["layer_by_layer"]["peak_bytes"] and plans["kind"] == "predicted"
    bad = run_cli("memory", "plan", "--model", "resnet8", "--shape", "3x32x32", "--split", "fc")
    assert bad.returncode == 2 and "not a split point" in bad.stderr and "Traceback" not in bad.stderr


class TwoOutputs(nn.Module):
    """Returns an intermediate that a later layer also reads."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.relu(self.c(x))
        return y, self.d(y)


def test_returned_intermediates_stay_whole():
    model, x = TwoOutputs().eval(), torch.randn(1, 3, 12, 12)
    g = memory.capture(model, x)
    assert memory.split_points(g) == ["relu"]  # no patch stage may run past a value the model returns
    ref = model(x)
    for split, grid in ((None, 1), ("relu", 3)):
        plan = memory.plan(g, split=split, grid=grid)
        run = executor.run(model, x, plan)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(run.output, ref))
        assert run.live_bytes == list(plan.live_bytes)
    with pytest.raises(UserError, match="plan is for inputs of shape"):
        executor.run(model, torch.randn(2, 3, 12, 12), memory.plan(g))


def test_input_buffer_is_counted_unless_left_out(mbv2):
    model, x, g = mbv2
    counted, free = memory.plan(g, "int8"), memory.plan(g, "int8", count_input=False)
    assert counted.input_counted and counted.input_bytes == x.numel()
    assert not free.input_counted and free.input_bytes == 0
    assert counted.live_bytes[0] - free.live_bytes[0] == x.numel()  # the stem's step held the int8 input
    assert free.layer_by_layer_bytes <= counted.layer_by_layer_bytes
    best = memory.best_plan(g, "int8", count_input=False)
    assert best.split and not best.input_counted
    assert executor.run(model, x, best).live_bytes == list(best.live_bytes)
