import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwai import cost, graph, models, targets
from hwai.graph import Graph
from tests.test_memory import node


def src(v):
    return {"value": v, "source": "hand-made test figure"}


def toy_target(**overrides) -> targets.Target:
    raw = {"name": "toy", "description": "round numbers", "kind": "cpu", "runtime": "none", "weights_in": "dram",
           "dtypes": ["fp32", "int8"], "ops": ["conv", "linear", "relu", "add", "reshape"],
           "sparsity_accelerated": False, "peak_fp32_gops": src(1), "peak_int8_gops": src(4),
           "sram_kib": src(1024), "dram_mib": src(1024), "sram_gbps": src(1), "dram_gbps": src(0.5),
           "energy_fp32_pj_per_mac": src(1), "energy_int8_pj_per_mac": src(0.25),
           "energy_sram_pj_per_byte": src(2), "energy_dram_pj_per_byte": src(10),
           "efficiency": {"_default": src(0.5)}, "overhead_us": {"_default": src(1)}}
    raw.update(overrides)
    return targets.parse(raw, "toy.yaml")


def linear_graph() -> Graph:
    return Graph([node("fc", "linear", [], 4000, 4000, macs=1_000_000, weight_bytes=4_000_000)], "fx", (1, 1000))


def test_roofline_arithmetic_by_hand():
    p = cost.predict(linear_graph(), toy_target())
    # compute 2e6 ops / (1e9 x 0.5) = 4 ms; weights 4 MB miss the 1 MiB SRAM: 4e6 B / 0.5e9 = 8 ms,
    # activations 8 kB / 1e9 = 0.008 ms; + 1 us overhead
    (layer,) = p.layers
    assert layer.compute_ms == pytest.approx(4.0) and layer.memory_ms == pytest.approx(8.008)
    assert p.latency_ms == pytest.approx(8.009) and layer.bound == "memory"
    assert p.energy_mj == pytest.approx((1e6 * 1e-12 + 8000 * 2e-12 + 4e6 * 10e-12) * 1e3)
    assert p.kind == "predicted" and p.target == "toy" and p.weight_bytes == 4_000_000
    q = cost.predict(linear_graph(), toy_target(), precision="int8")
    # int8: 2e6 / (4e9 x 0.5) = 1 ms; 1 MB weights + 2 kB activations now fit the SRAM: 1e6 / 1e9 = 1 ms
    assert q.layers[0].compute_ms == pytest.approx(1.0) and q.layers[0].memory_ms == pytest.approx(1.002)
    assert q.latency_ms == pytest.approx(1.003)


def test_int8_faster_only_where_supported():
    g = linear_graph()
    fp32_only = toy_target(dtypes=["fp32"])
    fp32, int8 = cost.predict(g, fp32_only), cost.predict(g, fp32_only, precision="int8")
    assert int8.latency_ms == pytest.approx(fp32.latency_ms) and "no int8 kernels" in int8.notes[0]
    toy = toy_target()
    assert cost.predict(g, toy, precision="int8").latency_ms < cost.predict(g, toy).latency_ms
    int4 = cost.predict(g, toy, precision="int4")  # no int4 peak: falls back to int8 and says so
    assert int4.latency_ms == pytest.approx(cost.predict(g, toy, precision="int8").latency_ms)
    assert any("int4 layers predicted as int8" in n for n in int4.notes)
    tpu = cost.predict(g, targets.load("edgetpu"))
    assert any("no fp32 kernels" in n for n in tpu.notes) and tpu.layers[0].dtype == "int8"


def test_sparsity_helps_only_where_accelerated():
    g = Graph([node("fc", "linear", [], 40, 40, macs=10**9, weight_bytes=4000)], "fx", (1, 10))  # compute bound
    dense = toy_target()
    assert cost.predict(g, dense, sparsity={"fc": 0.9}).latency_ms == pytest.approx(cost.predict(g, dense).latency_ms)
    assert "does not accelerate sparsity" in cost.predict(g, dense, sparsity={"fc": 0.9}).notes[0]
    sparse = toy_target(sparsity_accelerated=True, sparse_speedup_max=src(2))
    base = cost.predict(g, sparse).latency_ms
    assert cost.predict(g, sparse, sparsity={"fc": 0.25}).latency_ms == pytest.approx(0.75 * base, rel=1e-3)
    assert cost.predict(g, sparse, sparsity={"fc": 0.9}).latency_ms == pytest.approx(0.5 * base, rel=1e-3)  # 2:4 cap


