"""Links between devices as data: a frozen `Link` loaded from a YAML file, with a source for every number.

`load(name_or_path)` reads a catalog name (this package's links/*.yaml) or a path. Each number is
`{value: NUMBER, source: "..."}` with its unit in the field name: `bandwidth_kbit|mbit|gbit_per_s` (payload
throughput), `latency_us|ms|s` (one-way, per message), `energy_pj|nj|uj_per_byte` (both ends' radio or PHY
energy per payload byte). Any mistake raises UserError naming the field (the CLI: one line, exit 2).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hwai.errors import UserError

CATALOG_DIR = Path(__file__).parent / "links"
_FIELDS = {  # field pattern -> (quantity, unit -> scale to SI: bytes/s, seconds, joules per byte)
    re.compile(r"bandwidth_(kbit|mbit|gbit)_per_s"): ("bandwidth", {"kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8}),
    re.compile(r"latency_(us|ms|s)"): ("latency", {"us": 1e-6, "ms": 1e-3, "s": 1.0}),
    re.compile(r"energy_(pj|nj|uj)_per_byte"): ("energy", {"pj": 1e-12, "nj": 1e-9, "uj": 1e-6}),
}
_HINTS = {"bandwidth": "bandwidth_kbit_per_s, bandwidth_mbit_per_s or bandwidth_gbit_per_s",
          "latency": "latency_us, latency_ms or latency_s", "energy": "energy_pj_per_byte, energy_nj_per_byte or energy_uj_per_byte"}


@dataclass(frozen=True)
class Link:
    """A link between two devices; numbers in SI units."""

    name: str
    description: str
    path: str  # the YAML file it came from
    bandwidth_bps: float  # payload bytes per second
    latency_s: float  # one-way latency per message
    energy_per_byte_j: float  # joules per payload byte, sender and receiver together
    sources: dict  # YAML field -> (value as written, unit, source)

    def transfer_s(self, nbytes: float) -> float:
        """Predicted time to move `nbytes` in one message (nothing to send costs nothing)."""
        return self.latency_s + nbytes / self.bandwidth_bps if nbytes > 0 else 0.0

    def energy_j(self, nbytes: float) -> float:
        return nbytes * self.energy_per_byte_j


def names() -> list[str]:
    return sorted(p.stem for p in CATALOG_DIR.glob("*.yaml"))


def load(name_or_path: str | Path) -> Link:
    """A link by catalog name or YAML path; UserError on an unknown name or an invalid file."""
    import yaml

    text = str(name_or_path)
    path = CATALOG_DIR / f"{text}.yaml" if text in names() else Path(text).expanduser()
    if not path.is_file():
        raise UserError(f"unknown link {text!r}: use one of {', '.join(names())} or a path to a YAML file")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse(raw, str(path))


def _fail(path: str, field: str, msg: str):
    raise UserError(f"{path}: {field}: {msg}")


def parse(raw: object, path: str = "<link>") -> Link:
    """Validate a link mapping (as read from YAML) and build the Link."""
    if not isinstance(raw, dict):
        _fail(path, "top level", "must be a mapping of fields")
    text = {}
    for field in ("name", "description"):
        if not isinstance(raw.get(field), str) or not raw[field].strip():
            _fail(path, field, "missing required field (non-empty text)")
        text[field] = raw[field].strip()
    values: dict[str, float] = {}
    sources: dict[str, tuple] = {}
    for key, entry in raw.items():
        if key in text:
            continue
        match = next(((q, units, m) for pattern, (q, units) in _FIELDS.items() if (m := pattern.fullmatch(str(key)))), None)
        if match is None:
            quantity = next((q for q in _HINTS if str(key).startswith(q)), None)
            _fail(path, key, f"wrong unit; write it as {_HINTS[quantity]}" if quantity else
                  f"unknown field (a link has name, description, {', '.join(_HINTS)})")
        quantity, units, m = match
        if quantity in values:
            _fail(path, key, f"{quantity} is given twice")
        if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
            _fail(path, key, "must be {value: NUMBER, source: TEXT} (every number needs its source)")
        value, source = entry["value"], entry["source"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, key, f"value must be a number in the field's unit, got {value!r}")
        if value < 0 or (value == 0 and quantity == "bandwidth"):
            _fail(path, key, f"value must be {'> 0' if quantity == 'bandwidth' else '>= 0'}, got {value}")
        if not isinstance(source, str) or len(source.strip()) < 8:
            _fail(path, key, "source must say where the number comes from (datasheet, standard, paper or estimate)")
        values[quantity] = float(value) * units[m[1]]
        sources[str(key)] = (value, str(key).split("_", 1)[1], source.strip())
    for quantity, hint in _HINTS.items():
        if quantity not in values:
            _fail(path, quantity, f"missing required field ({hint})")
    return Link(text["name"], text["description"], path, values["bandwidth"], values["latency"], values["energy"],
                sources)
