"""From a study to answers: trial records, the Pareto front (feasible candidates only), the best
candidate under the user's limits (or the closest one, said plainly), its export with a parity check,
pareto.json and results.json (schema hwai.results/1); hwai.search.display shows them.

Every trial has one outcome, counted apart everywhere: feasible, infeasible (built and measured, breaks a
limit), screened out (the cost model predicted it breaks a limit: never built), failed (an error, or the
process died), running / waiting."""
from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from hwai import io
from hwai.measure import environment
from hwai.search.constraints import check
from hwai.search.feedback import fit, pairs

STATES = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED", TrialState.FAIL: "FAIL",
          TrialState.RUNNING: "RUNNING", TrialState.WAITING: "WAITING"}
OUTCOMES = ("feasible", "infeasible", "screened_out", "failed", "running", "waiting")


def _outcome(state: TrialState, violations: list[str]) -> str:
    if state == TrialState.COMPLETE:
        return "infeasible" if violations else "feasible"
    return {TrialState.PRUNED: "screened_out", TrialState.FAIL: "failed", TrialState.RUNNING: "running"}.get(
        state, "waiting")


def records(study: optuna.Study) -> list[dict]:
    """One plain dict per trial, as results.json lists them."""
    out = []
    for t in study.get_trials(deepcopy=False):
        why = list(t.user_attrs.get("violations", []))
        outcome = _outcome(t.state, why)
        rec = {"number": t.number, "state": STATES[t.state], "outcome": outcome, "params": dict(t.params),
               "description": t.user_attrs.get("description"), "metrics": dict(t.user_attrs.get("metrics", {})),
               "feasible": outcome == "feasible" if outcome in ("feasible", "infeasible", "screened_out") else None,
               "violations": why}
        if t.state == TrialState.PRUNED:
            rec["reason"] = "screened out by the cost model: " + "; ".join(why)
        if t.state == TrialState.FAIL:
            rec["reason"] = t.user_attrs.get("error") or ("interrupted" if t.user_attrs.get("interrupted")
                                                          else "process died while running it")
        if "failed_trial" in t.system_attrs:
            rec["retry_of"] = t.system_attrs["failed_trial"]
        out.append(rec)
    return out


def tally(recs: list[dict]) -> dict[str, int]:
    """Trials per outcome, plus `complete` (feasible + infeasible) and `total`."""
    counts = {o: sum(r["outcome"] == o for r in recs) for o in OUTCOMES}
    return {**counts, "complete": counts["feasible"] + counts["infeasible"], "total": len(recs)}


def summary(counts: dict[str, int]) -> str:
    """'5 finished (3 feasible, 1 infeasible, 1 screened out), 2 failed' (zero counts left out)."""
    parts = [f"{counts[o]} {o.replace('_', ' ')}" for o in ("feasible", "infeasible", "screened_out") if counts[o]]
    text = f"{counts['complete'] + counts['screened_out']} finished" + (f" ({', '.join(parts)})" if parts else "")
    return text + "".join(f", {counts[o]} {o}" for o in ("failed", "running") if counts[o])


