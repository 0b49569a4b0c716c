"""Bad input never gives a traceback: every case below exits 0 or 2, and a 2 is one line on stderr.

Hand-picked cases reproduce the reported ones; hypothesis throws generated model specs, data specs, numbers
and mutated target files at the CLI (in process, so a few hundred cases run in seconds).
"""
import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwai import cli

USER_NET = '''
import torch.nn as nn
def build(num_classes=10, in_channels=1, **k):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
def boom(**k):
    raise RuntimeError("boom")
def notmod(**k):
    return 3
class OnlyEval(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
    def forward(self, x):
        if self.training:
            raise RuntimeError("no training")
        return self.fc(x.flatten(1))
def only_eval(**k):
    return OnlyEval()
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A user model in a folder whose name needs escaping, and broken data / model files."""
    root = tmp_path_factory.mktemp("bad")
    folder = root / "my models [v2] ü"
    folder.mkdir()
    (folder / "net.py").write_text(USER_NET)
    rng = np.random.default_rng(0)
    arrays = {"nan": dict(x=np.full((100, 8), np.nan, np.float32), y=np.arange(100) % 3),
              "one_class": dict(x=rng.random((100, 8), np.float32), y=np.zeros(100)),
              "column": dict(x=rng.random((100, 8), np.float32), y=(np.arange(100) % 3)[:, None]),
              "empty": dict(x=np.zeros((0, 8), np.float32), y=np.zeros(0)),
              "four": dict(x=rng.random((4, 8), np.float32), y=np.array([0, 1, 0, 1])),
              "shifted": dict(x=rng.random((200, 8), np.float32), y=np.arange(200) % 2 + 3),
              "no_arrays": {}}
    out = {"net": folder / "net.py"}
    for name, a in arrays.items():
        np.savez(root / f"{name}.npz", **a)
        out[name] = root / f"{name}.npz"
    (root / "empty.onnx").write_bytes(b"")
    (root / "junk.onnx").write_bytes(b"not onnx")
    (root / "junk.pt").write_bytes(b"not a checkpoint")
    out.update(empty_onnx=root / "empty.onnx", junk_onnx=root / "junk.onnx", junk_pt=root / "junk.pt", root=root)
    return out


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """`hwai ARGS` in this process: (exit code, stdout, stderr). Any exception other than SystemExit escapes."""
    saved = sys.argv
    sys.argv = ["hwai", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(code: int, err: str, expect: int | None = None) -> None:
    assert "Traceback" not in err
    assert code in (0, 2), (code, err)
    if expect is not None:
        assert code == expect, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hwai: error: "), err


CASES = {  # name: (arguments, a phrase the one-line error must contain)
    "factory raises": (["train", "--model", "{net}:boom", "--data", "digits", "--epochs", "0"], "boom"),
    "factory returns no module": (["train", "--model", "{net}:notmod", "--data", "digits"], "not a torch.nn.Module"),
    "forward fails in training": (["train", "--model", "{net}:only_eval", "--data", "digits", "--epochs", "1"],
                                  "first training step failed"),
    "missing factory": (["profile", "--model", "{net}:nosuch", "--data", "digits"], "no callable"),
    "all-NaN data": (["train", "--model", "mlp", "--data", "npz:{nan}", "--epochs", "1"], "non-finite"),
    "one class": (["train", "--model", "mlp", "--data", "npz:{one_class}", "--epochs", "1"], "at least two"),
    "empty arrays": (["train", "--model", "mlp", "--data", "npz:{empty}"], "no samples"),
    "four samples": (["train", "--model", "mlp", "--data", "npz:{four}"], "too few"),
    "npz without arrays": (["train", "--model", "mlp", "--data", "npz:{no_arrays}"], "expected x and y"),
    "empty onnx": (["profile", "--model", "{empty_onnx}", "--data", "digits"], "no ONNX graph"),
    "junk onnx": (["profile", "--model", "{junk_onnx}", "--data", "digits"], "not a readable ONNX"),
    "junk checkpoint": (["profile", "--model", "{junk_pt}", "--data", "digits"], "not a readable hwai checkpoint"),
    "width nan": (["train", "--model", "mlp", "--data", "digits", "--width", "nan"], "width"),
    "width inf": (["train", "--model", "cnn", "--data", "digits", "--width", "inf"], "width"),
    "accuracy drop nan": (["compress", "--model", "cnn", "--data", "digits", "--max-accuracy-drop", "nan"],
                          "max-accuracy-drop"),
    "prune nan": (["compress", "--model", "cnn", "--data", "digits", "--prune", "nan"], "prune"),
}


@pytest.mark.parametrize("name", CASES)
def test_reported_bad_inputs_are_one_line_errors(name, files, capsys):
    args, phrase = CASES[name]
    code, _, err = run([a.format(**files) for a in args], capsys)
    assert_clean(code, err, expect=2)
    assert phrase in err


def test_labels_of_shape_n1_train_and_remapped_labels_are_announced(files, tmp_path, capsys):
    code, out, err = run(["train", "--model", "mlp", "--data", f"npz:{files['column']}", "--epochs", "1",
                          "--out", tmp_path / "a.pt"], capsys)
    assert_clean(code, err, expect=0)
    code, out, err = run(["train", "--model", "mlp", "--data", f"npz:{files['shifted']}", "--epochs", "1",
                          "--out", tmp_path / "b.pt"], capsys)
    assert_clean(code, err, expect=0)
    out = " ".join(out.split())  # the console wraps long lines at spaces
    assert out.count("labels remapped to 0..1") == 1 and "3->0, 4->1" in out


def test_a_user_model_in_a_folder_with_brackets_spaces_and_non_ascii_prints_literally(files, tmp_path, capsys):
    ckpt = tmp_path / "[run] ü.pt"
    spec = f"{files['net']}:build"
    code, out, err = run(["train", "--model", spec, "--data", "digits", "--epochs", "1", "--out", ckpt], capsys)
    assert_clean(code, err, expect=0)
    flat = "".join(out.split())  # the console wraps long lines at spaces
    assert "[v2]ü/net.py:build" in flat and "[run]ü.pt" in flat
    code, out, err = run(["profile", "--model", ckpt, "--data", "digits", "--target", "stm32h743"], capsys)
    assert_clean(code, err, expect=0)
    assert "[v2]ü/net.py:build" in "".join(out.split())  # the table title names the model, brackets and all


# -- generated inputs -----------------------------------------------------------------------------------

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                    st.sampled_from(["nan", "inf", "-inf", "1e400", "", "abc", "0x10", "1,5"]))
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)


def _bad_number(value) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return True
    return not math.isfinite(v) or v < 0


@st.composite
def model_and_data(draw, files):
    models = [f"{files['net']}:{f}" for f in ("build", "boom", "notmod", "only_eval", "nosuch")] + [
        "mlp", "cnn", "nosuch", "", "x.py", "/nonexistent/net.py:build", str(files["junk_pt"]),
        str(files["empty_onnx"]), draw(TEXT)]
    datas = ["digits", "npz:", "cifar10:", "folder:/nonexistent", "mnist:x", draw(TEXT)] + [
        f"npz:{files[k]}" for k in ("nan", "one_class", "empty", "four", "no_arrays")]
    return draw(st.sampled_from(models)), draw(st.sampled_from(datas))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_generated_bad_inputs_exit_0_or_2_without_a_traceback(files, capsys, tmp_path_factory, data):
    model, spec = data.draw(model_and_data(files))
    width, epochs, drop, prune = (data.draw(NUMBERS) for _ in range(4))
    out = tmp_path_factory.mktemp("gen") / "m.pt"
    # train is cheap even when every input is valid (0 or 1 epoch on tiny data)
    code, _, err = run(["train", "--model", model, "--data", spec, "--epochs", str(epochs)[:8], "--width", width,
                        "--out", out] if _bad_number(epochs) or float(epochs) > 1 else
                       ["train", "--model", model, "--data", spec, "--epochs", "0", "--width", width, "--out", out],
                       capsys)
    assert_clean(code, err)
    # compress would run for real on valid input: always give it one bad number
    code, _, err = run(["compress", "--model", model, "--data", spec, "--max-accuracy-drop",
                        drop if _bad_number(drop) else "nan", "--prune", prune, "--out", out.parent / "c"], capsys)
    assert_clean(code, err, expect=2)


TARGET_VALUES = st.one_of(NUMBERS, st.none(), st.booleans(), st.lists(st.integers(), max_size=2), TEXT)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_target_files_are_accepted_or_refused_in_one_line(tmp_path_factory, capsys, data):
    from hwai import targets

    raw = yaml.safe_load(Path(targets._catalog()["stm32h743"]).read_text())
    mutated = copy.deepcopy(raw)
    key = data.draw(st.sampled_from(sorted(mutated)))
    action = data.draw(st.sampled_from(["delete", "value", "source", "replace", "unknown", "table"]))
    if action == "delete":
        del mutated[key]
    elif action == "value" and isinstance(mutated[key], dict) and "value" in mutated[key]:
        mutated[key]["value"] = data.draw(TARGET_VALUES)
    elif action == "source" and isinstance(mutated[key], dict) and "source" in mutated[key]:
        mutated[key]["source"] = data.draw(TARGET_VALUES)
    elif action == "unknown":
        mutated[data.draw(TEXT) or "x"] = data.draw(TARGET_VALUES)
    elif action == "table":
        mutated["efficiency"][data.draw(st.sampled_from(["conv", "_default", "nosuch", "conv:int8"]))] = {
            "value": data.draw(TARGET_VALUES), "source": "a test that mutates target files"}
    else:
        mutated[key] = data.draw(TARGET_VALUES)
    path = tmp_path_factory.mktemp("t") / "[my] target ü.yaml"
    path.write_text(yaml.safe_dump(mutated, allow_unicode=True) if data.draw(st.booleans()) else data.draw(TEXT))
    code, out, err = run(["targets", "show", path], capsys)
    assert_clean(code, err)
    if code == 0:  # accepted: every number it holds is finite and plausible
        t = targets.load(path)
        for table in (t.peak_ops, t.capacity_bytes, t.bandwidth_bps, t.energy_per_mac_j, t.efficiency):
            assert all(math.isfinite(v) for v in table.values())
        assert all(0 < v <= 1 for v in t.efficiency.values())


@pytest.mark.parametrize("value,phrase", [(float("nan"), "finite"), (float("inf"), "finite"), (50, "plausible"),
                                          (0, "> 0")])
def test_target_efficiency_must_be_a_fraction(tmp_path, capsys, value, phrase):
    from hwai import targets

    raw = yaml.safe_load(Path(targets._catalog()["stm32h743"]).read_text())
    raw["efficiency"]["conv"]["value"] = value
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, _, err = run(["targets", "show", path], capsys)
    assert_clean(code, err, expect=2)
    assert "efficiency.conv" in err and phrase in err


def test_compress_and_report_on_paths_with_brackets_spaces_and_non_ascii(files, tmp_path, capsys):
    ckpt = tmp_path / "[ckpt] ü.pt"
    code, _, err = run(["train", "--model", f"{files['net']}:build", "--data", "digits", "--epochs", "1",
                        "--out", ckpt], capsys)
    assert_clean(code, err, expect=0)
    out = tmp_path / "out [1] é"
    code, stdout, err = run(["compress", "--model", ckpt, "--data", "digits", "--quantize", "int8", "--force",
                             "--threads", "1", "--out", out], capsys)
    assert_clean(code, err, expect=0)
    assert (out / "model.onnx").is_file() and "[1]é" in "".join(stdout.split())
    code, stdout, err = run(["report", out], capsys)
    assert_clean(code, err, expect=0)
    assert "[1]é" in "".join(stdout.split()) and "[v2] ü/net.py:build" in (out / "report.html").read_text()
