"""Screening goes through the cost model's batch scorer: one scorer per architecture and target, the
same numbers for one candidate or many, and the exact prediction of a built candidate."""
import optuna
import pytest

from hwai import cost, targets
from hwai import data as hdata
from hwai import graph as hgraph
from hwai.models import ModelSpec
from hwai.search import candidate as hc
from hwai.search.screen import Screen, kept_channels
from hwai.search.space import SpaceConfig, sample

SPACE = SpaceConfig(widths=(0.5, 1.0), kernel_sizes=(3,), resolutions=(1.0,), prune_ratios=(0.25, 0.5), bits=(32, 8))


@pytest.fixture(scope="module")
def setup():
    bundle = hdata.load("digits", input_size=16)
    return bundle, [targets.load("stm32h743"), targets.load("host")]


def _candidates(name, n, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample(trial, SPACE, ModelSpec(name, 10, 1, (16, 16), 0.5, {})))
        study.tell(trial, 0.0)
    return out


def test_a_built_candidate_scores_as_the_cost_model_predicts_its_graph(setup):
    bundle, tgts = setup
    screen = Screen(tgts, bundle)
    for cand in _candidates("resnet8", 2):  # residual adds couple pruned channels
        x = hc.data_at(bundle, cand.spec).example(2)
        pruned = hc.structure(cand, x)
        graph = hgraph.capture(pruned, x[:1])
        scored = screen.score([cand], [kept_channels(pruned)])[0]
        for t in tgts:
            p = hc.predict(graph, [t], cand)[t.name]
            s = scored[t.name]
            assert s.latency_ms == pytest.approx(p.latency_ms, rel=1e-4)
            assert s.energy_mj == pytest.approx(p.energy_mj, rel=1e-4)
            assert s.sram_bytes_needed == pytest.approx(p.sram_bytes_needed, rel=1e-4) and s.fits == p.fits


def test_one_candidate_or_many_the_same_scores_one_scorer_per_architecture(setup, monkeypatch):
    bundle, tgts = setup
    made = []
    real = cost.prepare
    monkeypatch.setattr(cost, "prepare", lambda *a, **k: made.append(a[1].name) or real(*a, **k))
    cands = _candidates("cnn", 12, seed=3)
    together = Screen(tgts, bundle).score(cands)
    archs = {(c.spec.width, c.spec.input_size, tuple(sorted(c.spec.options.items()))) for c in cands}
    assert len(made) == len(archs) * len(tgts) < len(cands)  # not a scorer per candidate
    alone = Screen(tgts, bundle)
    for cand, scores in zip(cands, together):
        for t in tgts:
            one, many = vars(alone.score([cand])[0][t.name]), vars(scores[t.name])
            numbers = [k for k, v in one.items() if not isinstance(v, str)]
            assert [one[k] for k in numbers] == pytest.approx([many[k] for k in numbers], rel=1e-6)  # float sums
            assert one["fit_message"].split()[:2] == many["fit_message"].split()[:2]
    # a requested prune ratio screens as the nearest channel count, never an empty layer
    scale, _ = alone.rows(cands[0])
    assert 0 < scale.min() < 1