def dominates(a: list[float], b: list[float]) -> bool:
    """a is at least as good everywhere and better somewhere (all objectives minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto(recs: list[dict], objectives: list[str], reference: dict | None = None) -> list[int]:
    """Numbers of the non-dominated feasible completed trials (a re-proposed candidate counts once).
    `reference`: the baseline's metrics when it meets the limits; a trial it dominates bought nothing
    (no better on any objective) and is not on the front."""
    def key(m: dict) -> list[float]:
        return [-m[o] if o == "accuracy" else m[o] for o in objectives]

    pool = _distinct_feasible(recs)
    ref = key(reference) if reference and all(o in reference for o in objectives) else None
    return [r["number"] for r in pool
            if not any(dominates(key(o["metrics"]), key(r["metrics"])) for o in pool if o is not r)
            and not (ref is not None and dominates(ref, key(r["metrics"])))]


def _distinct_feasible(recs: list[dict]) -> list[dict]:
    """Completed trials within every limit, each candidate once (a re-proposed copy is not a new point)."""
    return [r for r in recs if r["feasible"] and "duplicate_of" not in r["metrics"]]


def choose(recs: list[dict], front: list[int], latency_key: str, constraints: dict) -> dict:
    """The best feasible candidate: the lowest latency on the target among the Pareto front (all of
    which meet the accuracy-drop limit); or, when none is, why not and the closest one."""
    by_number = {r["number"]: r for r in recs}

    def fastest(r: dict) -> tuple[float, float]:
        return r["metrics"][latency_key], -r["metrics"]["accuracy"]

    if front:
        best = min((by_number[n] for n in front), key=fastest)
        kind = "predicted" if latency_key == "target_latency_ms" else "measured host"
        among = (f"lowest {kind} latency among {len(front)} Pareto-optimal candidates that satisfy" if len(front) > 1
                 else "the only Pareto-optimal candidate that satisfies")
        return {"trial": best["number"], "metrics": best["metrics"], "description": best["description"],
                "reason": f"{among} every limit ({_limits(constraints)})"}
    feasible = _distinct_feasible(recs)
    if feasible:  # all dominated by the baseline: roll back to it
        closest = min(feasible, key=fastest)
        reason = (f"no candidate improved on the baseline: each of the {len(feasible)} that satisfy the limits "
                  f"({_limits(constraints)}) is no better on any objective, so the baseline is kept")
        violations = ["dominated by the baseline"]
    else:
        tried = [r for r in recs if r["state"] in ("COMPLETE", "PRUNED") and r["violations"]]
        closest = min(tried, key=lambda r: (r["state"] != "COMPLETE", len(r["violations"])), default=None)
        reason = f"no candidate satisfied the limits ({_limits(constraints)})"
        violations = closest["violations"] if closest else []
    out = {"trial": None, "metrics": {}, "onnx": None, "parity": None, "reason": reason}
    if closest is not None:
        out["closest"] = {"trial": closest["number"], "metrics": closest["metrics"], "violations": violations,
                          "description": closest["description"]}
        out["reason"] += f"; closest: trial {closest['number']} ({'; '.join(violations)})"
    return out


def reference(ctx) -> dict | None:
    """The baseline's metrics when the baseline itself meets the user's limits (a candidate must beat it)."""
    base = ctx.baseline or {}
    why, _ = check(ctx.cfg.constraints, base, base, ctx.cfg.latency_key)
    return None if why or not base else base


def _limits(c: dict) -> str:
    text = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in c.items() if v is not None)
    return text or "none given"


def export_best(ctx, best: dict) -> tuple[dict, dict]:
    """best/model.onnx (the trial's own artifact, byte for byte, when this process built it; else the
    candidate rebuilt with the same seed and exported again) and best/model.pt, checked against PyTorch;
    its validation accuracy measured again on that file, and its test accuracy measured (once, here)."""
    import shutil

    from hwai.models import ModelSpec
    from hwai.runtimes.deployment import scored
    from hwai.search import candidate as hc
    from hwai.search.space import Candidate
    from hwai.train import load_checkpoint, save_checkpoint

    rec = best["candidate"]
    cand = Candidate(ModelSpec.from_dict(rec["spec"]), rec["same_architecture"], rec["prune"],
                     {k: int(v) for k, v in rec["bits"].items()}, rec["fuse"], rec["epochs"],
                     tuple(rec["patch"]) if rec.get("patch") else None, rec.get("subnet"))
    bundle = hc.data_at(ctx.data, cand.spec)
    trial_dir = ctx.run_dir / "trials" / str(best["trial"])
    folder = ctx.run_dir / "best"
    onnx_path = folder / "model.onnx"
    if (trial_dir / "model.pt").is_file() and (trial_dir / "model.onnx").is_file():
        model_float = load_checkpoint(trial_dir / "model.pt")[0]
        model = hc.finish(model_float, cand, bundle)
        io.atomic_write(onnx_path, lambda tmp: shutil.copyfile(trial_dir / "model.onnx", tmp))
        source = f"trials/{best['trial']}/model.onnx"
    else:  # trained by a worker on another machine: train it again (same seed)
        start = None
        if cand.subnet is not None:  # the subnet's inherited weights, extracted as the trial did
            from hwai.nas.training import subnet

            start = subnet(ctx.supernet, cand.subnet, ctx.data)[0]
        model_float, model = hc.realize(cand, ctx.baseline_model, ctx.base_spec, ctx.data, seed=ctx.cfg.seed,
                                        start=start)
        hc.export_onnx(model, bundle.example(1), onnx_path, bundle, int8=cand.quantized)
        source = "rebuilt by this process (the trial ran elsewhere)"
    save_checkpoint(folder / "model.pt", model_float, cand.spec, bundle.describe(),
                    {"candidate": rec, "trial": best["trial"], **best["metrics"]})
    threads = ctx.mcfg.threads
    out = {"onnx": "best/model.onnx", "onnx_source": source, "model": "best/model.pt",
           "parity": hc.parity(model, onnx_path, bundle.example(hc.PARITY_SAMPLES, split="val")),
           **scored("onnxruntime", onnx_path, bundle, threads, split="val").fields("onnx_val_accuracy"),
           **scored("onnxruntime", onnx_path, bundle, threads, split="test").fields("test_accuracy"),
           "test_accuracy_source": "onnxruntime (best/model.onnx)"}
    runtime, threads = best["metrics"].get("host_runtime", "onnxruntime"), best["metrics"].get("host_threads", threads)
    out.update(runtime=runtime, threads=threads)
    if runtime != "onnxruntime":  # the deployment search chose another runtime: ship its artifact too
        from hwai.runtimes import get

        artifact = get(runtime).export(model, bundle.example(1), folder / runtime, int8=cand.quantized, calib=bundle)
        shown = artifact.relative_to(ctx.run_dir)
        tested = scored(runtime, artifact, bundle, threads, split="test").fields("test_accuracy")
        out.update(artifact=str(shown), **tested, test_accuracy_source=f"{runtime} ({shown}, {threads} thread(s))")
    out.update(mcu_bundle(ctx, cand, model, model_float, bundle))
    detail = _target_detail(ctx, cand, model_float, bundle)
    detail["layers"] = _measured_layers(ctx, detail.get("layers", []), onnx_path, bundle, cand.quantized)
    return out, detail


def mcu_bundle(ctx, cand, model, model_float, bundle) -> dict:
    """best/tflm/ on a microcontroller whose runtime is TFLite Micro, when the chosen candidate runs patches: the patch
    bundle (hwai.runtimes.tflm_patch; the whole-model bundle, saying why, when its stage cannot be expressed)."""
    target = ctx.target
    if target is None or target.kind != "mcu" or "tflm" not in target.deploy_runtimes or not cand.patch:
        return {}
    from hwai import memory
    from hwai.errors import UserError
    from hwai.runtimes import tflm_patch
    from hwai.search import candidate as hc

    example = bundle.example(1)
    split, grid = hc.patch_plan(cand, memory.capture(model_float.eval(), example))
    if split is None:
        return {}
    try:
        shipped = tflm_patch.export(model, example, ctx.run_dir / "best" / "tflm", bundle, split=split, grid=grid)
    except UserError as exc:  # litert-torch or tflite-micro not installed here
        return {"tflm": None, "tflm_note": str(exc)}
    arena = shipped.meta.get("arena", {})
    return {"tflm": "best/tflm", "tflm_patch": shipped.patched, "tflm_arena_bytes": arena.get("bytes"),
            "tflm_note": shipped.fallback or f"patch bundle: {split} in {grid}x{grid} tiles, arena measured by "
                                              "TensorFlow Lite Micro"}


def _measured_layers(ctx, rows: list[dict], best_onnx, bundle, quantized: bool) -> list[dict]:
    """Per-layer ONNX Runtime times (hwai.profile) of the baseline (FP32) and the chosen model, added to the
    predicted rows by module name (rows of their own when there is no target)."""
    from dataclasses import replace

    from hwai.profile import merge_layers, module_times

    cfg = replace(ctx.mcfg, layer_runs=10)
    chosen = f"chosen_{'int8' if quantized else 'fp32'}_measured_ms"
    return merge_layers(rows, {"baseline_fp32_measured_ms": module_times(ctx.run_dir / "baseline" / "model.onnx",
                                                                         ctx.data, cfg),
                               chosen: module_times(best_onnx, bundle, cfg)})


def _target_detail(ctx, cand, model_float, bundle) -> dict:
    """The best candidate on the target: per-layer predictions and the live-activation timeline."""
    if ctx.target is None:
        return {}
    from hwai import graph as hgraph
    from hwai import memory
    from hwai.search import candidate as hc

    example = bundle.example(1)
    graph = hgraph.capture(model_float.eval(), example)  # pruned, unfused: the cost model fuses as the runtime does
    pred = hc.predict(graph, [ctx.target], cand, ctx.threads)[ctx.target.name]
    layers = [{"name": l.name, "op": l.op, "dtype": l.dtype, "predicted_ms": l.latency_ms,
               "predicted_energy_uj": l.energy_uj, "bound": l.bound} for l in pred.layers]
    # the chart: live bytes at the precision the target runs (int8 buffers for int8 layers), layer by layer and
    # as an in-place arena plan, with the best patch plan's peak
    mgraph = memory.capture(model_float.eval(), example)
    precision = hc.node_precision(mgraph, cand.bits)
    section = memory.report(mgraph, precision, _sram(ctx.target))
    if ctx.target.kind == "mcu":  # the peak the card shows (hc.planned_memory): the chosen candidate's own plan
        chosen = hc.planned_memory(cand, model_float, example, ctx.target, pred.latency_ms, pred.weight_bytes)
        if chosen.get("patch_split"):
            own = memory.plan(mgraph, precision, split=chosen["patch_split"], grid=chosen["patch_grid"])
            section["peaks"].update(patch_bytes=own.arena_bytes, split=own.split, grid=own.grid,
                                    extra_macs=own.extra_macs)
        section["peaks"]["chosen"] = "patch" if chosen.get("patch_split") else "planned"
    return {"layers": layers, "memory": {**section, "peak_activation_bytes": pred.peak_activation_bytes,
                                         "fits": pred.fits, "fit_message": pred.fit_message}}


def _sram(target) -> int | None:
    sram = None if target is None else target.capacity_bytes.get("sram")
    return None if sram is None else int(sram)


def finalize(ctx, study: optuna.Study) -> dict:
    """Write pareto.json, best/ and results.json; returns the results dict."""
    cfg = ctx.cfg
    recs = records(study)
    objectives = study.user_attrs.get("objectives", cfg.objectives)
    front = pareto(recs, objectives, reference(ctx))
    best = choose(recs, front, cfg.latency_key, cfg.constraints.to_dict())
    detail: dict = {}
    if best["trial"] is not None:
        trial = study.get_trials(deepcopy=False)[best["trial"]]
        exported, detail = export_best(ctx, {**best, "candidate": trial.user_attrs["candidate"]})
        tested = {k: exported[k] for k in ("test_accuracy", "test_accuracy_n", "test_accuracy_ci")}
        best.update(exported, metrics={**best["metrics"], **tested})
    baseline = {**ctx.baseline, **_baseline_test_accuracy(ctx)}  # measured once, after the choice
    io.write_json(ctx.run_dir / "pareto.json", {"objectives": objectives, "kinds": ctx.kinds(),
                                                "trials": [r for r in recs if r["number"] in front]})
    target = ctx.target
    results = {
        "schema": "hwai.results/1", "command": "optimize", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(ctx.mcfg.threads),
        "model": {"name": ctx.base_spec.name, "data": cfg.data, "spec": ctx.base_spec.to_dict()},
        "splits": ctx.data.sizes(),
        "target": {"name": target.name, "file": str(target.path), "sram_bytes": _sram(target)} if target
        else {"name": "host", "file": None, "sram_bytes": None},
        "constraints": cfg.constraints.to_dict(), "objectives": objectives, "baseline": baseline,
        "kinds": ctx.kinds(), "counts": tally(recs), "trials": recs, "pareto": front, "best": best,
        "techniques": _techniques(baseline, best), "layers": detail.get("layers", []),
        "memory": detail.get("memory", {"timeline": [], "sram_bytes": _sram(target)}),
        "calibration": _calibration(recs, ctx), "measurement": ctx.measurement(), "prediction": ctx.prediction(),
        "study": {"name": study.study_name, "sampler": cfg.sampler, "trials_requested": cfg.trials,
                  "config": cfg.to_dict()},
    }
    io.write_json(ctx.run_dir / "results.json", results)
    from hwai.report import report

    report(ctx.run_dir)  # run_dir/report.html, from the results.json just written
    return results


def _techniques(baseline: dict, best: dict) -> list[dict]:
    if best.get("trial") is None:
        return []
    return [{"name": best["description"], "metric_before": baseline, "metric_after": best["metrics"]}]


def _baseline_test_accuracy(ctx) -> dict:
    """The baseline's exported ONNX model on the test split (ONNX Runtime, as the chosen model's), with its sample
    count and 95% interval (test_accuracy, test_accuracy_n, test_accuracy_ci)."""
    from hwai.runtimes.deployment import scored

    onnx = ctx.run_dir / "baseline" / "model.onnx"
    return scored("onnxruntime", onnx, ctx.data, ctx.mcfg.threads, split="test").fields("test_accuracy")


def _calibration(recs: list[dict], ctx) -> dict:
    """The measured-vs-predicted feedback at the end of the run: the partially pooled correction and its nested
    leave-one-out error against the raw cost model's, and the errors the trials saw as the run went."""
    if ctx.host is None:
        return {"target": None, "note": "no host target: no measured-vs-predicted feedback"}
    correction = fit(pairs([ctx.baseline] + [r["metrics"] for r in recs if r["state"] == "COMPLETE"]))
    done = [r["metrics"] for r in recs if r["state"] == "COMPLETE" and "host_error_pct" in r["metrics"]
            and "duplicate_of" not in r["metrics"]]

    def median_abs(key: str) -> float | None:
        vals = sorted(abs(m[key]) for m in done)
        return vals[len(vals) // 2] if vals else None

    applies = ["host_predicted_ms (screening when the latency limit is on the host)"]
    if ctx.target_is_host:
        applies.append("target_latency_ms (the target is the host)")
    not_applied = ["energy_mj: the cost model's energy has no term in time (MACs x pJ/MAC + bytes x pJ/byte)"]
    if ctx.target is not None and not ctx.target_is_host:
        not_applied.append(f"{ctx.target.name} predictions: that target cannot be measured on this machine")
    return {"target": ctx.host.name, "file": str(ctx.host.path), "threads": ctx.mcfg.threads,
            "method": "partial pooling of log(measured / predicted) over the baseline and completed trials: a pooled "
                      f"factor shrunk toward 1 (a prior worth {correction.prior_pairs:g} pairs), kernel-group factors "
                      "(fp32 / int) shrunk toward the pooled one by the ratio of within- to between-group variance; "
                      "error by nested leave-one-out (every fold refits everything); applied to later predictions",
            **correction.to_dict(), "applies_to": applies, "not_applied_to": not_applied,
            "trials": len(done), "in_run_median_abs_error_pct_raw": median_abs("host_error_raw_pct"),
            "in_run_median_abs_error_pct_corrected": median_abs("host_error_pct")}
