"""The roofline factors of a calibrated host target: microbenchmarks (GEMM throughput per dtype on ONNX Runtime
and torch, memory bandwidth, per-op overhead), then per-op efficiency and overhead factors, one memory-time
factor and the SIMD channel block fitted so that the roofline (hwai.cost.roofline) matches measured
whole-model ONNX Runtime latencies (FP32 and INT8 QDQ). The learned kernel model replaces the roofline's
latency on this machine; the roofline still gives energy, memory and a fallback.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from hwai import targets
from hwai.measure import ort_session
from hwai.measure.ort_trace import cpu_name

CLASSES = ("conv", "depthwise", "linear", "_default")  # efficiency / overhead groups the fit can identify
FIT_DTYPES = ("fp32", "int8")
LANES = (1, 4, 8, 16, 32)  # SIMD widths (channels) tried; the one that fits best is written
PRIOR_EFF = {"conv": 0.5, "depthwise": 0.1, "linear": 0.3, "_default": 0.05}  # starting points, pulled weakly


def _gemm_onnx(n: int, int8: bool) -> bytes:
    from onnx import TensorProto, helper

    if int8:
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                  helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])]
        out = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
    else:
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([node], "gemm", inputs, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _chain_onnx(length: int) -> bytes:
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", [f"x{i}"], [f"x{i + 1}"]) for i in range(length)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(f"x{length}", TensorProto.FLOAT, [1, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _best_seconds(fn, repeats: int = 5, budget_s: float = 0.5) -> float:
    fn()
    best, start = float("inf"), time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return best


def microbench(threads: int, n: int = 512) -> dict:
    """Measured peaks (ops/s, 1 MAC = 2 ops), copy bandwidth (bytes/s) and per-op overhead (s) of this machine."""
    import torch

    rng = np.random.default_rng(0)
    out = {}
    for key, int8 in (("ort_fp32_ops", False), ("ort_int8_ops", True)):
        session = ort_session(_gemm_onnx(n, int8), threads)
        a = rng.integers(0, 255, (n, n)).astype(np.uint8) if int8 else rng.standard_normal((n, n)).astype(np.float32)
        b = rng.integers(-127, 127, (n, n)).astype(np.int8) if int8 else a
        out[key] = 2 * n**3 / _best_seconds(lambda: session.run(None, {"a": a, "b": b}))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(n, n)
    out["torch_fp32_ops"] = 2 * n**3 / _best_seconds(lambda: x @ x)
    torch.set_num_threads(previous)
    for key, size in (("sram_bps", 256 * 1024), ("dram_bps", 64 * 2**20)):  # one-thread numpy copy: read + write
        src, dst = np.ones(size // 8), np.empty(size // 8)
        reps = max(1, 2**24 // size)
        out[key] = 2 * size * reps / _best_seconds(lambda: [np.copyto(dst, src) for _ in range(reps)])
    chains = {k: ort_session(_chain_onnx(k), threads) for k in (1, 65)}
    feed = {"x0": np.ones((1, 8), dtype=np.float32)}
    t = {k: _best_seconds(lambda s=s: [s.run(None, feed) for _ in range(50)], 7) / 50 for k, s in chains.items()}
    out["overhead_s"] = max((t[65] - t[1]) / 64, 1e-7)
    return out


def _cache_bytes() -> int:
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        sizes.append(int(text[:-1]) * {"K": 2**10, "M": 2**20}[text[-1]] if text[-1] in "KM" else int(text))
    return max(sizes or [8 * 2**20])


def _dram_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []:
        if line.startswith("MemTotal"):
            return int(line.split()[1]) * 1024
    return 8 * 2**30


def _features(graph, unit: targets.Target, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per layer: compute seconds at efficiency 1, memory seconds, and the fitted class (-1: free op)."""
    from hwai import cost

    scorer = cost.prepare(graph, unit, model="roofline")
    layers, _ = scorer.breakdown(bits=np.full(len(scorer.node_names), cost.BITS[dtype]))
    compute = np.array([l.compute_ms for l in layers]) * 1e-3
    mem = np.array([l.memory_ms for l in layers]) * 1e-3
    klass = []
    for h, layer in zip(scorer.groups, layers):
        key = scorer.keys[h]
        cls = key if key in CLASSES else ("free" if key == "identity" else "_default")
        klass.append(-1 if cls == "free" else CLASSES.index(cls) * len(FIT_DTYPES) + FIT_DTYPES.index(layer.dtype))
    return compute, mem, np.array(klass)


