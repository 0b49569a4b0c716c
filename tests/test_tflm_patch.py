"""hwai.runtimes.tflm_patch: a patch plan as TFLite Micro models (quantized once, cut into tile models and the rest),
run by the Python glue and the C glue, its arena measured by TFLite Micro; the fallback when the stage cannot be
expressed; the plan choice for TFLite Micro's arena."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from hwai import data as hdata
from hwai import memory, models
from hwai.errors import UserError


def _installed() -> None:
    from hwai.runtimes import litert, tflm

    try:
        litert.check()
        tflm.check()
    except UserError as exc:
        pytest.skip(str(exc))


class Tiny(nn.Module):
    """A first stage with what tiles must get right: a stride-2 conv, a padded max pool over values of both signs
    (padded with the int8 minimum, not the zero point), a residual whose add reads less of its input than the conv
    branch; then a global head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 1))
        self.head = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(16, 10))

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = x + self.block(x)
        return self.head(x)


class Unfoldable(Tiny):
    """A batch norm after a ReLU: PT2E folds batch norm into a preceding conv only, so this one stays an op."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.pool(self.norm(torch.relu(self.stem(x))))
        return self.head(x + self.block(x))


@pytest.fixture(scope="module")
def digits3():
    """digits at 32x32, three channels (the first stage of an RGB net)."""
    d = hdata.load("digits", input_size=32)
    three = {name: (getattr(d, name)[0].repeat(1, 3, 1, 1), getattr(d, name)[1]) for name in ("train", "val", "test")}
    return dataclasses.replace(d, **three)


@pytest.fixture(scope="module")
def bundle(digits3, tmp_path_factory):
    """The patch bundle of a trained Tiny, split after the residual add, 2x2 tiles."""
    _installed()
    from hwai import train
    from hwai.runtimes import tflm_patch

    train.seed_everything(0)
    model = Tiny()
    train.train(model, digits3, train.TrainConfig(epochs=2, augment=False), progress=False)
    model.eval()
    graph = memory.capture(model, digits3.example(1))
    assert "add" in memory.split_points(graph)
    out = tmp_path_factory.mktemp("patch")
    b = tflm_patch.export(model, digits3.example(1), out, digits3, split="add", grid=2)
    assert b.patched, b.fallback
    return b, model, graph


def _stage_tensor(whole: bytes, stage: dict) -> int:
    """Index of the whole model's tensor that holds the stage output (its shape, scale and zero point)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    tensors = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(whole, 0)).subgraphs[0].tensors
    hits = [i for i, t in enumerate(tensors) if t.shape is not None and list(t.shape) == stage["shape"]
            and t.quantization is not None and t.quantization.scale is not None
            and np.isclose(t.quantization.scale[0], stage["scale"], rtol=1e-7, atol=0)
            and t.quantization.zeroPoint[0] == stage["zero_point"]]
    assert len(hits) == 1, hits
    return hits[0]


