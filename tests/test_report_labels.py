"""The report's labels and formats (hwai.report.labels) and the rules every view follows: human labels only,
a spread never worded as speed, sizes in KiB/MiB, widths relative to the baseline said so, a figure the run
stored shown as stored, a prediction beside a measurement explained, a host latency with its runtime and
threads. Synthetic TEST DATA (see test_report.synthetic_results)."""
from __future__ import annotations

import copy
import re

import pytest
from test_report import synthetic_results, visible, write_run

from hwai.report import report
from hwai.report.labels import METRICS, change, fmt, plain


def page_of(tmp_path, data: dict, name: str = "results.json") -> str:
    return report(write_run(tmp_path, data, name)).read_text()


def row(page: str, first_cell: str) -> str:
    """The table row whose first cell starts with `first_cell` (raises when there is none)."""
    found = re.search(r"<tr><td>" + re.escape(first_cell) + r"(?:<|\s).*?</tr>", page, re.S)
    assert found, f"no row {first_cell!r}"
    return found.group(0)


def test_every_key_the_search_labels_has_a_human_label():
    from hwai.search.context import KINDS

    assert set(KINDS) - {"fits"} <= set(METRICS)  # fits is a yes/no, shown on the fit card
    for key, metric in METRICS.items():
        assert "_" not in metric.label and not re.search(r"\b(ms|kb|mj|uj|pct)$", metric.label), key


def test_a_key_outside_the_catalog_is_not_shown_under_its_raw_name(tmp_path):
    data = synthetic_results()
    for metrics in (data["baseline"], data["best"]["metrics"], *(t["metrics"] for t in data["trials"])):
        metrics.update(mystery_extra_kb=12.5, host_correction=0.38)
    data["kinds"]["mystery_extra_kb"] = "predicted"
    text = visible(page_of(tmp_path, data))
    assert "mystery" not in text and "host correction" not in text and "host_correction" not in text
    assert "peak SRAM needed" in text and "peak sram kb" not in text


def test_a_change_in_spread_is_not_a_change_in_speed(tmp_path):
    wider = change("host_latency_iqr_ms", 0.01, 0.2615)
    assert wider.good is None and "slower" not in wider.text and "faster" not in wider.text
    assert wider.text == "spread ×26.15 of the baseline's"
    assert change("host_latency_ms", 0.01, 0.2615).text == "26.15× slower"
    data = synthetic_results()
    data["best"]["metrics"]["host_latency_iqr_ms"] = 2.5  # 31x the baseline's spread
    cells = row(page_of(tmp_path, data), "host latency spread (IQR)")
    assert "spread ×31.25 of the baseline" in cells and "better" not in cells and "worse" not in cells


def test_sizes_read_in_kib_or_mib_with_thousands_separators(tmp_path):
    assert fmt("size_kb", 79.56) == "79.6 KiB" and fmt("size_kb", 1125.703125) == "1,126 KiB"
    assert fmt("size_kb", 11030.0) == "10.77 MiB" and plain(11030.0) == "11,030" and plain(0.0459) == "0.0459"
    page = page_of(tmp_path, export_results(size_kb=11030.0))
    assert "10.77 MiB" in page and not re.search(r"\d\.\d+e\+\d", visible(page))


def test_trial_widths_are_said_to_be_relative_to_the_baseline(tmp_path):
    data = synthetic_results()
    page = page_of(tmp_path, data)
    trial = data["trials"][1]
    assert f"width=×{trial['params']['width']:g}" in page and f"width={trial['params']['width']}" not in page
    assert "multiply the baseline's (cnn width 0.5, input 32x32)" in page
    assert trial["description"] in page  # the absolute width, as the search describes the candidate


