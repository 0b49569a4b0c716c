"""Accuracy as a measurement (hwai.measure.accuracy): the Wilson interval, the exact McNemar test, the keep /
roll-back rule on an accuracy-drop limit, and the note when a limit is finer than the validation split resolves."""
import numpy as np
import pytest
from scipy.stats import binomtest

from hwai import data, models, train
from hwai.measure.accuracy import (
    Accuracy,
    PairedDrop,
    breaks_limit,
    paired,
    rate,
    resolution_note,
    score,
    smallest_real_loss,
    wilson,
)


def test_wilson_matches_published_values_and_covers_95_percent():
    # Newcombe (1998), Table I: 0/10 -> 0..0.2775 and 5/10 -> 0.2366..0.7634
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(0, 0) == (0.0, 1.0)
    # coverage where the normal approximation fails (p = 0.97 on 179 samples): 95% within simulation noise
    rng = np.random.default_rng(0)
    k = rng.binomial(179, 0.97, 4000)
    inside = [low <= 0.97 <= high for low, high in (wilson(int(c), 179) for c in k)]
    assert 0.93 <= np.mean(inside) <= 0.975


def test_exact_mcnemar_is_the_one_sided_binomial_on_discordant_samples():
    assert PairedDrop(179, 5, 0).p_value == pytest.approx(1 / 32)
    assert PairedDrop(179, 0, 0).p_value == 1.0
    for lost, gained in ((6, 1), (17, 5), (3, 9), (40, 22)):
        expected = binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue
        assert PairedDrop(500, lost, gained).p_value == pytest.approx(expected, rel=1e-9)
    assert smallest_real_loss() == 5  # 0.5**5 = 0.031 < 0.05 <= 0.5**4


def test_paired_counts_the_samples_each_model_alone_gets_right():
    before = Accuracy.of(np.array([1, 1, 1, 0, 0, 1], bool))
    after = Accuracy.of(np.array([1, 0, 0, 1, 0, 1], bool))
    drop = paired(before, after)
    assert (drop.n, drop.lost, drop.gained) == (6, 2, 1)
    assert drop.drop == pytest.approx(before.value - after.value)
    assert paired(before, Accuracy.from_rate(0.5, 6)) is None and paired(None, after) is None
    assert paired(before, Accuracy.of(np.ones(5, bool))) is None  # other samples: nothing to pair


@pytest.mark.parametrize("n,lost,gained,limit,broken", [
    (500, 20, 2, 0.02, True),  # 3.6 points over a 2-point limit, p < 1e-4: rolled back
    (179, 5, 1, 0.02, False),  # 2.2 points over the limit, but p = 0.11: chance on 6 discordant samples, kept
    (2000, 30, 5, 0.02, False),  # a real loss (p < 1e-4) of 1.25 points: within the limit, kept
    (100, 2, 0, 0.02, False),  # exactly at the limit: meets it
    (100, 7, 0, 0.0, True),  # a zero limit: any real loss breaks it
])
def test_a_drop_breaks_the_limit_only_when_it_is_over_it_and_real(n, lost, gained, limit, broken):
    """Both halves of the rule have a case that fails without them: the second row without the paired test, the
    third row without the comparison with the limit."""
    assert breaks_limit(PairedDrop(n, lost, gained), limit) is broken


def test_a_limit_finer_than_the_split_is_said_with_a_split_that_resolves_it():
    note = resolution_note(179, 0.02, 0.1)
    assert "finer than 179 validation samples" in note and "5 samples lost (2.79 points)" in note
    fraction = float(note.split("--val-fraction ")[1].split()[0])
    assert fraction == 0.15
    larger = data.load("digits", val_fraction=fraction)
    assert resolution_note(len(larger.val[1]), 0.02, fraction) is None  # the suggested split resolves the limit
    assert resolution_note(500, 0.02, 0.1) is None  # MNIST's 500 validation samples resolve 2 points
    assert "too small" in resolution_note(179, 0.002, 0.1)
    assert "--val-fraction" in resolution_note(179, 0.0, 0.1)


def test_an_accuracy_prints_and_stores_its_count_interval_and_outcomes():
    hits = np.array([True] * 174 + [False] * 5)
    acc = Accuracy.of(hits)
    assert acc.describe() == "97.21% (95% CI 93.6-98.8%, n=179)"
    stored = acc.fields(outcomes=True)
    assert stored["accuracy_n"] == 179 and stored["accuracy_ci"] == pytest.approx(list(wilson(174, 179)))
    back = Accuracy.stored(stored)
    assert back == acc and np.array_equal(back.hits, hits)
    assert rate(0.5, None) == "50.00%" and rate(None, 3) == "-" and rate(174 / 179, 179, True) == acc.cell()


def test_score_keeps_every_validation_outcome_in_order(digits):
    train.seed_everything(0)
    model = models.create("mlp", 10, 1, 8, width=0.25)
    acc = score(model, digits, "val")
    assert acc.total == len(digits.val[1]) == len(acc.hits) and acc.split == "val"
    with __import__("torch").no_grad():
        expected = (model(digits.example(acc.total)).argmax(1) == digits.val[1]).numpy()
    assert np.array_equal(acc.hits, expected) and train.evaluate(model, digits, "val") == acc.value
