"""The search space samples valid candidates; constraints and the Pareto/best logic are right."""
import re

import optuna
import pytest
import torch

from hwai import data as hdata
from hwai.errors import UserError
from hwai.models import ModelSpec, build
from hwai.search.candidate import data_at
from hwai.search.constraints import Constraints, check
from hwai.search.results import choose, dominates, pareto
from hwai.search.space import SpaceConfig, sample, warm_start, weighted_layers

SPACE = SpaceConfig(widths=(0.5, 1.0), depths=(1, 2), kernel_sizes=(3, 5), resolutions=(1.0, 0.75),
                    prune_ratios=(0.0, 0.25, 0.5), prune_groups=2, bits=(32, 8, 4), fuse=(False, True),
                    finetune_epochs=(0, 1), train_epochs=(1, 2))


@pytest.fixture(scope="module")
def digits():
    return hdata.load("digits", input_size=16)


@pytest.mark.parametrize("name", ["cnn", "resnet8", "mlp"])
def test_sampled_candidates_are_valid(name, digits):
    base = ModelSpec(name, 10, 1, (16, 16), 0.5, {})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_same = seen_new = False
    for _ in range(12):
        trial = study.ask()
        cand = sample(trial, SPACE, base)
        model = build(cand.spec).eval()
        x = data_at(digits, cand.spec).example(2)
        assert x.shape[-2:] == torch.Size(cand.spec.input_size)
        assert model(x).shape == (2, 10)  # the architecture runs on the data at its resolution
        layers = weighted_layers(model)
        assert set(cand.bits) == set(layers) and set(cand.bits.values()) <= {32, 8, 4}
        assert set(cand.prune) <= set(layers[:-1]), "the classifier is never pruned"
        assert all(r in (0.25, 0.5) for r in cand.prune.values())
        if cand.same_architecture:  # starts from the baseline's weights: they must fit
            seen_same = True
            shapes = {k: v.shape for k, v in build(base).state_dict().items()}
            assert cand.spec.width == base.width and {k: v.shape for k, v in model.state_dict().items()} == shapes
            assert cand.epochs in SPACE.finetune_epochs
        else:
            seen_new = True
            assert cand.epochs in SPACE.train_epochs
        if name != "resnet8":
            assert "depth" not in trial.params  # only factories that take a depth get the knob
        if name == "mlp":
            assert "kernel_size" not in trial.params
        study.tell(trial, 0.0)
    assert seen_same and seen_new


@pytest.mark.parametrize("name,reuses", [("resnet8", True), ("cnn", True), ("mlp", False)])
def test_a_smaller_input_reuses_the_baseline_weights_where_they_fit(name, reuses):
    """Global pooling makes a conv net's weights independent of the input side: fine-tune them at 12x12;
    an MLP's first layer depends on it: train from scratch."""
    base = ModelSpec(name, 10, 1, (16, 16), 0.5, {})
    space = SpaceConfig(widths=(1.0,), depths=(1,), kernel_sizes=(3,), resolutions=(0.75,), prune_ratios=(0.0,),
                        bits=(32,), fuse=(False,), finetune_epochs=(1,), train_epochs=(2,))
    cand = sample(optuna.trial.FixedTrial({}), space, base)
    assert cand.spec.input_size == (12, 12) and cand.same_architecture == reuses
    assert cand.epochs == (1 if reuses else 2)


def test_single_choice_knobs_are_fixed_not_suggested():
    space = SpaceConfig(widths=(1.0,), kernel_sizes=(3,), resolutions=(1.0,), prune_ratios=(0.0,), bits=(8,),
                        per_layer_bits=False, fuse=(True,), finetune_epochs=(2,))
    trial = optuna.create_study().ask()
    cand = sample(trial, space, ModelSpec("cnn", 10, 1, (16, 16), 0.5, {}))
    assert trial.params == {}
    assert cand.same_architecture and cand.fuse and cand.epochs == 2 and set(cand.bits.values()) == {8}
    assert cand.precision()[weighted_layers(build(cand.spec))[0]] == "int8"


@pytest.mark.parametrize("bad", [dict(widths=()), dict(bits=(16,)), dict(prune_ratios=(1.0,)),
                                 dict(kernel_sizes=(4,)), dict(train_epochs=(0,))])
def test_space_rejects_bad_values(bad):
    with pytest.raises(UserError):
        SpaceConfig(**bad)