def _predict(theta: np.ndarray, feats) -> float:
    """Whole-model seconds: theta = log efficiencies, log overheads (per class and dtype), and the log of
    one factor on every layer's memory time (the copy microbenchmark is only a proxy for the bandwidth
    ONNX Runtime's kernels reach); see `_theta`."""
    k = len(CLASSES) * len(FIT_DTYPES)
    eff, ovh = np.exp(np.append(theta[:k], 0.0)), np.exp(np.append(theta[k:2 * k], -np.inf))  # index -1: free op
    memory_scale = np.exp(theta[2 * k])
    compute, mem, klass = feats
    return float((np.maximum(compute / eff[klass], mem * memory_scale) + ovh[klass]).sum())


def fit(feats: list, measured: np.ndarray, overhead_prior_s: float) -> tuple[dict, dict, float, float]:
    """Efficiency and overhead per (class, dtype), the memory-time factor, and the final cost: least squares
    on log(predicted / measured), weakly pulled towards the priors (classes a data set does not exercise
    keep their prior; the memory factor's prior is 1, the copy microbenchmark as measured)."""
    from scipy.optimize import least_squares

    k = len(CLASSES) * len(FIT_DTYPES)
    prior = np.log([PRIOR_EFF[c] for c in CLASSES for _ in FIT_DTYPES] + [overhead_prior_s] * k + [1.0])

    def residuals(theta):
        fitted = np.log([_predict(theta, f) for f in feats]) - np.log(measured)
        return np.concatenate([fitted, 0.05 * (theta - prior)])

    lower = np.concatenate([np.full(k, np.log(1e-4)), np.full(k, np.log(1e-8)), [np.log(0.1)]])
    upper = np.concatenate([np.full(k, np.log(8.0)), np.full(k, np.log(1e-2)), [np.log(10.0)]])
    # soft-L1: a case slowed by another process (contention only ever slows) must not drag every factor
    solution = least_squares(residuals, np.clip(prior, lower + 1e-9, upper - 1e-9), bounds=(lower, upper),
                             loss="soft_l1", f_scale=0.1)
    keys = [f"{c}:{d}" for c in CLASSES for d in FIT_DTYPES]
    return (dict(zip(keys, np.exp(solution.x[:k]))), dict(zip(keys, np.exp(solution.x[k:2 * k]))),
            float(np.exp(solution.x[2 * k])), float(solution.cost))


def _theta(eff: dict, ovh: dict, memory_scale: float) -> np.ndarray:
    return np.log(np.concatenate([list(eff.values()), list(ovh.values()), [memory_scale]]))


def _best_lanes(unit: targets.Target, graphs: list, dtypes: list[str], measured: np.ndarray,
                overhead_prior_s: float) -> dict[str, int]:
    """Per dtype, the SIMD channel block (of LANES) whose fitted model has the smallest log error on that
    dtype's cases (fp32 and int8 factors are disjoint, so each dtype's padding is judged on its own cases)."""
    scores = {}
    for lanes in LANES:
        padded = dataclasses.replace(unit, lanes={d: lanes for d in FIT_DTYPES})
        feats = [_features(g, padded, d) for g, d in zip(graphs, dtypes)]
        theta = _theta(*fit(feats, measured, overhead_prior_s)[:3])
        log_err = np.log([_predict(theta, f) for f in feats]) - np.log(measured)
        scores[lanes] = {d: float(np.sum(log_err[np.array(dtypes) == d] ** 2)) for d in FIT_DTYPES}
    return {d: min(LANES, key=lambda b: scores[b][d]) for d in FIT_DTYPES}


