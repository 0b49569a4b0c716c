"""hwai.report on synthetic, schema-correct run directories (TEST DATA, not a real run)."""
from __future__ import annotations

import html
import json
import re

import pytest
from conftest import run_cli

from hwai.errors import UserError
from hwai.report import report
from hwai.report.labels import fmt

N_TRIALS, BASE_ACCURACY, MAX_DROP, MAX_TARGET_MS = 16, 0.975, 0.02, 30.0


def _trial(n: int) -> dict:
    width, ratio, bits = (0.25, 0.5, 0.75, 1.0)[n % 4], round(0.1 * (n % 5), 1), (8, 4, 32)[n % 3]
    host = round(1.2 * width * (1 - ratio) * (0.45 if bits < 32 else 1.0) + 0.05, 4)
    metrics = {"accuracy": round(BASE_ACCURACY - 0.025 * (1 - width) - 0.015 * ratio - {8: 0.001, 4: 0.008, 32: 0}[bits], 4),
               "host_latency_ms": host, "target_latency_ms": round(host * 33 + 1.5, 3),
               "size_kb": round(1100 * width ** 2 * (1 - ratio) * bits / 32, 2),
               "energy_mj": round(host * 0.4, 4), "peak_sram_kb": round(300 * width, 1)}
    violations = ([f"target_latency_ms {metrics['target_latency_ms']} > {MAX_TARGET_MS}"]
                  if metrics["target_latency_ms"] > MAX_TARGET_MS else [])
    violations += ([f"accuracy drop {BASE_ACCURACY - metrics['accuracy']:.4f} > {MAX_DROP}"]
                   if BASE_ACCURACY - metrics["accuracy"] > MAX_DROP else [])
    metrics.update(host_runtime="onnxruntime", host_threads=1 + n % 2)
    return {"number": n, "state": "COMPLETE", "params": {"width": width, "prune_ratio": ratio, "bits": bits},
            "description": f"cnn width {0.5 * width:g}, input 32x32, prune {ratio:.0%}, {bits} bits",
            "metrics": metrics, "feasible": not violations, "violations": violations}


def _pareto(trials: list[dict]) -> list[int]:
    """Feasible trials no other feasible trial beats on accuracy, host latency and size at once."""
    ok = [t for t in trials if t["feasible"]]

    def beats(a: dict, b: dict) -> bool:
        x, y = a["metrics"], b["metrics"]
        no_worse = (x["accuracy"] >= y["accuracy"] and x["host_latency_ms"] <= y["host_latency_ms"]
                    and x["size_kb"] <= y["size_kb"])
        return no_worse and (x["accuracy"], x["host_latency_ms"], x["size_kb"]) != (
            y["accuracy"], y["host_latency_ms"], y["size_kb"])
    return [t["number"] for t in ok if not any(beats(o, t) for o in ok)]


