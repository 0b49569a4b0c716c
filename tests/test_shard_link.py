import copy

import pytest
import yaml

from hwai.errors import UserError
from hwai.shard import link
from tests.conftest import run_cli

CATALOG = ["ble", "ethernet100m", "loopback", "pcie4-x16", "wifi4"]


def raw(name="ble") -> dict:
    return yaml.safe_load(open(link.load(name).path))


def test_catalog_loads_with_sources_in_si_units():
    assert link.names() == CATALOG
    for name in CATALOG:
        lk = link.load(name)
        assert lk.name == name and lk.bandwidth_bps > 0 and lk.latency_s >= 0 and lk.energy_per_byte_j >= 0
        assert len(lk.sources) == 3 and all(len(src) >= 8 for _, _, src in lk.sources.values())
    ble = link.load("ble")
    assert ble.bandwidth_bps == pytest.approx(1.4e6 / 8) and ble.latency_s == pytest.approx(7.5e-3)
    assert ble.energy_per_byte_j == pytest.approx(160e-9)
    assert link.load("pcie4-x16").bandwidth_bps == pytest.approx(25e9)
    # one message: latency + bytes / bandwidth; nothing to send costs nothing
    assert ble.transfer_s(1750) == pytest.approx(7.5e-3 + 0.01) and ble.transfer_s(0) == 0
    assert ble.energy_j(1000) == pytest.approx(160e-6)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(bogus={"value": 1, "source": "a datasheet"}), "bogus: unknown field"),
    (lambda d: d.update(bandwidth_mbps=d.pop("bandwidth_mbit_per_s")), "bandwidth_mbps: wrong unit"),
    (lambda d: d.pop("latency_ms"), "latency: missing required field"),
    (lambda d: d.pop("name"), "name: missing"),
    (lambda d: d["energy_nj_per_byte"].pop("source"), "energy_nj_per_byte: must be {value"),
    (lambda d: d["latency_ms"].update(source="tbd"), "latency_ms: source must say"),
    (lambda d: d["bandwidth_mbit_per_s"].update(value=0), "bandwidth_mbit_per_s: value must be > 0"),
    (lambda d: d["latency_ms"].update(value=-1), "latency_ms: value must be >= 0"),
    (lambda d: d["latency_ms"].update(value="7 ms"), "latency_ms: value must be a number"),
    (lambda d: d.update(latency_us={"value": 7500, "source": "a datasheet"}), "latency_us: latency is given twice"),
])
def test_validation_names_the_field(mutate, message):
    d = copy.deepcopy(raw())
    mutate(d)
    with pytest.raises(UserError, match=message.replace("{", r"\{")):
        link.parse(d, "ble.yaml")


def test_unknown_link_lists_the_catalog():
    with pytest.raises(UserError, match="unknown link 'lora'.*ble, ethernet100m"):
        link.load("lora")


def test_bad_link_or_target_spec_is_one_line_exit_2(tmp_path):
    bad_link = tmp_path / "my [link].yaml"
    bad_link.write_text("name: x\ndescription: y\nbandwidth_mbit_per_s: 5\n")
    bad_target = tmp_path / "t.yaml"
    bad_target.write_text("name: t\nkind: toaster\n")
    common = ["shard", "plan", "--model", "mlp", "--data", "digits"]
    for args, needle in [(["--targets", "esp32s3,rpi4", "--link", str(bad_link)], "bandwidth_mbit_per_s: must be"),
                         (["--targets", f"esp32s3,{bad_target}", "--link", "ble"], "t.yaml: "),
                         (["--targets", "esp32s3,nosuchchip,rpi4", "--link", "ble"], "unknown target 'nosuchchip'")]:
        r = run_cli(*common, *args, timeout=120)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hwai: error:") and needle in lines[0], r.stderr


@pytest.mark.parametrize("targets, links, message", [
    ("esp32s3", "ble", "at least two devices"),
    ("esp32s3,rpi4,host", "ble,wifi4,ble", "--link: give one value for every device or one per device"),
    ("esp32s3,rpi4", "lora", "unknown link 'lora'"),
])
def test_chain_options_are_checked(targets, links, message):
    from hwai.cli.shard import _chain

    with pytest.raises(UserError, match=message):
        _chain(targets, links, "int8", None)
    with pytest.raises(UserError, match="--max-sram-kb: 'lots' is not a number"):
        _chain("esp32s3,rpi4", "ble", "int8", "lots")