def test_tile_models_equal_the_whole_models_stage_output(bundle, digits3):
    from tflite_micro.python.tflite_micro import runtime

    from hwai.runtimes.tflm_patch import glue

    b, _, _ = bundle
    meta = b.meta
    whole = (b.out_dir / meta["model"]).read_bytes()
    index = _stage_tensor(whole, meta["stage"])
    reference = runtime.Interpreter.from_bytes(whole, arena_size=1 << 22,
                                               intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
    runner = glue.PatchRunner(b.out_dir)
    covered = np.zeros(meta["stage"]["shape"][1:3], dtype=int)
    images = glue.quantize_input(meta, digits3.example(3, split="test").numpy())
    for image in images:
        reference.set_input(image[None], 0)
        reference.invoke()
        stage = reference.GetTensor(index, 0)["tensor_data"]
        assert np.abs(stage.astype(int)).max() > 0  # a real activation, not zeros
        for m, y0, y1, x0, x1, oy0, oy1, ox0, ox1 in meta["tiles"]:
            model = runner.models[m]
            model.set_input(np.ascontiguousarray(image[None, y0:y1, x0:x1]), 0)
            model.invoke()
            np.testing.assert_array_equal(model.get_output(0), stage[:, oy0:oy1, ox0:ox1])
            covered[oy0:oy1, ox0:ox1] += 1
    assert (covered == len(images)).all()  # the tiles cover the stage output once each
    assert len(meta["tiles"]) == 4 and len(meta["models"]) == 5  # 2x2: four corner classes, then the rest


def test_glue_outputs_equal_the_whole_model(bundle, digits3):
    from hwai.runtimes import tflm_patch
    from hwai.runtimes.tflm_patch import glue

    b, model, _ = bundle
    x = digits3.example(24, split="test").numpy()
    report = tflm_patch.parity(b.out_dir, x)
    assert report["equal_fraction"] == 1.0 and report["top1_agreement"] == 1.0 and report["max_step_difference"] == 0
    whole = glue.WholeRunner(b.out_dir)
    images = glue.quantize_input(b.meta, x)
    outputs = np.stack([whole.run_int8(image[None]) for image in images])
    assert len({o.tobytes() for o in outputs}) > 12  # outputs that depend on the input: the check can fail
    logits = (outputs.reshape(len(x), -1).astype(np.float32) - b.meta["output"]["zero_point"]) * b.meta["output"]["scale"]
    agree = (logits.argmax(1) == model(torch.from_numpy(x)).argmax(1).numpy()).mean()
    assert agree >= 0.9  # the int8 model is the float model's
    if shutil.which("gcc") is None:
        pytest.skip("no gcc here: the C glue is not run")
    np.testing.assert_array_equal(tflm_patch.run_c(b.out_dir, images[:6]), outputs[:6])


def test_bundle_holds_models_glue_and_measured_arena(bundle):
    from tflite_micro.python.tflite_micro import runtime

    from hwai.runtimes import litert, tflm_patch

    b, _, graph = bundle
    meta, out = b.meta, b.out_dir
    for name in ("hwai_patch_runner.c", "hwai_patch_runner.h", "hwai_patch_tflm.cc", "hwai_patch_plan.h",
                 "hwai_patch_models.h", "README.md", "rest.tflite", meta["model"]):
        assert (out / name).is_file(), name
    arena = meta["arena"]
    tiles = max(m["arena_bytes"] for m in meta["models"][:-1])
    assert arena["bytes"] == arena["stage_region"] + max(arena["input_region"] + tiles, arena["rest_arena_bytes"])
    assert f"#define HWAI_PATCH_ARENA_BYTES {arena['bytes']}u" in (out / "hwai_patch_plan.h").read_text()
    assert arena["bytes"] < arena["whole_model_bytes"] and arena["kind"] == "measured"
    header = (out / "hwai_patch_models.h").read_text()
    for entry in meta["models"]:  # each model in its C array, and each measured arena the smallest that allocates
        data = (out / entry["file"]).read_bytes()
        body = re.search(rf"{entry['array']}\[\] = {{(.*?)}};", header, re.S)[1]
        assert bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", body)) == data
        runtime.Interpreter.from_bytes(data, arena_size=entry["arena_bytes"])
        with pytest.raises(RuntimeError):
            runtime.Interpreter.from_bytes(data, arena_size=entry["arena_bytes"] - 64)
    ops = [o["op_name"] for o in litert.interpreter(out / meta["model"], delegates=False)._get_ops_details()]
    assert not {"QUANTIZE", "DEQUANTIZE"} & set(ops)  # int8 throughout
    assert meta["macs"]["extra"] == meta["macs"]["extra_quantized_graph"] > 0  # the same plan on both graphs
    assert meta["macs"]["extra"] == memory.plan(graph, "int8", split="add", grid=2).extra_macs
    predicted = meta["predicted"]
    measured_stage = arena["stage_region"] + arena["input_region"] + tiles
    assert 0.5 < predicted["tflm_stage_phase_bytes"] / measured_stage < 1.5
    if shutil.which("gcc") is not None and shutil.which("g++") is not None:
        assert tflm_patch.syntax_check(out) == ["hwai_patch_runner.c", "hwai_patch_tflm.cc"]


def test_residual_chains_are_read_in_int8(digits3):
    """litert-torch's PT2E quantizer leaves an add read by the next add in float (the converter then runs both adds
    in float); requantize_skips reads every such edge through the int8 value."""
    _installed()
    from hwai.runtimes import litert
    from hwai.runtimes.common import pt2e_int8
    from hwai.runtimes.tflm_patch import cut

    torch.manual_seed(0)
    model = models.create("mobilenetv2", 10, 3, 32, width=0.35).eval()
    q = pt2e_int8(model, digits3.example(1), digits3, litert.int8_quantizer()[0], fold=False)
    q_t, _ = cut.qdq_ops()

    def float_edges():  # (value, reader) where the value has an int8 form but the reader takes the float one
        quantized = [n for n in q.graph.nodes if n.op != "placeholder" and any(u.target is q_t for u in n.users)]
        return [(n.name, u.name) for n in quantized for u in n.users if u.target is not q_t]

    before = float_edges()
    assert any(value.startswith("add") and user.startswith("add") for value, user in before)
    assert cut.requantize_skips(q) == len(before) and float_edges() == []


def test_inexpressible_stage_falls_back_to_the_whole_model(digits3, tmp_path):
    _installed()
    from hwai.runtimes import tflm, tflm_patch

    torch.manual_seed(0)
    model = Unfoldable().eval()
    b = tflm_patch.export(model, digits3.example(1), tmp_path, digits3, split="add", grid=2)
    assert not b.patched and "\n" not in b.fallback
    assert b.fallback.startswith("patch stage: batch_norm: node batch_norm")
    meta = json.loads((tmp_path / tflm.META).read_text())
    assert meta["patch"] == {"split": "add", "grid": 2, "fallback": b.fallback}
    assert (tmp_path / tflm.HEADER).is_file() and not (tmp_path / "hwai_patch_runner.c").exists()
    assert "No patch-based inference here: patch stage: batch_norm" in (tmp_path / tflm.README).read_text()


def test_choice_trades_halo_macs_for_the_arena_tflm_needs():
    """Wider tolerance, fewer halo MACs, a larger predicted arena; a rest phase that dominates every plan (a huge
    persistent part) makes a finer grid worthless, so the coarsest is chosen."""
    from hwai.runtimes.tflm_patch import scoring

    torch.manual_seed(0)
    graph = memory.capture(models.create("mobilenetv2", 10, 3, 96, width=0.35).eval(), torch.randn(1, 3, 96, 96))
    tight, usual, loose = (scoring.choose(graph, 60_000, tolerance=t) for t in (0.0, 0.05, 0.5))
    assert tight.split is not None and tight.arena_bytes <= usual.arena_bytes <= loose.arena_bytes
    assert tight.extra_macs >= usual.extra_macs >= loose.extra_macs
    assert usual.arena_bytes <= 1.05 * tight.arena_bytes
    planner = memory.best_plan(graph, "int8")
    own = scoring.predict(graph, memory.plan(graph, "int8", inplace=False, split=planner.split, grid=planner.grid),
                          60_000)
    assert tight.arena_bytes <= own.arena_bytes  # scored for TFLM: never worse than the planner's own pick
    heavy = scoring.choose(graph, 10**8, tolerance=0.0)
    same_split = [scoring.predict(graph, memory.plan(graph, "int8", inplace=False, split=heavy.split, grid=g), 10**8)
                  for g in (2, 3, 4) if g <= min(graph[heavy.split].output_shape[-2:])]
    assert heavy.extra_macs == min(c.extra_macs for c in same_split if c.arena_bytes == heavy.arena_bytes)


def test_search_ships_the_patch_bundle_on_mcu_targets(digits3, tmp_path, monkeypatch):
    """hwai optimize on an MCU target whose runtime is TFLite Micro: a chosen candidate with patches ships
    best/tflm/, the patch bundle of the candidate's own plan; without patches, or on another target, nothing."""
    from types import SimpleNamespace

    from hwai import targets
    from hwai.models import ModelSpec
    from hwai.runtimes import tflm_patch
    from hwai.search import candidate, results
    from hwai.search.space import Candidate

    calls = []

    def export(model, example, out_dir, calib, split=None, grid=None):
        calls.append((out_dir, split, grid))
        return tflm_patch.PatchBundle(out_dir, {"arena": {"bytes": 1234}})

    monkeypatch.setattr(tflm_patch, "export", export)
    model = Tiny().eval()
    cand = Candidate(ModelSpec("tiny", 10, 3, (32, 32)), True, patch=(1.0, 2))
    ctx = SimpleNamespace(target=targets.load("stm32h743"), run_dir=tmp_path)
    shipped = results.mcu_bundle(ctx, cand, model, model, digits3)
    split, grid = candidate.patch_plan(cand, memory.capture(model, digits3.example(1)))
    assert calls == [(tmp_path / "best" / "tflm", split, grid)] and split is not None and grid == 2
    assert shipped["tflm"] == "best/tflm" and shipped["tflm_patch"] and shipped["tflm_arena_bytes"] == 1234
    assert results.mcu_bundle(ctx, dataclasses.replace(cand, patch=None), model, model, digits3) == {}
    host = SimpleNamespace(target=targets.load("x86-avx2"), run_dir=tmp_path)
    assert results.mcu_bundle(host, cand, model, model, digits3) == {} and len(calls) == 1
