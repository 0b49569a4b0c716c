"""Kernel detection (hwai.cost.kernels) against what ONNX Runtime's profiler says it ran."""
import collections
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hwai import graph
from hwai.calibrate.cases import Case, build, onnx_of
from hwai.cost.kernels import detect, listing, onnxruntime_cpu
from hwai.cost.lowering import lower
from hwai.measure import ort_session
from hwai.measure.ort_trace import kernel_op


def profiled(onnx_model: bytes, shape: tuple) -> list[tuple]:
    """(op, first input shape, output shape) of every kernel one ONNX Runtime run executed."""
    session = ort_session(onnx_model, 1, profile=True)
    session.run(None, {session.get_inputs()[0].name: np.zeros(shape, dtype=np.float32)})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    out = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            args = e["args"]
            ins = [next(iter(x.values())) for x in args["input_type_shape"]]
            outs = [next(iter(x.values())) for x in args["output_type_shape"]]
            out.append((kernel_op(e["name"][:-12], args["op_name"]), tuple(ins[0]) if ins else (), tuple(outs[0])))
    return out


@pytest.fixture(scope="module")
def block() -> int:
    """This machine's NCHWc block: the channels ONNX Runtime pads a 1-channel conv output to (0: no NCHWc)."""
    conv = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.ReLU())
    from hwai.calibrate.cases import export_onnx

    op, _, out = profiled(export_onnx(conv, torch.zeros(1, 3, 8, 8)), (1, 3, 8, 8))[0]
    return out[1] if op == "NchwcConv" else 0


def detected(g: graph.Graph, int8: bool, block: int) -> list[tuple]:
    channels = np.array([[n.output_shape[1] if len(n.output_shape) > 1 else 1 for n in g.nodes]])
    return listing(detect(lower(g), onnxruntime_cpu(block), channels, np.full(channels.shape, int8)))


@pytest.mark.parametrize("model,size,width,dtype", [
    ("resnet8", 16, 0.5, "fp32"), ("resnet8", 16, 0.75, "int8"), ("mobilenetv2", 16, 0.35, "fp32"),
    ("mobilenetv2", 16, 0.75, "int8"), ("mlp", 16, 0.25, "int8"), ("cnn", 16, 0.75, "fp32"), ("dscnn", 16, 0.5, "int8")])
def test_detection_matches_onnxruntime_profiler(model, size, width, dtype, block):
    case = Case(model, size, width, dtype)
    net, example, g = build(case)
    ran = profiled(onnx_of(case, net), tuple(example.shape))
    assert collections.Counter(detected(g, dtype == "int8", block)) == collections.Counter(ran)


def test_fused_conv_bn_relu_is_one_kernel_and_qdq_conv_one_qlinearconv(block):
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()).eval()
    example = torch.randn(1, 3, 16, 16)
    g = graph.capture(net, example)
    fp32 = detected(g, False, block)
    ops = [k[0] for k in fp32]  # conv, BN and ReLU: one kernel (+ a layout reorder of the output)
    assert [o for o in ops if "Conv" in o] == (["NchwcConv"] if block else ["FusedConv"])
    assert not {"BatchNormalization", "Relu"} & set(ops)
    int8 = [k[0] for k in detected(g, True, block)]
    assert int8.count("QLinearConv") == 1 and not {"Conv", "FusedConv", "BatchNormalization", "Relu"} & set(int8)
    assert int8[0] == "QuantizeLinear" and int8[-1] == "DequantizeLinear"  # float model input and output
    from hwai.calibrate.cases import export_onnx, quantize_int8

    onnx_fp32 = export_onnx(net, example)
    assert collections.Counter(fp32) == collections.Counter(profiled(onnx_fp32, (1, 3, 16, 16)))
    assert sorted(int8) == sorted(k[0] for k in profiled(quantize_int8(onnx_fp32, example), (1, 3, 16, 16)))


def test_batch_detection_equals_one_candidate_at_a_time():
    g = build(Case("resnet8", 16, 1.0))[2]
    prog = lower(g)
    rng = np.random.default_rng(0)
    c0 = np.array([n.output_shape[1] if len(n.output_shape) > 1 else 1 for n in g.nodes])
    channels = np.maximum(1, np.rint(c0 * rng.uniform(0.2, 1.0, (6, len(c0))))).astype(int)
    int8 = rng.random((6, len(c0))) < 0.5
    batch = detect(prog, onnxruntime_cpu(16), channels, int8)
    for b in range(6):
        one = detect(prog, onnxruntime_cpu(16), channels[b:b + 1], int8[b:b + 1])
        assert collections.Counter(listing(batch, b)) == collections.Counter(listing(one))
    assert len({tuple(listing(batch, b)) for b in range(6)}) > 1  # the candidates really differ


def test_no_nchwc_runtime_runs_plain_convs():
    g = build(Case("resnet8", 16, 0.5))[2]
    ops = {k[0] for k in detected(g, False, 0)}
    assert "FusedConv" in ops and not {"NchwcConv", "ReorderInput", "ReorderOutput"} & ops


@pytest.mark.parametrize("model,cut", [("resnet8", "layers.0.0.relu1"), ("mobilenetv2", "3.block.1.2"), ("mobilenetv2", "add")])
def test_a_pipeline_stage_is_a_model_of_its_own(model, cut, block):
    """The second stage of a split (its received tensors as inputs: two of them inside a residual block) runs
    the kernels detected from its part graph."""
    from hwai import models, targets
    from hwai.shard.link import load as load_link
    from hwai.shard.plan import Device, Planner
    from hwai.shard.split import split

    net = models.create(model, num_classes=10, in_channels=3, input_size=16, width=0.5).eval()
    example = torch.randn(1, 3, 16, 16)
    planner = Planner(graph.capture(net, example), [Device(targets.load("host"))] * 2, [load_link("loopback")])
    pos = next(k for k in planner.positions if planner.label(k) == cut)
    part = planner.part_graph(pos, len(planner.nodes))
    pipe = split(net, planner.graph, [pos], example)
    seen = {}
    handle = pipe.get_stage_module(1).register_forward_pre_hook(lambda m, args: seen.setdefault("args", args))
    with torch.no_grad():
        pipe(example)
    handle.remove()
    args = seen["args"]
    assert len(args) == len(planner.crossing(pos)) == (1 if cut == "add" else 2)
    from hwai.calibrate.cases import export_onnx, input_names

    stage = export_onnx(pipe.get_stage_module(1), args)
    session = ort_session(stage, 1, profile=True)
    session.run(None, {n: a.numpy() for n, a in zip(input_names(len(args)), args)})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    ran = collections.Counter((kernel_op(e["name"][:-12], e["args"]["op_name"]),
                               tuple(next(iter(e["args"]["output_type_shape"][0].values()))))
                              for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    found = collections.Counter((op, out) for op, _, out in detected(part, False, block))
    assert found == ran
