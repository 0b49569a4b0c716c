import copy
from pathlib import Path

import pytest
import yaml

from hwai import targets
from hwai.errors import UserError
from tests.conftest import run_cli

CATALOG = ["edgetpu", "esp32s3", "h100", "host", "jetson-orin-nano", "rpi4", "stm32h743", "x86-avx2"]


def raw(name="stm32h743") -> dict:
    return yaml.safe_load(open(targets.load(name).path))


def test_catalog_loads_with_sources():
    assert set(CATALOG) <= set(targets.names())
    for name in CATALOG:
        t = targets.load(name)
        assert t.name == name and t.kind in targets.KINDS and t.path.endswith(f"{name}.yaml")
        assert all(len(src) >= 8 for _, _, src in t.sources.values())
        assert "fp32" in t.peak_ops or t.dtypes == ("int8",)
    stm = targets.load("stm32h743")
    assert stm.capacity_bytes["sram"] == 1024 * 1024 and stm.peak_ops["int8"] == pytest.approx(1.92e9)
    assert stm.weights_in == "flash" and not stm.sparsity_accelerated
    placeholder = targets.load(Path(targets.__file__).parent / "host.yaml")  # a user host.yaml may shadow it
    assert all("placeholder" in src for field, (_, _, src) in placeholder.sources.items()
               if not field.startswith(("efficiency", "overhead_us.identity")))


def test_units_convert_to_si():
    h100 = targets.load("h100")
    assert h100.capacity_bytes["dram"] == 80 * 2**30 and h100.bandwidth_bps["dram"] == pytest.approx(3.35e12)
    assert h100.energy_per_mac_j["int8"] == pytest.approx(0.7e-12) and h100.sparse_speedup_max == 2
    d = raw()
    d["peak_int8_tops"] = d.pop("peak_int8_gops")
    d["peak_int8_tops"]["value"] = 0.00192
    assert targets.parse(d).peak_ops["int8"] == pytest.approx(1.92e9)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(bogus=1), "bogus: unknown field"),
    (lambda d: d.pop("sram_kib"), "sram_kib: missing"),
    (lambda d: d.pop("runtime"), "runtime: missing"),
    (lambda d: d.update(sram_kb=d.pop("sram_kib")), "sram_kb: wrong unit"),
    (lambda d: d.update(peak_int8_tflops=d.pop("peak_int8_gops")), "peak_int8_tflops: wrong unit"),
    (lambda d: d["flash_gbps"].update(value="0.5 GB/s"), "flash_gbps: value must be a finite number"),
    (lambda d: d["flash_gbps"].pop("source"), "flash_gbps: must be {value"),
    (lambda d: d.update(sram_gbps=2.0), "sram_gbps: must be {value"),
    (lambda d: d["efficiency"].pop("_default"), "efficiency: must map"),
    (lambda d: d["efficiency"].update(convv={"value": 1, "source": "a datasheet"}), "efficiency.convv: unknown op"),
    (lambda d: d.update(kind="fpga"), "kind: must be one of"),
    (lambda d: d.update(dtypes=["fp32", "int8", "int4"]), "peak_int4_gops: missing"),
    (lambda d: d.update(sparsity_accelerated=True), "sparse_speedup_max: missing"),
    (lambda d: d["energy_int8_pj_per_mac"].update(value=-1), "energy_int8_pj_per_mac: value must be"),
])
def test_validation_names_the_field(mutate, field):
    d = copy.deepcopy(raw())
    mutate(d)
    with pytest.raises(UserError, match=field.replace("{", r"\{").replace("(", r"\(")) as info:
        targets.parse(d, "t.yaml")
    assert "\n" not in str(info.value)


def test_user_dir_shadows_catalog(tmp_path, monkeypatch):
    d = raw()
    d["name"] = "host"
    (tmp_path / "host.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.setenv("HWAI_TARGET_DIR", str(tmp_path))
    assert targets.load("host").path == str(tmp_path / "host.yaml")
    assert targets.load(tmp_path / "host.yaml").kind == "mcu"


def test_cli_targets_list_show_and_errors(tmp_path):
    out = run_cli("targets")
    assert out.returncode == 0 and "stm32h743" in out.stdout and "edgetpu" in out.stdout
    out = run_cli("targets", "show", "stm32h743")
    assert out.returncode == 0 and "DS12110" in out.stdout and "sram_kib" in out.stdout
    bad = raw()
    bad["sram_kb"] = bad.pop("sram_kib")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    for args in (["show", "nope"], ["show", str(tmp_path / "bad.yaml")]):
        out = run_cli("targets", *args)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "sram_kb" in out.stderr
