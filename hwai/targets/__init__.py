"""Hardware targets as data: a frozen `Target` loaded from a YAML file, with a source for every number.

`load(name_or_path)` reads a catalog name (this package's *.yaml, overridden by files in the user target
folder `$HWAI_TARGET_DIR` or `~/.config/hwai/targets`, where `hwai calibrate` writes `host.yaml`) or a path.
Every numeric field is `{value: NUMBER, source: "datasheet / paper / calibrated <date> on <cpu>"}`; units
are part of the field names (`peak_int8_gops`, `sram_kib`, `dram_gbps`, `energy_fp32_pj_per_mac`).
Any mistake (unknown key, missing field, wrong unit or type, missing source) raises UserError naming the field.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from hwai.errors import UserError

KINDS = ("cpu", "gpu", "mcu", "npu", "neuromorphic")
DTYPES = ("fp32", "fp16", "int8", "int4")
LEVELS = ("sram", "flash", "dram")  # on-chip SRAM (or CPU/GPU cache), flash (MCU weights), off-chip DRAM
OPS = ("conv", "depthwise", "linear", "matmul", "batchnorm", "layernorm", "relu", "activation", "add", "mul",
       "concat", "pool", "reshape", "identity", "other")
PEAK_UNITS = {"tops": 1e12, "gops": 1e9, "mops": 1e6}  # operations/s, 1 multiply-accumulate = 2 operations
SIZE_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30}
TEXT_FIELDS = {"name", "description", "kind", "runtime", "weights_in"}
LIST_FIELDS = {"dtypes", "ops"}
TABLE_FIELDS = {"efficiency", "overhead_us"}  # {op or op:dtype or _default: {value, source}}
# optional: what ties a target to published measurements (hwai.targets.evidence, hwai/targets/published/*.csv) and
# the terms fitted to them: the runtime id rows use, the chip and core family (clock scaling stays within one),
# per-inference overhead, the host CPU target an accelerator falls back to for ops it lacks (and whose link,
# dram_gbps, carries the input, output and cut tensors), the slowdown when the tensor arena is off-chip (PSRAM),
# a factor on every memory time (the bandwidth the runtime reaches, against the figures above)
OPTIONAL_TEXT = ("runtime_id", "chip", "family", "fallback_cpu")
OPTIONAL_NUMBERS = {"clock_mhz": (1e6, "clock"), "invoke_overhead_us": (1e-6, "overhead_us"),
                    "offchip_arena_factor": (1.0, "sparse"), "memory_time_factor": (1.0, "factor")}
_PEAK = re.compile(rf"peak_({'|'.join(DTYPES)})_({'|'.join(PEAK_UNITS)})")
_SIZE = re.compile(rf"({'|'.join(LEVELS)})_({'|'.join(SIZE_UNITS)})")
_BW = re.compile(rf"({'|'.join(LEVELS)})_gbps")
_E_MAC = re.compile(rf"energy_({'|'.join(DTYPES)})_pj_per_mac")
_E_BYTE = re.compile(rf"energy_({'|'.join(LEVELS)})_pj_per_byte")
_LANES = re.compile(rf"lanes_({'|'.join(DTYPES)})")  # SIMD width in channels: convs pad channels to a multiple
_SPARSE = re.compile(r"(sparse)_speedup_max")  # cap on the speed-up from zero weights (2:4 sparsity: 2x)
_E_SPIKE = re.compile(r"energy_(sop|neuron_update)_pj")  # spiking nets: per synaptic operation / neuron update
# neuromorphic chips, all optional: YAML field -> (key in Target.chip, scale to SI, unit, whole number?)
CHIP_FIELDS = {"static_mw": ("static_w", 1e-3, "mW", False), "timestep_us": ("timestep_s", 1e-6, "us", False),
               "cores": ("cores", 1, "", True), "neurons_per_core": ("neurons_per_core", 1, "", True),
               "synapse_kib_per_core": ("synapse_bytes_per_core", 1024, "KiB", False),
               "max_fan_in": ("max_fan_in", 1, "", True), "weight_bits": ("weight_bits", 1, "bits", True)}
_UNIT_HINTS = {r"\w*lanes\w*": "lanes_<dtype> (channels)", r"peak_\w+": "peak_<dtype>_tops|gops|mops", r"(sram|flash|dram)_(kb|mb|gb|bytes)": "<level>_kib|mib|gib",
               r"(sram|flash|dram)_\w*(bw|bandwidth|gb_s|mbps)\w*": "<level>_gbps",
               r"energy_\w+": "energy_<dtype>_pj_per_mac or energy_<level>_pj_per_byte"}


# Physically plausible bounds (SI units, after unit conversion): a number outside them is a typo or a unit slip
# (efficiency 50 meant 50%, a bandwidth in bits/s), refused when parsed rather than predicting nonsense.
PLAUSIBLE = {
    "peak": (1e6, 1e19, "operations/s (1 MOPS .. 10 EOPS)"),
    "capacity": (256, 2.0**50, "bytes (256 B .. 1 PiB)"),
    "bandwidth": (1e5, 1e14, "bytes/s (100 KB/s .. 100 TB/s)"),
    "energy_mac": (1e-16, 1e-6, "J per MAC (0.1 fJ .. 1 uJ)"),
    "energy_byte": (0.0, 1e-6, "J per byte (0 .. 1 uJ)"),
    "lanes": (1, 4096, "channels"),
    "sparse": (1, 100, "x"),
    "efficiency": (0.0, 1.0, "fraction of peak, in (0, 1]"),
    "overhead_us": (0.0, 1.0, "seconds per op (0 .. 1 s)"),
    "clock": (1e6, 1e11, "Hz (1 MHz .. 100 GHz)"),
    "factor": (0.01, 100.0, "x (0.01 .. 100)"),
}


def _plausible(path: str, field: str, kind: str, si_value: float, written: float) -> None:
    low, high, unit = PLAUSIBLE[kind]
    if not low <= si_value <= high or (kind == "efficiency" and si_value == 0):
        _fail(path, field, f"value {written:g} is outside the plausible range for this field ({unit})")


@dataclass(frozen=True)
class Target:
    """One hardware target; all numbers in SI base units (ops/s, bytes, bytes/s, joules, seconds)."""

    name: str  # catalog name
    kind: str  # cpu | gpu | mcu | npu
    description: str  # the chip and board in words
    runtime: str  # the inference runtime these numbers represent (e.g. "TFLite Micro + CMSIS-NN")
    path: str  # the YAML file it came from
    dtypes: tuple[str, ...]  # dtypes with native kernels
    ops: tuple[str, ...]  # graph ops the runtime executes on this target
    sparsity_accelerated: bool  # zero weights skip work (sparse kernels / sparse tensor cores)
    weights_in: str  # memory level weights are stored in: sram | flash | dram
    peak_ops: dict  # dtype -> peak operations/s (2 per MAC)
    capacity_bytes: dict  # level -> bytes
    bandwidth_bps: dict  # level -> bytes/s
    energy_per_mac_j: dict  # dtype -> joules per MAC
    energy_per_byte_j: dict  # level -> joules per byte moved
    lanes: dict  # dtype -> channels per SIMD vector (conv/linear channels are padded to a multiple; default 1)
    sparse_speedup_max: float  # the most zero weights can speed up a layer (1.0 where not accelerated)
    efficiency: dict  # "op", "op:dtype" or "_default" -> achieved fraction of peak
    overhead_s: dict  # "op", "op:dtype" or "_default" -> fixed cost per executed op (seconds)
    sources: dict  # YAML field (e.g. "sram_kib", "efficiency.conv") -> (value as written, unit, source)
    deploy_runtimes: tuple[str, ...] = ()  # runtimes a deployment uses, in order of preference (optional; names
    # checked against hwai.runtimes' registry by hwai.runtimes.for_target)
    runtime_id: str = ""  # the runtime id published rows of this runtime carry (hwai/targets/published/*.csv)
    chip: str = ""  # the chip its numbers are for (published rows of other chips enter by clock scaling only)
    family: str = ""  # core family (clock scaling between chips only within one)
    clock_hz: float | None = None  # core clock its numbers are for
    invoke_overhead_s: float = 0.0  # fixed cost per inference (interpreter setup, USB round trip, launch)
    fallback_cpu: str = ""  # accelerators: target running the ops this one lacks (the first one and all after it)
    offchip_arena_factor: float = 1.0  # latency factor when peak activations exceed SRAM (arena in PSRAM/DRAM)
    memory_time_factor: float = 1.0  # multiplies every memory time (bytes / bandwidth), fitted to measurements
    energy_per_sop_j: float | None = None  # spiking nets: one synaptic operation (a spike reaching a synapse)
    energy_per_neuron_update_j: float | None = None  # spiking nets: one neuron's state update in one time step
    chip: dict = dataclass_field(default_factory=dict)  # neuromorphic chips: static_w, timestep_s and limits (CHIP_FIELDS)

    def lookup(self, table: dict, op: str, dtype: str) -> float:
        """Per-op factor: `op:dtype`, then `op` (depthwise falls back to conv), then `_default:dtype`, `_default`."""
        for key in (f"{op}:{dtype}", op, *((f"conv:{dtype}", "conv") if op == "depthwise" else ()),
                    f"_default:{dtype}", "_default"):
            if key in table:
                return table[key]
        raise KeyError(op)  # unreachable: validation requires _default


def user_dir() -> Path:
    """Folder of user target files (`hwai calibrate` writes host.yaml here); shadows the package catalog."""
    return Path(os.environ.get("HWAI_TARGET_DIR") or Path.home() / ".config" / "hwai" / "targets")


def _catalog() -> dict[str, Path]:
    found = {p.stem: p for p in sorted(Path(__file__).parent.glob("*.yaml"))}
    if user_dir().is_dir():
        found.update({p.stem: p for p in sorted(user_dir().glob("*.yaml"))})
    return found


def names() -> list[str]:
    """Catalog target names (package files plus user files)."""
    return sorted(_catalog())


def load(name_or_path: str | Path) -> Target:
    """A target by catalog name or YAML path; raises UserError on an unknown name or an invalid file."""
    import yaml

    text = str(name_or_path)
    catalog = _catalog()
    path = catalog.get(text) or Path(text).expanduser()
    if not path.is_file():
        raise UserError(f"unknown target {text!r}: use one of {', '.join(sorted(catalog))} or a path to a YAML file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse(raw, str(path))


def _fail(path: str, field: str, msg: str):
    raise UserError(f"{path}: {field}: {msg}")


def _number(path: str, field: str, entry, allow_zero: bool = False) -> tuple[float, str]:
    if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
        _fail(path, field, "must be {value: NUMBER, source: TEXT} (every number needs its source)")
    value, source = entry["value"], entry["source"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(path, field, f"value must be a finite number in the field's unit, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        _fail(path, field, f"value must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if not isinstance(source, str) or len(source.strip()) < 8:
        _fail(path, field, "source must say where the number comes from (datasheet, paper, or calibrated ...)")
    return float(value), source.strip()


def _table(path: str, field: str, raw, scale: float) -> tuple[dict, dict]:
    if not isinstance(raw, dict) or "_default" not in raw:
        _fail(path, field, "must map op names (or op:dtype) to {value, source} and include _default")
    values, sources = {}, {}
    for key, entry in raw.items():
        op, _, dtype = str(key).partition(":")
        if (op not in OPS and op != "_default") or (dtype and dtype not in DTYPES):
            _fail(path, f"{field}.{key}", f"unknown op; use one of {', '.join(OPS)}, _default (optionally :dtype)")
        value, source = _number(path, f"{field}.{key}", entry, allow_zero=field == "overhead_us")
        _plausible(path, f"{field}.{key}", field, value * scale, value)
        values[str(key)] = value * scale
        sources[f"{field}.{key}"] = (value, field.rpartition("_")[2] if field == "overhead_us" else "", source)
    return values, sources


def parse(raw: object, path: str = "<target>") -> Target:
    """Validate a target mapping (as read from YAML) and build the Target."""
    # long: one field-by-field validation of a target file; each check names its field
    if not isinstance(raw, dict):
        _fail(path, "top level", "must be a mapping of fields")
    if raw.get("kind") == "neuromorphic":
        return _parse_neuromorphic(raw, path)
    for field in TEXT_FIELDS | LIST_FIELDS | TABLE_FIELDS | {"sparsity_accelerated"}:
        if field not in raw:
            _fail(path, field, "missing required field")
    text = {}
    for field in TEXT_FIELDS:
        if not isinstance(raw[field], str) or not raw[field].strip():
            _fail(path, field, "must be non-empty text")
        text[field] = raw[field].strip()
    if text["kind"] not in KINDS:
        _fail(path, "kind", f"must be one of {', '.join(KINDS)}, got {text['kind']!r}")
    if text["weights_in"] not in LEVELS:
        _fail(path, "weights_in", f"must be one of {', '.join(LEVELS)}")
    lists = {}
    for field, allowed in (("dtypes", DTYPES), ("ops", OPS)):
        items = raw[field]
        if not isinstance(items, list) or not items or any(i not in allowed for i in items):
            _fail(path, field, f"must be a non-empty list drawn from {', '.join(allowed)}")
        lists[field] = tuple(items)
    if not isinstance(raw["sparsity_accelerated"], bool):
        _fail(path, "sparsity_accelerated", "must be true or false")
    deploy = raw.get("deploy_runtimes", [])
    if not isinstance(deploy, list) or any(not isinstance(r, str) for r in deploy) or len(set(deploy)) < len(deploy):
        _fail(path, "deploy_runtimes", "must be a list of distinct runtime names (hwai.runtimes.RUNTIMES)")
    peak, cap, bw, e_mac, e_byte, sparse, lanes, sources = {}, {}, {}, {}, {}, {}, {}, {}
    for key, entry in raw.items():
        if key in TEXT_FIELDS | LIST_FIELDS | TABLE_FIELDS | {"sparsity_accelerated", "deploy_runtimes"}:
            continue
        if key in OPTIONAL_TEXT or key in OPTIONAL_NUMBERS:
            continue
        for pattern, store, unit_of, kind in ((_PEAK, peak, lambda m: PEAK_UNITS[m[2]], "peak"),
                                              (_SIZE, cap, lambda m: SIZE_UNITS[m[2]], "capacity"),
                                              (_BW, bw, lambda m: 1e9, "bandwidth"), (_E_MAC, e_mac, lambda m: 1e-12, "energy_mac"),
                                              (_E_BYTE, e_byte, lambda m: 1e-12, "energy_byte"),
                                              (_SPARSE, sparse, lambda m: 1.0, "sparse"), (_LANES, lanes, lambda m: 1.0, "lanes")):
            m = pattern.fullmatch(str(key))
            if m:
                value, source = _number(path, key, entry, allow_zero=store is e_byte)
                _plausible(path, key, kind, value * unit_of(m), value)
                if (store is sparse and value < 1) or (store is lanes and (value < 1 or value != int(value))):
                    _fail(path, key, f"value must be {'a whole number of channels' if store is lanes else '>= 1'}, got {value}")
                if m[1] in store:
                    _fail(path, key, f"{m[1]} is given twice (in two units)")
                store[m[1]] = value * unit_of(m)
                unit = str(key).split("_")[-1] if any(store is s for s in (peak, cap, bw)) else "pJ"
                unit = "x" if store is sparse else "channels" if store is lanes else unit
                sources[key] = (value, unit, source)
                break
        else:
            hint = next((h for p, h in _UNIT_HINTS.items() if re.fullmatch(p, str(key))), None)
            _fail(path, key, f"wrong unit; write it as {hint}" if hint else "unknown field")
    for dtype in lists["dtypes"]:
        for store, field in ((peak, f"peak_{dtype}_gops"), (e_mac, f"energy_{dtype}_pj_per_mac")):
            if dtype not in store:
                _fail(path, field, f"missing required field ({dtype} is in dtypes)")
    levels = {"sram", text["weights_in"]} | ({"dram"} if text["kind"] != "mcu" else set())
    for level in sorted(levels):
        for store, field in ((cap, f"{level}_kib"), (bw, f"{level}_gbps"), (e_byte, f"energy_{level}_pj_per_byte")):
            if level not in store:
                _fail(path, field, "missing required field")
    if raw["sparsity_accelerated"] and not sparse:
        _fail(path, "sparse_speedup_max", "missing required field (sparsity_accelerated is true)")
    efficiency, eff_src = _table(path, "efficiency", raw["efficiency"], 1.0)
    overhead, ovh_src = _table(path, "overhead_us", raw["overhead_us"], 1e-6)
    extra = _optional(raw, path, sources)
    return Target(**extra, name=text["name"], kind=text["kind"], description=text["description"], runtime=text["runtime"],
                  path=path, dtypes=lists["dtypes"], ops=lists["ops"],
                  sparsity_accelerated=raw["sparsity_accelerated"], weights_in=text["weights_in"], peak_ops=peak,
                  capacity_bytes=cap, bandwidth_bps=bw, energy_per_mac_j=e_mac, energy_per_byte_j=e_byte,
                  lanes={d: int(v) for d, v in lanes.items()}, sparse_speedup_max=sparse.get("sparse", 1.0) if raw["sparsity_accelerated"] else 1.0,
                  efficiency=efficiency, overhead_s=overhead, sources={**sources, **eff_src, **ovh_src},
                  deploy_runtimes=tuple(deploy))


def _optional(raw: dict, path: str, sources: dict) -> dict:
    """The optional published-evidence fields (OPTIONAL_TEXT, OPTIONAL_NUMBERS) as Target keywords."""
    out: dict = {}
    for field in OPTIONAL_TEXT:
        if field in raw:
            if not isinstance(raw[field], str) or not raw[field].strip():
                _fail(path, field, "must be non-empty text")
            out[field] = raw[field].strip()
    names = {"clock_mhz": "clock_hz", "invoke_overhead_us": "invoke_overhead_s"}
    for field, (scale, kind) in OPTIONAL_NUMBERS.items():
        if field in raw:
            value, source = _number(path, field, raw[field], allow_zero=field == "invoke_overhead_us")
            _plausible(path, field, kind, value * scale, value)
            out[names.get(field, field)] = value * scale
            sources[field] = (value, {"clock_mhz": "MHz", "invoke_overhead_us": "us"}.get(field, "x"), source)
    return out


def _parse_neuromorphic(raw: dict, path: str) -> Target:
    """A neuromorphic energy profile: energy per synaptic operation and per neuron update (what a spiking net's
    measured activity is priced with), and optionally energy_<dtype>_pj_per_mac of a same-process ANN.
    It has no roofline numbers, so hwai.cost cannot predict latency on it."""
    text = {}
    for field in ("name", "description", "kind", "runtime"):
        if field not in raw:
            _fail(path, field, "missing required field")
        if not isinstance(raw[field], str) or not raw[field].strip():
            _fail(path, field, "must be non-empty text")
        text[field] = raw[field].strip()
    spike, e_mac, chip, sources = {}, {}, {}, {}
    for key, entry in raw.items():
        if key in text:
            continue
        if key in CHIP_FIELDS:
            name, scale, unit, whole = CHIP_FIELDS[key]
            value, source = _number(path, key, entry)
            if whole and value != int(value):
                _fail(path, key, f"value must be a whole number, got {value}")
            chip[name] = int(value) if whole else value * scale
            sources[key] = (value, unit, source)
            continue
        m = _E_SPIKE.fullmatch(str(key)) or _E_MAC.fullmatch(str(key))
        if m is None:
            _fail(path, key, "unknown field for kind neuromorphic (energy_sop_pj, energy_neuron_update_pj, "
                             f"energy_<dtype>_pj_per_mac, {', '.join(CHIP_FIELDS)})")
        # a neuron update may cost 0 apart: where energy_sop_pj is an all-in figure (chip energy / synaptic events)
        value, source = _number(path, key, entry, allow_zero=m.re is _E_SPIKE and m[1] == "neuron_update")
        (spike if m.re is _E_SPIKE else e_mac)[m[1]] = value * 1e-12
        sources[key] = (value, "pJ", source)
    for what in ("sop", "neuron_update"):
        if what not in spike:
            _fail(path, f"energy_{what}_pj", "missing required field (kind neuromorphic)")
    return Target(name=text["name"], kind="neuromorphic", description=text["description"], runtime=text["runtime"],
                  path=path, dtypes=tuple(d for d in DTYPES if d in e_mac), ops=(), sparsity_accelerated=False,
                  weights_in="sram", peak_ops={}, capacity_bytes={}, bandwidth_bps={}, energy_per_mac_j=e_mac,
                  energy_per_byte_j={}, lanes={}, sparse_speedup_max=1.0, efficiency={}, overhead_s={},
                  sources=sources, energy_per_sop_j=spike["sop"], energy_per_neuron_update_j=spike["neuron_update"],
                  chip=chip)