@pytest.fixture(scope="module")
def resnet8_graph():
    model = models.create("resnet8", num_classes=10, in_channels=3, input_size=16, width=0.5)
    return graph.capture(model, torch.randn(1, 3, 16, 16))


def test_fusion_reduces_bytes_and_latency(resnet8_graph):
    for name in ("stm32h743", "rpi4", "toy"):
        t = toy_target() if name == "toy" else targets.load(name)
        fused, unfused = cost.predict(resnet8_graph, t), cost.predict(resnet8_graph, t, fuse=False)
        assert sum(l.bytes for l in fused.layers) < 0.8 * sum(l.bytes for l in unfused.layers)
        assert fused.latency_ms < unfused.latency_ms and len(fused.layers) < len(unfused.layers)


def test_more_macs_never_faster_over_real_widths():
    example = torch.randn(1, 3, 16, 16)
    graphs = [graph.capture(models.create("cnn", 10, 3, 16, width=w), example) for w in (0.25, 0.5, 1.0)]
    for name in ("stm32h743", "esp32s3", "rpi4", "x86-avx2", "jetson-orin-nano", "edgetpu", "h100", "host"):
        t = targets.load(name)
        lat = [cost.predict(g, t).latency_ms for g in graphs]
        assert lat == sorted(lat), name


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.1, 1.0), min_size=2, max_size=2), st.floats(0.0, 0.9),
       st.sampled_from(["stm32h743", "rpi4", "x86-avx2", "jetson-orin-nano", "edgetpu", "h100"]))
def test_more_channels_never_predict_faster(resnet8_graph, scales, grow, name):
    scorer = cost.prepare(resnet8_graph, targets.load(name))
    rng = np.random.default_rng(int(grow * 1000))
    small = rng.uniform(min(scales), max(scales), len(scorer.node_names))
    big = np.minimum(small * (1 + grow), 1.0)
    s = scorer.score(channel_scale=np.stack([small, big]))
    assert s.latency_ms[0] <= s.latency_ms[1] * (1 + 1e-12) and s.energy_mj[0] <= s.energy_mj[1] * (1 + 1e-12)
    assert s.peak_activation_bytes[0] <= s.peak_activation_bytes[1]


def test_batch_scoring_equals_predict(resnet8_graph):
    rng = np.random.default_rng(0)
    names = [n.name for n in resnet8_graph.nodes]
    for target in (targets.load("jetson-orin-nano"), targets.load("stm32h743")):
        scorer = cost.prepare(resnet8_graph, target)
        precisions = [{n: str(rng.choice(["fp32", "fp16", "int8", "int4"])) for n in names} for _ in range(6)]
        sparsities = [{n: float(rng.uniform(0, 0.8)) for n in names} for _ in range(6)]
        bits = np.array([[cost.BITS[p[n]] for n in scorer.node_names] for p in precisions])
        sp = np.array([[s[n] for n in scorer.node_names] for s in sparsities])
        batch = scorer.score(bits=bits, sparsity=sp)
        for i in range(6):
            p = cost.predict(resnet8_graph, target, precision=precisions[i], sparsity=sparsities[i])
            assert batch.latency_ms[i] == pytest.approx(p.latency_ms, rel=1e-9)
            assert batch.energy_mj[i] == pytest.approx(p.energy_mj, rel=1e-9)
            assert batch.peak_activation_bytes[i] == pytest.approx(p.peak_activation_bytes, abs=1)
            assert bool(batch.fits[i]) == p.fits
        scales = rng.uniform(0.25, 1.0, (5, len(names)))
        many = scorer.score(channel_scale=scales, bits=bits[:5])
        one = [scorer.score(channel_scale=scales[i], bits=bits[i]).latency_ms[0] for i in range(5)]
        assert many.latency_ms == pytest.approx(one, rel=1e-12)