def test_the_stored_snn_ratio_is_the_one_shown(tmp_path):
    """The console prints snn.latency.ratio (median of per-pair ratios); the report shows that figure, not the
    quotient of the two medians (386.59 / 98.58 = 3.92)."""
    data = {"schema": "hwai.results/1", "command": "snn profile", "model": {"name": "spiking cnn", "data": "digits"},
            "kinds": {"accuracy": "measured", "host_latency_ms": "measured"},
            "baseline": {"host_latency_ms": 98.58}, "best": {"trial": None, "metrics": {"accuracy": 0.9,
                                                                                      "host_latency_ms": 386.59}},
            "snn": {"latency": {"snn_ms": 386.59, "ann_ms": 98.58, "ratio": 3.3, "p_value": 1e-6, "verdict": "slower",
                                "pairs": 30, "threads": 2, "measurement": "TEST DATA"}}}
    text = visible(page_of(tmp_path, data))
    assert text.count("3.30× slower") >= 3 and "3.92" not in text  # card, table, spiking section
    assert "PyTorch eager, 2 threads" in text and "median of the per-pair SNN / ANN time ratios" in text
    assert "| 3.30× slower |" in report(tmp_path / "run", format="md")


def test_compress_speedup_is_read_not_recomputed(tmp_path):
    data = synthetic_results()
    data.update(command="compress", trials=[], pareto=[])
    data["best"] = {"metrics": {**data["baseline"], "host_latency_ms": 1.0}, "speedup": 1.5, "size_ratio": 2.0}
    text = visible(page_of(tmp_path, data, "metrics.json"))
    assert "1.50× faster" in text and "1.25× faster" not in text and "2.00× smaller" in text


def test_a_step_judged_by_interleaved_timing_shows_that_verdict(tmp_path):
    data = synthetic_results()
    data.update(command="compress", trials=[], pareto=[])
    data["techniques"] = [{
        "name": "prune 30% structured", "kept": False, "reason": "TEST: measurably slower",
        "metric_before": {"accuracy": 0.97, "host_latency_ms": 0.0459, "size_kb": 1125.7},
        "metric_after": {"accuracy": 0.96, "host_latency_ms": 0.105, "size_kb": 558.3},
        "latency_verdict": {"before_ms": 0.0675, "after_ms": 0.1106, "ratio": 1.637, "ratio_low": 1.596,
                            "ratio_high": 1.675, "runs": 841, "threads": 2, "runtime": "onnxruntime",
                            "verdict": "slower", "confidence": 0.95, "margin": 0.05, "widened": True, "blocks": 10}}]
    page = page_of(tmp_path, data, "metrics.json")
    step = row(page, "host latency (the decision)")
    assert "1.64× slower" in step and "95% CI 1.60–1.68×" in step and "in 10 blocks" in step
    assert "margin ±5% (the A/A spread)" in step
    assert "2.29×" not in page and '<span class="badge fail">rolled back</span>' in page


def test_every_measured_host_latency_names_its_runtime_and_threads(tmp_path):
    data = synthetic_results()
    page = page_of(tmp_path, data)
    host = row(page, "host latency")
    assert host.count("onnxruntime, 2 threads") == 1 and "onnxruntime, 1 thread<" in host  # best: trial 1 thread
    trials = page[page.index('<section id="trials">'):]
    assert trials.count("onnxruntime, 1 thread<") + trials.count("onnxruntime, 2 threads<") >= len(data["pareto"])
    runtimes = page_of(tmp_path, export_results())
    assert runtimes.count("2 threads") >= 3  # the card and both rows


def test_a_prediction_beside_a_measurement_says_which_is_which(tmp_path):
    data = synthetic_results()
    data["baseline"].update(host_predicted_raw_ms=2.0, host_predicted_ms=0.8)
    data["best"]["metrics"].update(host_predicted_raw_ms=1.0, host_predicted_ms=0.4)
    data["calibration"] = {"held_out_error_pct": 12.0, "held_out_error_raw_pct": 150.0, "threads": 2}
    page = page_of(tmp_path, data)
    group = page.index("The cost model&#x27;s prediction of this host")
    assert "a different quantity from the measured host latency" in page[group:group + 400]
    assert "held-out median |error| 12%, uncorrected 150%" in page[group:group + 600]
    assert page.index("host latency, corrected prediction") > group > page.index("<td>host latency<")


