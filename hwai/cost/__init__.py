"""Predict latency, energy and peak memory of a captured graph on a hardware target.

Two latency models, chosen per target automatically:
- learned (hwai.cost.learned): when the target has stored kernel measurements (one file per thread count,
  `<target>.threads-<N>.measurements.csv` next to its YAML file, written by `hwai calibrate` or imported with
  `hwai calibrate --from FILE`): the kernels ONNX Runtime runs (hwai.cost.kernels) each predicted by a
  regressor fitted to measured kernels, composed into a whole inference (hwai.cost.whole), from the calibration
  at the thread count the prediction is for (`threads=`; `Prediction.threads` says which);
- roofline (hwai.cost.roofline): from the target file's peaks, bandwidths and efficiencies, otherwise.
Energy and memory always come from the roofline's terms. `Prediction.model` says which model predicted the
latency and `Prediction.describe()` from what (file, kernels, machine, date).

    p = cost.predict(graph, target, precision="int8")            # or {node: dtype}; per-layer breakdown
    scorer = cost.prepare(graph, target)                         # batch API for search screening
    s = scorer.score(channel_scale=C, bits=Q, sparsity=S)        # (B, N) arrays -> (B,) totals, >= 10,000/s
See hwai.cost.roofline for the meaning of the candidate arrays. Feedback from measurements: a learned scorer's
`type_ms()` splits predicted latency by kernel type; `prepare(..., corrections={type: factor})` applies factors
fitted to a search's own measurements (per op key for the roofline).
"""
from __future__ import annotations

from hwai.cost.roofline import (
    BITS,
    BatchScores,
    LayerPrediction,
    Prediction,
    Scorer,
    candidate_inputs,
    fit_message,
    notes,
    op_key,
    resolve_dtype,
)
from hwai.errors import UserError
from hwai.graph import Graph
from hwai.targets import Target

__all__ = ["BITS", "BatchScores", "LayerPrediction", "MODELS", "Prediction", "Scorer", "activation_timeline",
           "calibration", "learned_model", "op_key", "patch_latency", "predict", "prepare", "resolve_dtype"]
MODELS = ("auto", "learned", "roofline")


def calibration(target: Target, threads: int | None = None) -> tuple[object, str]:
    """(Measurements, note) of the calibration `target`'s predictions for `threads` intra-op threads use
    (hwai.cost.measurements.select; threads None: the only one, else this machine's physical cores, else the
    most threads); (None, "") without stored measurements."""
    from hwai.cost import measurements
    from hwai.measure import physical_cores

    path, _, note = measurements.select(target.path, threads, physical_cores())
    return (measurements.load(path), note) if path is not None else (None, "")


def learned_model(target: Target, method: str | None = None, threads: int | None = None):
    """The fitted kernel model of `target` for `threads` (hwai.cost.learned.KernelModel; its `threads` says the
    calibration's), or None without stored measurements; method: gbt, rf or linear (default: the one
    calibration chose)."""
    meas, _ = calibration(target, threads)
    if meas is None:
        return None
    from hwai.cost.learned import model_for

    return model_for(meas, method or meas.method)


def prepare(graph: Graph, target: Target, fuse: bool = True, model: str = "auto",
            corrections: dict[str, float] | None = None, threads: int | None = None):
    """A batch scorer of `graph` on `target` (`.score(channel_scale=, bits=, sparsity=)`, `.node_names`):
    the learned latency model where the target has measurements (model "auto" or "learned"), else the roofline.
    corrections: latency factors, per kernel type for the learned model (the keys of `scorer.type_ms()`), per
    op key (conv, depthwise, linear, ...) for the roofline; unlisted ones stay 1.
    threads: the intra-op thread count the latency is for: the learned model uses the target's calibration at
    that count (`calibration`; the scorer's `threads` and `notes` say which it used)."""
    if model not in MODELS:
        raise UserError(f"cost model must be one of {', '.join(MODELS)}, got {model!r}")
    kernel_model, note = None, ""
    if model != "roofline":
        meas, note = calibration(target, threads)
        if meas is not None:
            from hwai.cost.learned import model_for

            kernel_model = model_for(meas, meas.method)
    if model == "learned" and kernel_model is None:
        raise UserError(f"{target.name} has no stored measurements ({target.path}): run `hwai calibrate` "
                        "(this machine) or `hwai calibrate --from FILE --target NAME`")
    if kernel_model is None:
        scorer = Scorer(graph, target, fuse)
        return scorer.corrected(corrections) if corrections else scorer
    from hwai.cost.learned_scorer import LearnedScorer

    try:
        kernel_model = kernel_model.corrected(corrections) if corrections else kernel_model
    except ValueError as exc:
        raise UserError(str(exc)) from None
    scorer = LearnedScorer(graph, target, kernel_model, fuse)
    scorer.notes = [note] if note else []
    return scorer