def synthetic_results() -> dict:
    """A results.json as `hwai optimize` writes it (CONTRACTS.md), filled with made-up TEST numbers."""
    trials = [_trial(n) for n in range(N_TRIALS)]
    pareto = _pareto(trials)
    best = min(pareto, key=lambda n: trials[n]["metrics"]["host_latency_ms"])
    layer_names = ["conv1", "conv2", "pool", "conv3", "fc1", "fc2"]
    return {
        "schema": "hwai.results/1", "command": "optimize", "created": "2026-11-23T07:00:00Z",
        "environment": {"cpu": "TEST CPU (synthetic)", "threads": 2, "python": "3.11.7", "torch": "2.13.0+cpu",
                        "onnxruntime": "1.32.0", "optuna": "5.0.0", "hwai": "0.1.0"},
        "model": {"name": "cnn", "data": "digits", "spec": {"name": "cnn", "width": 0.5, "input_size": [32, 32]}},
        "target": {"name": "stm32h743", "file": "hwai/targets/stm32h743.yaml", "sram_bytes": 1048576},
        "constraints": {"max_latency_ms": MAX_TARGET_MS, "max_size_kb": None, "max_sram_kb": None,
                        "max_accuracy_drop": MAX_DROP},
        "objectives": ["accuracy", "host_latency_ms", "target_latency_ms", "size_kb", "energy_mj"],
        "baseline": {"accuracy": BASE_ACCURACY, "host_latency_ms": 1.25, "host_latency_iqr_ms": 0.08,
                     "host_runtime": "onnxruntime", "host_threads": 2, "target_latency_ms": 42.5,
                     "size_kb": 1100.0, "energy_mj": 0.5, "peak_sram_kb": 300.0},
        "kinds": {"accuracy": "measured", "host_latency_ms": "measured", "host_latency_iqr_ms": "measured",
                  "size_kb": "measured", "target_latency_ms": "predicted", "energy_mj": "predicted",
                  "peak_sram_kb": "predicted"},
        "trials": trials, "pareto": pareto,
        "best": {"trial": best, "metrics": trials[best]["metrics"], "onnx": "best/model.onnx",
                 "parity": {"max_abs_diff": 0.0123, "top1_agreement": 0.995, "ok": True},
                 "reason": "fastest feasible trial on the Pareto front (test data)"},
        "techniques": [
            {"name": "fuse conv+bn+relu", "metric_before": {"accuracy": 0.975, "host_latency_ms": 1.25},
             "metric_after": {"accuracy": 0.975, "host_latency_ms": 1.1}},
            {"name": "prune 30% structured", "metric_before": {"accuracy": 0.975, "host_latency_ms": 1.1, "size_kb": 1100.0},
             "metric_after": {"accuracy": 0.965, "host_latency_ms": 0.8, "size_kb": 540.0}},
            {"name": "quantize int8 (minmax)", "metric_before": {"accuracy": 0.965, "size_kb": 540.0},
             "metric_after": {"accuracy": 0.963, "size_kb": 135.0}}],
        "layers": [{"name": name, "op": "pool" if name == "pool" else name[:-1].rstrip("c") or "conv",
                    "fp32_measured_ms": round(0.3 / (i + 1), 4), "int8_measured_ms": round(0.12 / (i + 1), 4),
                    "predicted_ms": round(9.0 / (i + 1), 3)} for i, name in enumerate(layer_names)],
        "memory": {"timeline": [{"node": name, "live_bytes": b} for name, b in
                                zip(["input", *layer_names], [3136, 28672, 40960, 12288, 16384, 512, 40])],
                   "sram_bytes": 1048576},
        "measurement": "TEST DATA: onnxruntime 1.32.0, 2 threads, 50 repeats, median and IQR",
        "prediction": "TEST DATA: roofline cost model, target file hwai/targets/stm32h743.yaml",
    }


def visible(page: str) -> str:
    """The page without its scripts and styles (plotly.js carries words of its own)."""
    return re.sub(r"<(script|style)[^>]*>.*?</\1>", "", page, flags=re.S)


def write_run(tmp_path, data: dict | None = None, name: str = "results.json"):
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / name).write_text(json.dumps(synthetic_results() if data is None else data))
    return run


def _lookup(data, key: str):
    """results.json value at a data-key path like 'trials.3.metrics.accuracy' (trials by number)."""
    value = data
    for part in key.split("."):
        if isinstance(value, list) and part.isdigit() and value and isinstance(value[0], dict) and "number" in value[0]:
            value = next(t for t in value if t["number"] == int(part))
        elif isinstance(value, list):
            value = value[int(part)]
        else:
            value = value[part]
    return value


def test_html_is_self_contained(tmp_path):
    path = report(write_run(tmp_path))
    assert path == tmp_path / "run" / "report.html"
    page = path.read_text()
    assert "plotly.js v" in page and len(page) > 3_000_000  # the bundle is inlined
    assert not re.search(r"<(script|link|img)[^>]*(src|href)=", page), "the page must not load anything"
    for section in ("pareto", "comparison", "layers", "memory", "techniques", "trials", "export", "provenance",
                    "environment"):
        assert f'<section id="{section}">' in page
    assert "Not available" not in page