def test_a_copied_figure_is_shown_once_a_coincidence_twice(tmp_path):
    data = synthetic_results()
    for metrics in (data["baseline"], data["best"]["metrics"]):
        metrics.update(host_feedback_ms=metrics["host_latency_ms"], test_accuracy=metrics["accuracy"])
    page = page_of(tmp_path, data)
    assert "host latency on ONNX Runtime at the feedback threads" in row(page, "host latency")
    assert "<td>host latency on ONNX Runtime" not in page  # copied: one row
    assert "<td>test accuracy" in page and "<td>accuracy" in page  # equal by chance: two rows
    other = copy.deepcopy(data)
    other["best"]["metrics"]["host_feedback_ms"] *= 1.3  # measured apart (another runtime shipped): its own row
    assert "<td>host latency on ONNX Runtime" in page_of(tmp_path, other)


def export_results(size_kb: float = 1125.7) -> dict:
    """A results.json as `hwai export` writes it (hwai.runtimes.deployment.document), TEST numbers."""
    rows = [{"runtime": rt, "precision": "fp32", "artifact": f"/elsewhere/{rt}/model", "size_kb": size_kb + i,
             "accuracy": 0.97, "top1_agreement": 1.0 - i / 100, "max_abs_diff": 7.45e-9, "parity_ok": True,
             "median_ms": 0.05 * (i + 1), "iqr_ms": 0.01, "repeats": 60, "threads": 2,
             "pass_medians_ms": [0.05 * (i + 1)] * 3, "note": "", "kind": "measured"}
            for i, rt in enumerate(("onnxruntime", "openvino"))]
    return {"schema": "hwai.results/1", "command": "export", "created": "2026-12-06T11:19:56Z",
            "environment": {"cpu": "TEST CPU", "threads": 2}, "model": {"name": "cnn", "data": "digits"},
            "target": None, "runtimes": {"kind": "measured", "threads": 2, "measurement": "TEST DATA", "rows": rows,
                                         "chosen": "onnxruntime", "verdict": "onnxruntime is 2.00x faster (TEST)"}}


def test_an_export_report_shows_the_export(tmp_path):
    page = page_of(tmp_path, export_results())
    assert re.findall(r'<section id="([^"]+)">', page) == ["runtimes", "environment"]
    cards = re.findall(r'<div class="card[^"]*"><div class="label">([^<]+)', page)
    assert cards == ["latency on this host (onnxruntime, fp32, 2 threads) ", "test accuracy (onnxruntime) ",
                     "artifact size (onnxruntime) ", "parity with PyTorch "]
    assert '"runtimes-plot"' in page and "n/a" not in visible(page) and "99.00%" in page


@pytest.mark.parametrize("before, after, text", [(0.9, 0.9, "+0.00 pt"), (0.9, 0.95, "+5.00 pt")])
def test_accuracy_changes_in_points(before, after, text):
    assert change("accuracy", before, after).text == text


def test_a_noisy_timing_is_flagged(tmp_path):
    data = synthetic_results()
    data["baseline"]["host_latency_iqr_ms"] = 0.5  # 40% of the 1.25 ms median
    page = page_of(tmp_path, data)
    assert "⚠ noisy: IQR 40% of median" in row(page, "host latency")
    assert row(page, "host latency").count("noisy") == 1  # the chosen model's timing is tight
    exported = export_results()
    exported["runtimes"]["rows"][1]["iqr_ms"] = 0.05  # 50% of openvino's 0.1 ms
    assert visible(page_of(tmp_path, exported)).count("noisy: IQR 50% of median") == 1
