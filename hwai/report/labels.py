"""What each figure of a run is called and how it is written: one catalog of the metric keys that results.json
and metrics.json hold (a human label, a unit, which direction is better, a one-line note), and the formatting
every view shares, so a figure reads the same in the HTML page, its plots and the markdown summary.

A key missing from METRICS is not shown as a figure (its raw name is no label); tests check that every key the
producers label measured or predicted is here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """How one metric key is shown."""

    label: str  # what people read, e.g. "host latency"
    unit: str  # "%" (stored as a fraction), "ms", "KiB", "mJ", "count" or "" (a plain number)
    better: str  # "higher", "lower", or "" for figures with no better direction (a spread, a count of extra work)
    group: str = "run"  # "run": a figure of the model itself; "host model": the cost model's view of this host
    note: str = ""  # one line on what the figure is, shown beside it where there is room
    same_as: tuple[str, ...] = ()  # keys this one copies when nothing changed it (shown once when equal)


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", "%", "higher"),
    "test_accuracy": Metric("test accuracy", "%", "higher", note="measured once, after the choice; read by no decision"),
    "accuracy_fake_quant": Metric("accuracy, PyTorch fake-quant", "%", "higher",
                                  note="the quantized model simulated in PyTorch, beside its exported artifact's"),
    "parity_top1_agreement": Metric("top-1 agreement of the export with PyTorch", "%", "higher"),
    "host_latency_ms": Metric("host latency", "ms", "lower", note="median at batch 1 on the runtime and threads shown"),
    "host_latency_iqr_ms": Metric("host latency spread (IQR)", "ms", "",
                                  note="interquartile range of the timed runs: the noise, not the speed"),
    "torch_latency_ms": Metric("PyTorch eager latency", "ms", "lower"),
    "size_kb": Metric("model size", "KiB", "lower", note="bytes of the exported file"),
    "params": Metric("parameters", "count", "lower"),
    "target_latency_ms": Metric("target latency", "ms", "lower"),
    "target_latency_raw_ms": Metric("target latency, before the measured correction", "ms", "lower",
                                    same_as=("target_latency_ms",)),
    "energy_mj": Metric("energy per inference", "mJ", "lower"),
    "peak_sram_kb": Metric("peak SRAM needed", "KiB", "lower"),
    "peak_layer_by_layer_kb": Metric("peak activations, layer by layer", "KiB", "lower",
                                     note="without an arena plan or patches: the figure the plan improves on"),
    "patch_extra_macs": Metric("extra MACs of patch-by-patch execution", "count", "",
                               note="halo recomputation paid for the lower peak memory"),
    "host_feedback_ms": Metric("host latency on ONNX Runtime at the feedback threads", "ms", "lower", "host model",
                               "the measurement the host prediction is compared with", ("host_latency_ms",)),
    "host_predicted_raw_ms": Metric("host latency, roofline prediction", "ms", "lower", "host model",
                                    "the cost model alone, before any correction", ("target_latency_ms",)),
    "host_predicted_ms": Metric("host latency, corrected prediction", "ms", "lower", "host model",
                                "the roofline prediction times the factor fitted on this run's measurements",
                                ("host_predicted_raw_ms", "target_latency_ms")),
    "spikes_per_neuron": Metric("spikes per neuron per inference", "", "lower"),
    "synaptic_ops": Metric("synaptic operations per inference", "count", "lower"),
}

# results.json `environment` keys that are not package names, as people read them
ENVIRONMENT = {"cpu": "CPU", "physical_cores": "physical cores", "threads": "threads (intra-op)"}

# what a change is called, by unit: (word when the value went down, word when it went up)
WORDS = {"ms": ("faster", "slower"), "KiB": ("smaller", "larger"), "mJ": ("less", "more"), "count": ("fewer", "more"),
         "": ("lower", "higher")}


def number(value: Any) -> float | None:
    """A finite number, or None (booleans, strings, NaN and missing values are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        return None
    return float(value)


WIDE_SPREAD = 0.2  # an IQR above this fraction of the median marks a noisy measurement (issue 25: flag, repeat)


def spread(median: Any, iqr: Any) -> str:
    """'⚠ noisy: IQR 42% of median' for a timing with a wide spread; '' otherwise (or when either is missing)."""
    m, q = number(median), number(iqr)
    if m is None or q is None or m <= 0 or q <= WIDE_SPREAD * m:
        return ""
    return f"⚠ noisy: IQR {q / m:.0%} of median"


def threads(n: object) -> str:
    """'1 thread', '2 threads'."""
    return f"{n} thread" + ("" if str(n) == "1" else "s")


def label(metric: str) -> str:
    """The human label of a metric key (a key outside the catalog keeps its words, never its underscores)."""
    found = METRICS.get(metric)
    return found.label if found else metric.replace("_", " ")


def unit(metric: str) -> str:
    found = METRICS.get(metric)
    return found.unit if found else ""


def plain(value: float) -> str:
    """A number for people: three significant digits, thousands separators, no exponent between 0.001 and 1e15."""
    if value == 0:
        return "0"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 0.001:
        return f"{value:.{max(0, 2 - math.floor(math.log10(size)))}f}"
    return f"{value:.2e}"


def size(kib: float) -> str:
    """A size in KiB for people: '79.6 KiB', '1,126 KiB', '10.77 MiB' (MiB from 10 MiB up)."""
    return f"{kib / 1024:,.2f} MiB" if abs(kib) >= 10 * 1024 else f"{plain(kib)} KiB"


def fmt(metric: str, value: Any) -> str:
    """A metric value with its unit: accuracy in %, times in ms, sizes in KiB/MiB; 'n/a' when absent."""
    v = number(value)
    if v is None:
        return "n/a"
    u = unit(metric)
    if u == "%":
        return f"{v * 100:.2f}%"
    if u == "KiB":
        return size(v)
    if u == "count":
        return f"{v:,.0f}"
    return f"{plain(v)} {u}".strip()


@dataclass(frozen=True)
class Change:
    """How a figure moved from one model to another, in words, and whether that is good (None: neither)."""

    text: str  # "3.10× faster", "+1.25 pt", "spread ×1.02"; "" when there is nothing to say
    good: bool | None = None


def change(metric: str, before: Any, after: Any, ratio: float | None = None, verdict: str | None = None) -> Change:
    """`before` → `after` in words: points for accuracy, '3.1× faster' for costs, 'spread ×1.02' for a spread.
    `ratio` (after / before) replaces the quotient of the two when the run stores its own figure (a paired or
    interleaved comparison); `verdict` 'slower' / 'faster' / other is its test's answer: without a measurable
    difference the change is not coloured."""
    b, a = number(before), number(after)
    found = METRICS.get(metric)
    if found and found.unit == "%":
        if b is None or a is None:
            return Change("")
        points = (a - b) * 100
        return Change(f"{points:+.2f} pt", None if abs(points) < 0.005 else (points > 0) == (found.better == "higher"))
    r = number(ratio)
    if r is None and b is not None and a is not None and a > 0 and b > 0:
        r = a / b
    if r is None or r <= 0:
        return Change("")
    if found is None or not found.better:  # a spread or extra work: how much, no praise or blame
        return Change(f"{'spread' if metric.endswith('iqr_ms') else ''} ×{r:.2f} of the baseline's".strip())
    down, up = WORDS.get(found.unit, WORDS[""])
    text = f"{1 / r:.2f}× {down}" if r <= 1 else f"{r:.2f}× {up}"
    if verdict is not None and verdict not in ("slower", "faster"):
        return Change(f"{text} (not a measurable difference)")
    if r == 1:
        return Change("unchanged")
    good = None if f"{max(r, 1 / r):.2f}" == "1.00" else (r < 1) == (found.better == "lower")
    return Change(text, good)