def test_constraints_check_names_each_violation():
    c = Constraints(max_latency_ms=10, max_size_kb=100, max_sram_kb=50, max_accuracy_drop=0.02)
    ok = {"target_latency_ms": 9.0, "size_kb": 90.0, "peak_sram_kb": 40.0, "accuracy": 0.97, "fits": True}
    why, values = check(c, ok, {"accuracy": 0.98}, "target_latency_ms")
    assert why == [] and all(v <= 0 for v in values.values())
    bad = {"target_latency_ms": 20.0, "size_kb": 200.0, "peak_sram_kb": 60.0, "accuracy": 0.9, "fits": False,
           "fit_message": "needs 2 MB"}
    why, values = check(c, bad, {"accuracy": 0.98}, "target_latency_ms")
    assert len(why) == 5 and values["latency"] == pytest.approx(1.0) and values["size"] == pytest.approx(1.0)
    # screening sees predictions only, and a corrected host prediction needs a clear margin
    why, _ = check(c, {"host_predicted_ms": 11.0, "size_kb": 500.0}, None, "host_latency_ms", screening=True)
    assert why == []
    why, _ = check(c, {"host_predicted_ms": 13.0}, None, "host_latency_ms", screening=True)
    assert len(why) == 1 and "latency" in why[0]
    with pytest.raises(UserError):
        Constraints(max_latency_ms=-1)


def _rec(n, acc, lat, feasible=True, why=(), state="COMPLETE"):
    return {"number": n, "state": state, "metrics": {"accuracy": acc, "host_latency_ms": lat, "size_kb": 1.0},
            "feasible": feasible, "violations": list(why), "description": f"c{n}"}


def test_pareto_and_best_respect_constraints():
    assert dominates([1, 1], [1, 2]) and not dominates([1, 2], [2, 1]) and not dominates([1, 1], [1, 1])
    recs = [_rec(0, 0.95, 1.0), _rec(1, 0.97, 2.0), _rec(2, 0.94, 3.0),  # 2 is dominated by 0
            _rec(3, 0.99, 0.1, feasible=False, why=["size 900 KB > limit 100 KB"])]  # best numbers, infeasible
    front = pareto(recs, ["accuracy", "host_latency_ms", "size_kb"])
    assert sorted(front) == [0, 1]
    best = choose(recs, front, "host_latency_ms", {"max_size_kb": 100})
    assert best["trial"] == 0 and "satisfy" in best["reason"]
    none = choose([recs[3], _rec(4, 0.5, 1, False, ["a", "b"])], [], "host_latency_ms", {"max_size_kb": 100})
    assert none["trial"] is None and none["closest"]["trial"] == 3 and "no candidate" in none["reason"]


def test_a_trial_the_baseline_dominates_is_not_on_the_front_and_the_baseline_is_kept():
    recs = [_rec(0, 0.95, 2.0), _rec(1, 0.99, 3.0)]
    objectives = ["accuracy", "host_latency_ms", "size_kb"]
    baseline = {"accuracy": 0.96, "host_latency_ms": 1.0, "size_kb": 1.0}
    assert pareto(recs, objectives, baseline) == [1]  # more accurate than the baseline: a real trade-off
    front = pareto(recs[:1], objectives, baseline)
    kept = choose(recs[:1], front, "host_latency_ms", {})
    assert front == [] and kept["trial"] is None and "baseline is kept" in kept["reason"]
    assert kept["closest"]["trial"] == 0 and kept["closest"]["violations"] == ["dominated by the baseline"]
    assert pareto(recs[:1], objectives, None) == [0]  # no reference (the baseline breaks a limit): trials only


def test_warm_start_is_int8_on_the_baseline_architecture_then_a_smaller_input_then_light_pruning():
    base = ModelSpec("cnn", 10, 1, (16, 16), 0.25)
    space = SpaceConfig(prune_ratios=(0.0, 0.25, 0.5))
    first, smaller, second = warm_start(space, base)
    assert smaller == {**first, "resolution": 0.75}  # the weights fit: global pooling
    assert [p["resolution"] for p in warm_start(space, ModelSpec("mlp", 10, 1, (16, 16), 0.25))] == [1.0, 1.0]
    layers = weighted_layers(build(base))
    assert all(first[f"bits.{n}"] == 8 for n in layers) and first["fuse"] and first["width"] == 1.0
    assert [first[f"prune.g{g}"] for g in range(3)] == [0.0] * 3 and [second[f"prune.g{g}"] for g in range(3)] == [0.25] * 3
    assert first["finetune_epochs"] == max(space.finetune_epochs)
    assert warm_start(SpaceConfig(bits=(32,), prune_ratios=(0.0,)), base) == []  # nothing textbook to try
    assert sample(optuna.trial.FixedTrial(first), space, base).quantized  # valid parameters of the space