def test_peak_memory_and_fit_message():
    example = torch.randn(1, 3, 32, 32)
    big = graph.capture(models.create("mobilenetv2", 10, 3, 32), example)
    small = graph.capture(models.create("cnn", 10, 3, 32, width=0.25), example)
    stm = targets.load("stm32h743")
    p = cost.predict(big, stm)
    assert not p.fits and p.fit_message.startswith("does not fit by") and "KiB" in p.fit_message
    assert p.peak_activation_bytes > 0 and p.weight_bytes > 2 * 2**20 and p.energy_mj > 0
    q = cost.predict(small, stm, precision="int8")
    assert q.fits and q.fit_message.startswith("fits") and q.sram_bytes_needed == q.peak_activation_bytes
    assert "predicted" in q.describe() and q.to_dict()["layers"][0]["bound"] in ("compute", "memory", "overhead")


@pytest.mark.parametrize("name,width", [("resnet8", 1.0), ("mobilenetv2", 0.35)])
def test_pytorch_int8_and_its_exported_int8_onnx_predict_the_same_on_an_mcu(name, width, tmp_path):
    """Issue 11.6: an int8 runtime keeps int8 tensors and folds Quantize/Dequantize into its kernels, so the
    model with an int8 policy and its exported QDQ INT8 ONNX get the same peak SRAM and latency."""
    from hwai import data
    from hwai.graph.onnx import capture_onnx
    from hwai.runtimes import export

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((64, 3, 32, 32), dtype=np.float32), y=rng.integers(0, 10, 64))
    net = models.create(name, num_classes=10, in_channels=3, input_size=32, width=width).eval()
    example = torch.randn(1, 3, 32, 32)
    path = export.to_onnx(net, example, tmp_path / "int8.onnx", int8=True, calib=data.load(f"npz:{tmp_path / 'd.npz'}"))
    g, (onnx_g, _) = graph.capture(net, example), capture_onnx(path, (1, 3, 32, 32))
    stm = targets.load("stm32h743")
    torch_int8, onnx_int8 = cost.predict(g, stm, precision="int8"), cost.predict(onnx_g, stm)
    assert onnx_int8.sram_bytes_needed == pytest.approx(torch_int8.sram_bytes_needed, rel=0.05)
    assert onnx_int8.latency_ms == pytest.approx(torch_int8.latency_ms, rel=0.05)
    # int8 buffers: a quarter of the float peak, and the ONNX graph's int8 layers write one byte per element
    assert torch_int8.peak_activation_bytes == pytest.approx(cost.predict(g, stm).peak_activation_bytes / 4, rel=0.02)
    assert all(n.dtype in ("int8", "uint8") for n in onnx_g.nodes)
    assert all(n.output_bytes == np.prod(n.output_shape) for n in onnx_g.nodes if n.op in ("conv", "add", "pool"))
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.target for n in onnx_g.nodes}  # folded into the edges
    layers = lambda gr: [n.op for n in gr.nodes if n.op in ("conv", "linear", "add", "pool")]  # noqa: E731
    assert layers(onnx_g) == layers(g)
    # a CPU runtime keeps the model input float (ONNX Runtime quantizes it with a kernel of its own)
    host = cost.predict(onnx_g, targets.load("x86-avx2"), model="roofline")
    assert host.peak_activation_bytes >= onnx_int8.peak_activation_bytes


def test_activation_timeline_peaks_at_the_predicted_peak(resnet8_graph):
    stm = targets.load("stm32h743")
    for precision in (None, "int8"):
        line = cost.activation_timeline(resnet8_graph, stm, precision=precision)
        p = cost.predict(resnet8_graph, stm, precision=precision)
        assert max(b for _, b in line) == pytest.approx(p.peak_activation_bytes, abs=1)
        assert {name for name, _ in line} == {n.name for n in resnet8_graph.nodes}
    fp32, int8 = (max(b for _, b in cost.activation_timeline(resnet8_graph, stm, precision=q)) for q in (None, "int8"))
    assert int8 == pytest.approx(fp32 / 4, rel=0.01)