def shown_value(text: str) -> float:
    """What people read, parsed back: '97.50%', '1,100 KiB', '10.77 MiB', '0.0459 ms', '1.2e-05'."""
    words = html.unescape(text).replace(",", "").split()
    if words[0].endswith("%"):
        return float(words[0][:-1]) / 100
    return float(words[0]) * (1024 if words[1:2] == ["MiB"] else 1)


def test_numbers_in_html_equal_results_json(tmp_path):
    data = synthetic_results()
    page = report(write_run(tmp_path, data)).read_text()
    cells = re.findall(r'data-key="([^"]+)" data-value="([^"]+)">([^<]*)<', page)
    keys = {k for k, _, _ in cells}
    for key, raw, text in cells:
        expected = _lookup(data, key)
        assert float(raw) == expected, key
        # rounded to 3 significant digits (accuracy to 0.01 pt, MiB to 0.01)
        assert shown_value(text) == pytest.approx(expected, rel=5e-3, abs=5e-5), (key, text)
    metrics = {k for k, v in data["baseline"].items() if isinstance(v, float)}
    shown = {k for k, v in data["best"]["metrics"].items() if isinstance(v, float)}
    assert {f"baseline.{m}" for m in metrics} <= keys and {f"best.metrics.{m}" for m in shown} <= keys
    assert {f"trials.{n}.metrics.accuracy" for n in range(N_TRIALS)} <= keys
    assert {f"layers.{i}.int8_measured_ms" for i in range(len(data["layers"]))} <= keys
    assert "techniques.1.metric_after.size_kb" in keys and "best.parity.max_abs_diff" in keys
    embedded = re.search(r'<script type="application/json" id="hwai-results">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded) == data


def test_figures_carry_the_run_data(tmp_path):
    data = synthetic_results()
    page = report(write_run(tmp_path, data)).read_text()
    figs = json.loads(re.search(r'id="hwai-figures">(.*?)</script>', page, re.S).group(1))
    assert set(figs) == {"pareto-plot", "layers-plot", "memory-plot"}
    traces = {(t["name"], t.get("xaxis", "x")): t for t in figs["pareto-plot"]["data"]}
    front = traces[("Pareto front", "x")]
    assert front["customdata"] == data["pareto"]
    assert front["x"] == [data["trials"][n]["metrics"]["host_latency_ms"] for n in data["pareto"]]
    assert front["y"] == [data["trials"][n]["metrics"]["accuracy"] for n in data["pareto"]]
    assert traces[("infeasible", "x")]["customdata"] == [t["number"] for t in data["trials"] if not t["feasible"]]
    assert traces[("chosen", "x2")]["x"] == [data["best"]["metrics"]["target_latency_ms"]]
    bars = {t["name"]: t["y"] for t in figs["layers-plot"]["data"]}
    assert bars["INT8 (measured)"] == [layer["int8_measured_ms"] for layer in data["layers"]]
    assert bars["predicted for stm32h743"] == [layer["predicted_ms"] for layer in data["layers"]]
    live = figs["memory-plot"]["data"][0]["y"]
    assert live == pytest.approx([e["live_bytes"] / 1024 for e in data["memory"]["timeline"]])


def test_parts_that_do_not_apply_are_left_out(tmp_path):
    """A run without figures gets a page without empty cards or "Not available" sections (and a short summary)."""
    page = report(write_run(tmp_path, {"schema": "hwai.results/1", "command": "optimize"})).read_text()
    assert "<section" not in page and 'class="card' not in page and 'id="hwai-figures">{}' in page
    text = visible(page)
    assert "not available" not in text.lower() and "n/a" not in text
    md = report(tmp_path / "run", format="md")
    assert md == "## hwai optimize: model\n"


def test_compress_metrics_json(tmp_path):
    data = synthetic_results()
    data.update(command="compress", trials=[], pareto=[], best={"metrics": data["best"]["metrics"], "onnx": "model.onnx"})
    page = report(write_run(tmp_path, data, name="metrics.json")).read_text()
    assert "hwai compress: cnn on digits" in page and "Baseline vs compressed model" in page
    assert '<section id="pareto">' not in page and '<section id="trials">' not in page
    assert f'data-key="best.metrics.size_kb" data-value="{data["best"]["metrics"]["size_kb"]!r}"' in page


def test_markdown_summary(tmp_path):
    data = synthetic_results()
    md = report(write_run(tmp_path, data), format="md")
    best = data["best"]["metrics"]
    assert md.startswith("## hwai optimize: cnn on digits for stm32h743")
    assert f"| accuracy | measured | 97.50% | {fmt('accuracy', best['accuracy'])} |" in md
    assert f"| target latency | predicted | 42.5 ms | {fmt('target_latency_ms', best['target_latency_ms'])} |" in md
    infeasible = sum(not t["feasible"] for t in data["trials"])
    assert f"**Search:** {N_TRIALS} trials, {infeasible} infeasible, {len(data['pareto'])} on the Pareto front." in md
    assert "**Fits stm32h743:** yes" in md and "| prune 30% structured |" in md


def test_best_metrics_taken_from_the_chosen_trial(tmp_path):
    data = synthetic_results()
    data["best"]["metrics"] = {}
    n = data["best"]["trial"]
    page = report(write_run(tmp_path, data)).read_text()
    acc = data["trials"][n]["metrics"]["accuracy"]
    assert f'data-key="trials.{n}.metrics.accuracy" data-value="{acc!r}">{fmt("accuracy", acc)}<' in page


def test_wrong_types_do_not_crash(tmp_path):
    """Sections of the wrong type are left out, not fatal."""
    data = {"schema": "hwai.results/1", "environment": None, "model": "cnn", "target": {"sram_bytes": "big"},
            "constraints": {"max_latency_ms": "fast"}, "baseline": {"accuracy": 0.9, "size_kb": None}, "kinds": [],
            "trials": [{"number": 0, "metrics": None}, "junk", {"metrics": {"accuracy": 0.8, "host_latency_ms": 1}}],
            "pareto": [0, 99], "best": {"trial": 99, "parity": "ok"}, "techniques": [{"metric_before": None}, 5],
            "layers": [{"name": "a", "fp32_measured_ms": "x"}, {"op": "conv"}], "memory": {"timeline": "nope"}}
    page = report(write_run(tmp_path, data)).read_text()
    assert '<section id="memory">' not in page and '<section id="layers">' not in page
    assert "| accuracy | unknown | 90.00% | n/a |" in report(tmp_path / "run", format="md")


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.write_text("# a readme"), "is a file, not a run directory"),
    (lambda d: d.mkdir(), "neither results.json"),
    (lambda d: (d.mkdir(), (d / "results.json").write_text("{nope")), "not valid JSON"),
    (lambda d: (d.mkdir(), (d / "results.json").write_text("[1]")), "holds a list"),
    (lambda d: (d.mkdir(), (d / "metrics.json").write_text('{"schema": "other/2"}')), "not hwai.results"),
])
def test_user_errors(tmp_path, setup, message):
    setup(tmp_path / "run")
    with pytest.raises(UserError, match=message):
        report(tmp_path / "run")


def test_unknown_format(tmp_path):
    with pytest.raises(UserError, match="unknown report format"):
        report(write_run(tmp_path), format="pdf")


def test_cli(tmp_path):
    run = write_run(tmp_path)
    done = run_cli("report", run, "--format", "md", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| accuracy | measured |" in done.stdout
    done = run_cli("report", tmp_path / "missing", timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("hwai: error: run directory") and done.stderr.count("\n") == 1
    (tmp_path / "README.md").write_text("# not a run")
    done = run_cli("report", tmp_path / "README.md", timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "README.md is a file, not a run directory" in done.stderr and "does not exist" not in done.stderr


def test_a_run_without_a_chosen_model_says_why(tmp_path):
    data = synthetic_results()
    data["best"] = {"trial": None, "metrics": {}, "onnx": None, "parity": None,
                    "reason": "no candidate improved on the baseline: each of the 3 that satisfy the limits is no "
                              "better on any objective, so the baseline is kept"}
    page = report(write_run(tmp_path, data)).read_text()
    assert "<b>No model chosen</b> — no candidate improved on the baseline" in page and "Chosen: <b>trial" not in page