def _target_yaml(micro: dict, eff: dict, ovh: dict, lanes: dict, base: targets.Target, threads: int, n: int,
                 stamp: str, fit_cases: int) -> dict:
    import onnxruntime

    def num(value: float, source: str) -> dict:
        return {"value": float(f"{value:.4g}"), "source": f"{stamp}: {source}"}

    carried = lambda field: {"value": base.sources[field][0],  # noqa: E731 - energy is not measured here
                             "source": f"not measured by hwai calibrate; from {Path(base.path).name}: {base.sources[field][2]}"}
    fitted = f"fitted to {fit_cases} whole-model ONNX Runtime latencies (zoo models, fp32 + int8 QDQ)"
    scale = micro.get("memory_scale", 1.0)
    fitted_memory = "(the factor fitted with the efficiencies below)"
    # an efficiency above 1 means a layer ran faster than the GEMM microbenchmark: the true peak is at least that
    # high, so the peak is raised and the efficiencies scaled down by the same factor (predictions are unchanged)
    top = {d: max([1.0] + [v for k, v in eff.items() if k.endswith(f":{d}")]) for d in FIT_DTYPES}
    eff = {k: v / top[k.rpartition(":")[2]] if ":" in k else v for k, v in eff.items()}
    raised = {d: "" if top[d] == 1.0 else f"; x {top[d]:.3g}: layers of the fitted models reached more than the "
              f"microbenchmark ({micro[f'ort_{d}_ops'] / 1e9:.1f} GOP/s)" for d in FIT_DTYPES}
    efficiency = {k: num(v, fitted) for k, v in eff.items()}
    efficiency["_default"] = dict(efficiency["_default:fp32"])  # a copy: YAML would write an anchor
    overhead = {k: num(v * 1e6, fitted) for k, v in ovh.items()}
    overhead["_default"] = dict(overhead["_default:fp32"])
    overhead["identity"] = {"value": 0, "source": f"{stamp}: ONNX Runtime removes Identity/Dropout at graph optimisation"}
    return {
        "name": "host", "description": f"this machine ({cpu_name()}), measured by hwai calibrate", "kind": "cpu",
        "runtime": f"ONNX Runtime {onnxruntime.__version__} CPU, {threads} threads", "dtypes": list(FIT_DTYPES),
        "ops": list(targets.OPS), "sparsity_accelerated": False, "weights_in": "dram",
        "peak_fp32_gops": num(top["fp32"] * micro["ort_fp32_ops"] / 1e9, f"ONNX Runtime MatMul {n}x{n}x{n} fp32, "
                              f"{threads} threads, best of 5 (torch matmul: {micro['torch_fp32_ops'] / 1e9:.1f} GFLOP/s)"
                              + raised["fp32"]),
        "peak_int8_gops": num(top["int8"] * micro["ort_int8_ops"] / 1e9, f"ONNX Runtime MatMulInteger {n}x{n}x{n} u8s8, "
                              f"{threads} threads, best of 5" + raised["int8"]),
        "sram_kib": num(_cache_bytes() / 1024, "largest CPU cache level, /sys/devices/system/cpu/cpu0/cache"),
        "dram_mib": num(_dram_bytes() / 2**20, "MemTotal in /proc/meminfo"),
        "sram_gbps": num(micro["sram_bps"] / scale / 1e9, f"numpy copy of 256 KiB (read + write), one thread, best of "
                         f"5: {micro['sram_bps'] / 1e9:.1f} GB/s, x {1 / scale:.3g} {fitted_memory}"),
        "dram_gbps": num(micro["dram_bps"] / scale / 1e9, f"numpy copy of 64 MiB (read + write), one thread, best of "
                         f"5: {micro['dram_bps'] / 1e9:.1f} GB/s, x {1 / scale:.3g} {fitted_memory}"),
        **{f"energy_{d}_pj_per_mac": carried(f"energy_{d}_pj_per_mac") for d in FIT_DTYPES},
        **{f"energy_{lv}_pj_per_byte": carried(f"energy_{lv}_pj_per_byte") for lv in ("sram", "dram")},
        **{f"lanes_{d}": num(lanes[d], f"channel block (SIMD lanes) that best fits the measurements among "
                              f"{', '.join(map(str, LANES))}") for d in FIT_DTYPES},
        "efficiency": efficiency, "overhead_us": overhead,
    }




def fit_target(micro: dict, graphs: list, dtypes: list[str], measured_s: np.ndarray, base: targets.Target,
               threads: int, gemm_size: int, stamp: str) -> tuple[dict, dict]:
    """The host target file's fields (a mapping for YAML) with roofline factors fitted to measured whole-model
    seconds of captured graphs; and the microbenchmarks with the fitted memory-time factor added."""
    unit = dataclasses.replace(base, peak_ops={"fp32": micro["ort_fp32_ops"], "int8": micro["ort_int8_ops"]},
                               bandwidth_bps={"sram": micro["sram_bps"], "dram": micro["dram_bps"]},
                               capacity_bytes={"sram": float(_cache_bytes()), "dram": float(_dram_bytes())},
                               dtypes=FIT_DTYPES, efficiency={"_default": 1.0}, overhead_s={"_default": 0.0})
    lanes = _best_lanes(unit, graphs, dtypes, measured_s, micro["overhead_s"])
    padded = dataclasses.replace(unit, lanes=lanes)
    feats = [_features(g, padded, d) for g, d in zip(graphs, dtypes)]
    eff, ovh, memory_scale, _ = fit(feats, measured_s, micro["overhead_s"])
    micro = {**micro, "memory_scale": memory_scale}
    return _target_yaml(micro, eff, ovh, lanes, base, threads, gemm_size, stamp, len(graphs)), micro
