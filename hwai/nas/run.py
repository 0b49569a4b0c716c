"""`hwai nas`: train (or reuse) a supernet, measure a few hundred subnets, fit the accuracy predictor,
build the cost table, search on predictions, then extract, fine-tune, measure and export the best.

A run directory holds every stage's result, written atomically, so rerunning with the same --run resumes
after the last finished step: config.json, supernet.pt, cost_table.json, measured.json, retest.json (the
held-out subnets measured again with other BatchNorm recalibration batches: the measurement's own retest tau),
search.json, candidates/N/{metrics.json, model.pt}, best/{model.onnx, model.pt}, results.json.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hwai import io
from hwai.data.formats import check_val_fraction
from hwai.errors import UserError
from hwai.measure import environment
from hwai.nas.search import SearchConfig
from hwai.nas.space import NasSpace
from hwai.nas.training import SupernetConfig

PRECISIONS = ("int8", "fp32")
FINETUNE_LR = 1e-3  # fine-tuning inherited weights: half of AdamW's default peak rate
VAL_FRACTION = 0.5  # mnist: 2,500 val samples, retest tau 0.935 (0.1: 500, tau 0.78); docs/guides/nas.md
CHECKED_SUBNETS = 12  # subnets whose cost-table composition is checked against cost.predict on the whole graph


@dataclass(frozen=True)
class NasConfig:
    """Everything a run does; stored in the run directory, and a resumed run must repeat it."""

    data: str = "mnist"  # data spec (images)
    target: str = "stm32h743"  # target of the predicted latency, energy and SRAM (catalog name or YAML)
    family: str = "mobilenetv2"  # supernet family: mobilenetv2 or resnet
    input_size: int = 32  # the largest input side; smaller resolutions are 1/2 .. 7/8 of it
    precision: str = "int8"  # deployment precision of the subnets: int8 (quantized after fine-tuning) or fp32
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    subnets: int = 300  # subnets measured to fit (and judge) the accuracy predictor
    search: SearchConfig = field(default_factory=SearchConfig)
    candidates: int = 6  # subnets of the predicted front extracted, fine-tuned and measured
    finetune_epochs: int = 2  # per candidate, from inherited weights, distilled from the largest subnet
    measure_seconds: float = 1.0  # time cap per host latency measurement
    val_fraction: float = VAL_FRACTION  # share of every class held out for validation: subnets are ranked on it,
    # and it must be large enough for that ranking to repeat (retest tau, see hwai.nas.predictor.retest)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}: use {' or '.join(PRECISIONS)}")
        if self.input_size < 8 or self.subnets < 8 or self.candidates < 1 or self.finetune_epochs < 0:
            raise UserError("nas: input size >= 8, subnets >= 8, candidates >= 1, fine-tune epochs >= 0")
        check_val_fraction(self.val_fraction)
        self.space  # an unknown family or a bad space fails here, before any work

    @property
    def space(self) -> NasSpace:
        sizes = tuple(sorted({max(8, int(round(self.input_size * f / 4)) * 4) for f in (0.5, 0.625, 0.75, 0.875)}
                             | {self.input_size}))
        return NasSpace.for_family(self.family, resolutions=sizes)

    def to_dict(self) -> dict:
        return asdict(self)


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c}


def _check_config(run_dir: Path, cfg: NasConfig) -> None:
    path = run_dir / "config.json"
    mine = json.loads(json.dumps(cfg.to_dict()))
    if path.is_file():
        theirs = json.loads(path.read_text())
        changed = sorted(k for k in mine if mine[k] != theirs.get(k))
        if changed:
            raise UserError(f"{run_dir} was started with other settings ({', '.join(changed)}): repeat them to "
                            "resume, or use another --run")
    else:
        io.write_json(path, mine)


def _cost_table(run_dir: Path, cfg: NasConfig, target, supernet, progress: bool):
    from hwai.nas import lut

    path = run_dir / "cost_table.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        return lut.from_dict(stored["table"]), stored["info"]
    table, spent = _timed(lambda: lut.build(cfg.space, target, supernet.num_classes, supernet.in_channels,
                                           cfg.precision, progress))
    rows = np.vstack([cfg.space.largest(), cfg.space.smallest(),
                      cfg.space.sample(np.random.default_rng(cfg.supernet.seed + 7), CHECKED_SUBNETS - 2)])
    checked, check_spent = _timed(lambda: lut.check(table, supernet, rows, target))
    info = {"entries": int(len(table.tables["latency_ms"])), **spent, "check": checked,
            "check_wall_s": check_spent["wall_s"],
            "method": f"per-part hwai.cost.predict ({cfg.precision}) on target {target.name} ({target.path}), "
                      "summed (latency, energy) / max (peak activations) over a subnet's parts"}
    io.write_json(path, {"info": info, "table": table.to_dict()})
    return table, info


def _measured(run_dir: Path, cfg: NasConfig, supernet, data, progress: bool) -> list[dict]:
    from hwai.nas import predictor

    space = cfg.space
    rows = np.vstack([space.largest(), space.smallest(),
                      space.sample(np.random.default_rng(cfg.supernet.seed + 1), cfg.subnets - 2)])
    return predictor.measure(supernet, data, rows, run_dir / "measured.json", progress)


def _search(run_dir: Path, cfg: NasConfig, scorer, progress: bool) -> dict:
    from hwai.nas import search as hsearch

    path = run_dir / "search.json"
    if path.is_file():
        return json.loads(path.read_text())
    found = hsearch.search(cfg.space, scorer, cfg.search, progress)
    scores = found["front_scores"]
    picks = hsearch.spread(found["front"], scores["latency_ms"], cfg.candidates) if len(found["front"]) else []
    out = {k: v for k, v in found.items() if k not in ("front", "front_scores")}
    out["front"] = [{"genes": [int(i) for i in row], **{k: float(v[b]) for k, v in scores.items()}}
                    for b, row in enumerate(found["front"])]
    out["picked"] = [[int(i) for i in row] for row in picks]
    io.write_json(path, out)
    return out


def describe(arch: dict) -> str:
    """A subnet in one line: resolution, width(s), depths, kernels and expansions per stage."""
    stages = sorted({int(k.split(".")[1]) for k in arch if k.startswith("depth.")})
    parts = [f"{arch['resolution']}px"]
    if "width" in arch:
        parts.append(f"width {arch['width']:g}")
    for s in stages:
        d = arch[f"depth.{s}"]
        if "width" in arch:
            blocks = "/".join(f"k{arch[f'kernel.{s}.{j}']}e{arch[f'expand.{s}.{j}']}" for j in range(d))
            parts.append(f"s{s}: {d}x[{blocks}]")
        else:
            parts.append(f"s{s}: {d}x w{arch[f'width.{s}']:g}")
    return ", ".join(parts)


def _candidate(run_dir: Path, n: int, row: list[int], cfg: NasConfig, supernet, data, target, scorer) -> dict:
    """Extract, fine-tune, (quantize,) measure and save one picked subnet."""
    from hwai import cost, measure
    from hwai import graph as hgraph
    from hwai.measure.accuracy import score
    from hwai.nas import supernet as hsn
    from hwai.nas.training import subnet
    from hwai.runtimes import export
    from hwai.train import TrainConfig, default_augmentation, save_checkpoint, train

    folder = run_dir / "candidates" / str(n)
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    w0, c0 = time.perf_counter(), time.process_time()
    space, idx = cfg.space, np.array([row])
    arch = space.arch(row)
    model, view = subnet(supernet, arch, data)
    inherited = score(model, view, "val")
    if cfg.finetune_epochs:  # the teacher: the largest subnet at the candidate's resolution (as in training)
        teacher, _ = subnet(supernet, {**space.arch(space.largest()), "resolution": arch["resolution"]}, data)
        tcfg = TrainConfig(epochs=cfg.finetune_epochs, lr=FINETUNE_LR, warmup_epochs=0.0, seed=cfg.supernet.seed,
                           **default_augmentation("nas", view))
        train(model, view, tcfg, teacher=teacher, progress=False, measure_test=False)  # test: once, for the best
    model.eval()
    spec = hsn.spec(supernet, arch)
    save_checkpoint(folder / "model.pt", model, spec, view.describe(), {"arch": arch, "kind": "nas subnet"})
    example = view.example(1)
    graph = hgraph.capture(model, example)
    p = cost.predict(graph, target, precision=cfg.precision)
    final = model
    if cfg.precision == "int8":
        from hwai.passes.quantize import QuantConfig, quantize

        final = quantize(model, QuantConfig(bits=8), calib=view, example=view.example(2), progress=False)
    onnx_path = export.to_onnx(final, example, folder / "model.onnx", int8=cfg.precision == "int8", calib=view)
    stats = measure.latency(onnx_path, example, measure.MeasureConfig(threads=1, max_seconds=cfg.measure_seconds),
                            runtime="onnxruntime")
    parity = export.parity(final, onnx_path, view.example(256, split="val"))
    predicted = {k: float(v[0]) for k, v in scorer(idx).items()}
    out = {"candidate": n, "genes": row, "arch": arch, "description": describe(arch), "spec": spec.to_dict(),
           "predicted": {"accuracy": predicted["accuracy"], "latency_ms": predicted["latency_ms"],
                         "energy_mj": predicted["energy_mj"], "sram_kb": predicted["sram_bytes"] / 1024,
                         "fits": bool(predicted["fits"])},
           "cost_predict": {"latency_ms": p.latency_ms, "energy_mj": p.energy_mj, "sram_kb": p.sram_bytes_needed / 1024,
                            "fits": p.fits, "fit_message": p.fit_message},
           "measured": {**inherited.fields("inherited_val_accuracy"),
                        **score(final, view, "val").fields("val_accuracy", outcomes=True),
                        "host_latency_ms": stats.median_ms, "host_latency_iqr_ms": stats.iqr_ms,
                        "host_threads": stats.threads, "size_kb": onnx_path.stat().st_size / 1024,
                        "parity": parity.to_dict(),
                        "params": sum(q.numel() for q in model.parameters()), "macs": graph.macs},
           "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}
    io.write_json(folder / "metrics.json", out)
    return out


def _feasible(c: dict, cfg: NasConfig) -> list[str]:
    """Why a measured candidate breaks a limit (cost.predict on its whole graph decides)."""
    p, why = c["cost_predict"], []
    if cfg.search.max_latency_ms is not None and p["latency_ms"] > cfg.search.max_latency_ms:
        why.append(f"predicted latency {p['latency_ms']:.3f} ms > {cfg.search.max_latency_ms:g} ms")
    if cfg.search.max_sram_kb is not None and p["sram_kb"] > cfg.search.max_sram_kb:
        why.append(f"predicted SRAM {p['sram_kb']:.1f} KiB > {cfg.search.max_sram_kb:g} KiB")
    if not p["fits"]:
        why.append(p["fit_message"])
    if not c["measured"]["parity"]["ok"]:
        why.append("exported ONNX disagrees with PyTorch")
    return why


def scorer(run_dir: str | Path):
    """The end-to-end scorer of a finished (or measured) run: its cost table and its accuracy predictor,
    refitted on its measured subnets (deterministic: the same fit as the run's)."""
    from hwai.nas import lut, predictor

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    stored = json.loads((run_dir / "cost_table.json").read_text())["table"]
    records = json.loads((run_dir / "measured.json").read_text())["subnets"]
    table = lut.from_dict(stored)
    return predictor.Scorer(predictor.fit(table.space, records, cfg["supernet"]["seed"])[0], table)


def nas(cfg: NasConfig = NasConfig(), run_dir: str | Path | None = None, progress: bool = True,
        log=print) -> dict:
    """Run (or resume) the whole search; returns the results dict (also written to results.json)."""
    # long: the search's stages in order, each resumable from the run directory
    from hwai import data as hdata
    from hwai import targets
    from hwai.nas import predictor
    from hwai.nas.search import front_mask
    from hwai.nas.training import at_resolution, progress_bar, train_supernet
    from hwai.runtimes.deployment import accuracy

    run_dir = Path(run_dir or Path("runs") / time.strftime("nas-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_config(run_dir, cfg)
    target = targets.load(cfg.target)
    data = hdata.load(cfg.data, input_size=cfg.input_size, val_fraction=cfg.val_fraction)
    log(f"run directory: {run_dir} (the same --run resumes); {cfg.family} supernet, "
        f"{cfg.space.size():.3g} subnets, target {target.name}")
    supernet, trained = train_supernet(cfg.space, data, cfg.supernet, run_dir / "supernet.pt", progress)
    table, table_info = _cost_table(run_dir, cfg, target, supernet, progress)
    (records, measured_spent) = _timed(lambda: _measured(run_dir, cfg, supernet, data, progress))
    (fitted, report), fit_spent = _timed(lambda: predictor.fit(cfg.space, records, cfg.supernet.seed))
    retested, retest_spent = _timed(lambda: predictor.retest(
        supernet, data, [records[h["record"]] for h in report["held_out"]], run_dir / "retest.json", progress))
    report["retest"] = retested
    log(f"accuracy predictor: Kendall tau {report['kendall_tau']:.3f} on {report['held_out_subnets']} held-out "
        f"measured subnets (fit on {report['fit_subnets']}); the measurement's retest tau on the same subnets "
        f"{retested['kendall_tau']:.3f} ({retested['val_samples']} val samples; goal >= 0.9 each)")
    scorer = predictor.Scorer(fitted, table)
    throughput = scorer.throughput()
    found = _search(run_dir, cfg, scorer, progress)
    log(f"search: {found['trials']} subnets proposed by NSGA-II, {len(found['front'])} on the predicted front; "
        f"scoring {throughput['subnets_per_s']:,.0f} subnets/s (measured)")
    candidates = []
    with progress_bar(progress) as bar:
        task = bar.add_task("candidates", total=len(found["picked"]), status="extract, fine-tune, measure, export")
        for n, row in enumerate(found["picked"]):
            candidates.append(_candidate(run_dir, n, row, cfg, supernet, data, target, scorer))
            bar.update(task, advance=1)
    for c in candidates:
        c["violations"] = _feasible(c, cfg)
    ok = [c for c in candidates if not c["violations"]]
    on_front = front_mask(np.array([c["measured"]["val_accuracy"] for c in ok]),
                          np.array([c["cost_predict"]["latency_ms"] for c in ok])) if ok else []
    front = [c["candidate"] for c, keep in zip(ok, on_front) if keep]
    best = max(ok, key=lambda c: (c["measured"]["val_accuracy"], -c["cost_predict"]["latency_ms"]), default=None)
    best_out = {"candidate": None, "reason": "no candidate met the limits" if candidates else
                "no subnet on the predicted front met the limits"}
    if best is not None:
        src = run_dir / "candidates" / str(best["candidate"])
        for name in ("model.pt", "model.onnx"):
            content = (src / name).read_bytes()
            io.atomic_write(run_dir / "best" / name, lambda tmp, b=content: Path(tmp).write_bytes(b))
        view = at_resolution(data, best["arch"]["resolution"])
        best_out = {**best, "test_accuracy": accuracy("onnxruntime", run_dir / "best" / "model.onnx", view, 1, "test"),
                    "onnx": "best/model.onnx", "model": "best/model.pt",
                    "reason": "the highest measured validation accuracy among the measured candidates that meet every "
                              "limit (predicted latency and SRAM by cost.predict on the whole subnet, target "
                              "capacity, ONNX parity); test accuracy measured once, on the exported ONNX model"}
    spent = {"supernet": {"wall_s": trained["wall_s"], "cpu_s": trained["cpu_s"]},
             "cost_table": {"wall_s": table_info["wall_s"] + table_info["check_wall_s"], "cpu_s": table_info["cpu_s"]},
             "measure_subnets": {"wall_s": sum(r["wall_s"] for r in records), "cpu_s": measured_spent["cpu_s"]},
             "predictor_fit": fit_spent,
             "retest": {"wall_s": retested["wall_s"], "cpu_s": retest_spent["cpu_s"]},
             "search": {"wall_s": found["wall_s"], "cpu_s": found["cpu_s"]},
             "candidates": {"wall_s": sum(c["wall_s"] for c in candidates),
                            "cpu_s": sum(c["cpu_s"] for c in candidates)}}
    results = {
        "schema": "hwai.nas/1", "command": "nas", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(1),  # candidates are timed at 1 thread (_measure_candidate)
        "config": json.loads(json.dumps(cfg.to_dict())), "splits": data.sizes(),  # n of every accuracy below
        "space": {**cfg.space.to_dict(), "subnets": cfg.space.size()},
        "target": {"name": target.name, "file": str(target.path)},
        "supernet": {k: trained[k] for k in ("step", "total_steps", "wall_s", "cpu_s")} |
                    {"final_largest_train_loss": trained["history"][-1][1] if trained["history"] else None},
        "cost_table": table_info, "predictor": report, "scoring": throughput,
        "search": {k: v for k, v in found.items() if k != "picked"}, "candidates": candidates,
        "pareto": front, "best": best_out, "timings": spent,
        "total_wall_s": sum(s["wall_s"] for s in spent.values()),
        "total_cpu_s": sum(s["cpu_s"] for s in spent.values()),
        "kinds": {"predicted": "accuracy (predictor), latency_ms, energy_mj, sram_kb, fits (cost table; cost_predict: "
                               "hwai.cost.predict on the whole extracted subnet)",
                  "measured": "val_accuracy (after fine-tuning, quantized where precision is int8; with its n, Wilson "
                              "95% interval and per-sample outcomes), "
                              "inherited_val_accuracy (extracted + BatchNorm recalibrated, FP32), host latency "
                              "(ONNX Runtime, 1 thread, batch 1, median and IQR), ONNX size, parity, times"},
    }
    io.write_json(run_dir / "results.json", results)
    return results