@pytest.mark.parametrize("bad", [dict(max_latency_ms=float("nan")), dict(max_size_kb=float("inf")),
                                 dict(max_sram_kb=float("-inf")), dict(max_accuracy_drop=float("nan")),
                                 dict(max_accuracy_drop=1.5)])
def test_constraints_reject_non_finite_limits(bad):
    with pytest.raises(UserError, match="finite|fraction"):
        Constraints(**bad)


def test_a_limit_met_exactly_is_met_and_a_violation_shows_the_difference():
    c = Constraints(max_latency_ms=10, max_accuracy_drop=0.02)
    # 0.92 - 0.90 is 0.020000000000000018 in floats: equal to the limit, not above it
    why, values = check(c, {"accuracy": 0.90, "target_latency_ms": 10.0}, {"accuracy": 0.92}, "target_latency_ms")
    assert why == [] and values["accuracy_drop"] == 0 and values["latency"] == 0
    why, _ = check(c, {"accuracy": 0.89996, "target_latency_ms": 10.00004}, {"accuracy": 0.92}, "target_latency_ms")
    latency, drop = why
    assert latency.startswith("latency (predicted target) 10.00004 ms > limit 10 ms")
    assert drop.startswith("accuracy drop 2.004 pt > limit 2 pt") and "baseline 92%" in drop
    for line in why:  # the two numbers printed always differ
        value, bound = re.search(r"(\S+) (?:pt|ms) > limit (\S+)", line).groups()
        assert float(value) > float(bound)


def test_a_failed_export_check_says_which_check_failed():
    c = Constraints(max_accuracy_drop=None)
    metrics = {"parity_ok": False, "parity_top1_agreement": 1.0,
               "parity_reason": "max |delta logit| 0.6 > 0.4"}
    why, values = check(c, metrics, None, "host_latency_ms")
    assert why == ["exported ONNX disagrees with PyTorch: max |delta logit| 0.6 > 0.4"] and values["export"] == 1.0


def test_microcontroller_candidates_get_patch_knobs_and_the_planned_arena():
    from hwai import targets
    from hwai.search.candidate import planned_memory, structure
    from hwai.search.space import Candidate

    base = ModelSpec("mobilenetv2", 10, 1, (32, 32), 0.35, {})
    trial = optuna.create_study().ask()
    sample(trial, SpaceConfig(patch_stages=(0.0, 1.0), patch_grids=(2, 4)), base, mcu=True)
    assert {"patch.stage", "patch.grid"} <= set(trial.params) or trial.params.get("patch.stage") == 0.0
    trial = optuna.create_study().ask()
    sample(trial, SpaceConfig(), base, mcu=False)
    assert not any(k.startswith("patch") for k in trial.params)  # other targets: no such knob

    stm = targets.load("stm32h743")
    x = torch.randn(1, 1, 32, 32)
    bits = {n: 8 for n in weighted_layers(build(base))}
    plain = Candidate(base, True, {}, bits, True, 1)
    patched = Candidate(base, True, {}, bits, True, 1, patch=(0.25, 2))
    a = planned_memory(plain, structure(plain, x), x, stm, latency_ms=10.0, weight_bytes=50_000)
    b = planned_memory(patched, structure(patched, x), x, stm, latency_ms=10.0, weight_bytes=50_000)
    assert a["peak_sram_kb"] <= a["peak_layer_by_layer_kb"] and a["patch_split"] is None and a["target_latency_ms"] == 10.0
    assert b["patch_split"] and b["patch_grid"] == 2 and b["patch_extra_macs"] > 0
    assert b["peak_sram_kb"] < a["peak_sram_kb"] and b["target_latency_ms"] > 10.0  # less SRAM, halo recomputed
    assert a["fits"] and a["fit_message"].startswith("fits")
    assert planned_memory(plain, structure(plain, x), x, targets.load("rpi4"), 10.0, 50_000) == {}  # not an MCU
    late = Candidate(base, True, {}, bits, True, 1, patch=(1.0, 64))  # more patches than the split output has rows
    assert planned_memory(late, structure(late, x), x, stm, 10.0, 50_000)["patch_grid"] == 4  # its output is 4x4