def activation_timeline(graph: Graph, target: Target, precision: str | dict[str, str] | None = None,
                        fuse: bool = True) -> list[tuple[str, int]]:
    """Live activation bytes per execution step, [(node name, bytes)], at the sizes `predict` counts for the peak
    (int8 layers one byte per element; the input int8 on MCU/NPU targets): a chart of it peaks where the
    prediction's `peak_activation_bytes` says."""
    scorer = Scorer(graph, target, fuse)
    bits, _ = candidate_inputs(scorer, precision, None)
    return scorer.timeline(bits=bits)


def _roofline_total(roof: Scorer, layers: list, peak_act: float) -> tuple[float, list[str]]:
    """The roofline's whole-model ms (layers, per-inference terms, off-chip arena factor) and notes on them. The
    per-inference time goes to the last layer and the arena factor to every layer, so layers add up to the whole."""
    from hwai.cost import offload

    fixed_ms, factor = roof.fixed_s * 1e3, float(offload.arena_factor(roof.target, peak_act))
    out = []
    if fixed_ms and layers:
        layers[-1].latency_ms += fixed_ms
        out.append(f"the last layer's prediction carries {fixed_ms:.4f} ms per inference (invoke overhead"
                   + (", input/output over the host link)" if roof.target.fallback_cpu else ")"))
    if roof.on_host.any():
        first = int(roof.on_host.argmax())
        out.append(f"{roof.target.name} cannot run {roof.node_names[first]} ({roof.keys[first]}): it and the "
                   f"{int(roof.on_host.sum()) - 1} nodes after it run on {roof.target.fallback_cpu}")
    if factor != 1.0:
        for layer in layers:
            layer.latency_ms *= factor
        out.append(f"peak activations exceed {roof.target.name}'s SRAM: the arena is off-chip, latency x {factor:.3g}")
    return sum(l.latency_ms for l in layers), out


def predict(graph: Graph, target: Target, precision: str | dict[str, str] | None = None,
            sparsity: dict[str, float] | None = None, fuse: bool = True, model: str = "auto",
            corrections: dict[str, float] | None = None, threads: int | None = None) -> Prediction:
    """Predicted per-layer and total latency, energy and peak memory of `graph` on `target`.

    precision: one of fp32/fp16/int8/int4 for every node, or {node_name: dtype}; None: each node's own dtype.
    sparsity: {node_name: fraction of zero weights}; it only helps where the target accelerates sparsity.
    model: "auto" (learned where the target has measurements, else roofline), "learned" or "roofline".
    corrections: latency factors (see `prepare`).
    threads: the intra-op thread count the latency is for (see `prepare`); `Prediction.threads` says the
    calibration's.
    """
    scorer = prepare(graph, target, fuse, model, corrections, threads)
    roof = getattr(scorer, "roofline", scorer)
    bits, sp = candidate_inputs(roof, precision, sparsity)
    layers, t = scorer.breakdown(bits=bits, sparsity=sp)
    peak_act, weights = float(t["peak_act"]), float(t["weights"])
    sram, _, fits = roof._fit(peak_act, weights)
    learned = scorer is not roof
    latency, extra = (float(t["latency_ms"]), []) if learned else _roofline_total(roof, layers, peak_act)
    return Prediction(target.name, target.path, layers, latency,
                      float(t["energy"].sum()) * 1e3, int(peak_act), int(weights), int(sram), bool(fits),
                      fit_message(target, float(sram), weights, peak_act),
                      notes(roof, bits, bool(sparsity)) + t.get("notes", []) + extra,
                      model="learned" if learned else "roofline",
                      model_source=scorer.model.describe() if learned else "",
                      threads=scorer.model.threads if learned else None)


def patch_latency(graph: Graph, patch_plan, target: Target) -> tuple[float, float]:
    """Predicted latency (ms) on `target` of the plain schedule and of `patch_plan`'s patch schedule
    (hwai.memory.patched_graph: each patch's box, weights read again in every patch)."""
    from hwai.memory import patched_graph

    base = predict(graph, target, patch_plan.precision)
    patched = patched_graph(graph, patch_plan)
    per = {n.name: patch_plan.precision[s.node] for n, s in zip(patched.nodes, patch_plan.steps)}
    return base.latency_ms, predict(patched, target, per).latency_ms
