"""Open report.html in headless Chromium (offline): every plot renders, the Pareto trace draws one point per
Pareto trial, and the page logs no errors. The screenshot is kept in tests/artifacts/ (or $HWAI_ARTIFACTS).

Needs Debian's `chromium` (.ci/run installs it); skipped locally without it, a failure when $CI is set.
"""
from __future__ import annotations

import copy
import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from test_report import _lookup, synthetic_results, write_run

from hwai.report import report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
         "--enable-logging=stderr", "--virtual-time-budget=5000"]
ARTIFACTS = Path(os.environ.get("HWAI_ARTIFACTS") or Path(__file__).parent / "artifacts")


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it with apt-get")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return exe


def browse(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run on a file:// URL with a fresh profile."""
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def page_status(chromium: str, page: Path, profile: Path) -> tuple[dict, list[str]]:
    """The JSON the page writes into #hwai-status after plotting, and the console lines Chromium logged."""
    done = browse(chromium, page, profile, "--dump-dom")
    found = re.search(r'<pre id="hwai-status"[^>]*>(.*?)</pre>', done.stdout, re.S)
    assert found and found.group(1).strip(), "the page never wrote its status (did the scripts run?)"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console


def test_report_renders_offline_in_chromium(chromium, tmp_path):
    data = synthetic_results()
    page = report(write_run(tmp_path, data))
    status, console = page_status(chromium, page, tmp_path / "profile-dom")
    assert status["errors"] == [] and not [line for line in console if re.search(r"error|uncaught", line, re.I)]
    assert status["plots"] == status["rendered"] == 3
    figures = {f["id"]: f["traces"] for f in status["figures"]}

    def points(figure: str, name: str) -> list[int]:
        return [t["points"] for t in figures[figure] if t["name"] == name]

    feasible = [t for t in data["trials"] if t["feasible"]]
    assert points("pareto-plot", "Pareto front") == [len(data["pareto"])] * 2  # host and target panels
    assert points("pareto-plot", "infeasible") == [len(data["trials"]) - len(feasible)] * 2
    assert points("pareto-plot", "chosen") == [1, 1] and points("pareto-plot", "baseline") == [1, 1]
    assert points("layers-plot", "FP32 (measured)") == points("layers-plot", "INT8 (measured)") == [len(data["layers"])]
    assert points("layers-plot", "predicted for stm32h743") == [len(data["layers"])]
    assert sum(t["points"] for t in figures["memory-plot"]) == len(data["memory"]["timeline"])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    browse(chromium, page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000",
           "--hide-scrollbars")
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (1280, 2000)
    assert shot.stat().st_size > 50_000, "a blank page compresses to almost nothing"
    print(f"\nreport screenshot: {shot}")


def test_status_reports_page_errors(chromium, tmp_path):
    """The check above is not vacuous: an error thrown on the page shows up in the status."""
    page = report(write_run(tmp_path))
    broken = page.with_name("broken.html")
    broken.write_text(page.read_text().replace('<pre id="hwai-status" hidden></pre>',
                                               '<pre id="hwai-status" hidden></pre><script>notAFunction();</script>'))
    status, _ = page_status(chromium, broken, tmp_path / "profile")
    assert any("notAFunction" in e for e in status["errors"]) and status["rendered"] == 3


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[Path, dict]:
    """A real (tiny) `hwai optimize` run with a target and host predictions; it writes report.html itself."""
    from test_optimize import tiny

    from hwai.search import optimize

    run = tmp_path_factory.mktemp("optimize") / "run"
    results = optimize(tiny(trials=4, target="stm32h743", host_target="host"), run, progress=False)
    return run, results


def test_report_of_a_real_optimize_run_renders_its_results(chromium, real_run, tmp_path):
    run, results = real_run
    page = run / "report.html"
    assert page.is_file(), "optimize writes the report at the end of the run"
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(results))
    status, console = page_status(chromium, page, tmp_path / "profile")
    assert status["errors"] == [] and not [line for line in console if re.search(r"error|uncaught", line, re.I)]
    assert status["plots"] == status["rendered"] >= 2
    figures = {f["id"]: {t["name"]: t["points"] for t in f["traces"]} for f in status["figures"]}
    assert figures["pareto-plot"]["Pareto front"] == len(results["pareto"]) >= 1
    measured = [r for r in results["layers"] if r.get("baseline_fp32_measured_ms") and r.get("chosen_fp32_measured_ms")]
    assert measured and all(r["predicted_ms"] > 0 for r in measured if r["op"] in ("linear", "conv"))
    assert figures["layers-plot"]["baseline, FP32 (measured)"] == len(results["layers"])
    # every number the page shows with its source key is the number in results.json
    text = page.read_text()
    cells = re.findall(r'data-key="([^"]+)" data-value="([^"]+)">', text)
    assert len(cells) > 20
    for key, raw in cells:
        assert float(raw) == pytest.approx(_lookup(results, key), rel=1e-12), key


# Runs after the page's own status script: for every card and section, the elements wider than it (scrollWidth or
# box), the sections with nothing in them, and table cells squeezed to more than 9 lines (one word per line).
LAYOUT_JS = """
(function check() {
  if (document.body.getAttribute("data-hwai-status") !== "ready") { return setTimeout(check, 50); }
  var problems = [];
  function name(el) { return el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
                      (typeof el.className === "string" && el.className ? "." + el.className.split(" ")[0] : ""); }
  document.querySelectorAll("section, .card").forEach(function (card) {
    var box = card.getBoundingClientRect();
    [card].concat(Array.prototype.slice.call(card.querySelectorAll("*"))).forEach(function (el) {
      var r = el.getBoundingClientRect();
      if (el.scrollWidth > card.clientWidth + 1 || (r.width && (r.right > box.right + 1 || r.left < box.left - 1)))
        problems.push("wider than its card " + name(card) + ": " + name(el) + " " + Math.round(Math.max(el.scrollWidth,
                      r.width)) + " px > " + card.clientWidth + " px: " + (el.textContent || "").slice(0, 60));
    });
  });
  document.querySelectorAll("section").forEach(function (s) {
    var parts = Array.prototype.filter.call(s.children, function (c) { return c.tagName !== "H2" && !c.classList.contains("lead"); });
    var filled = parts.some(function (c) { return c.textContent.trim() || c.querySelector("svg.main-svg"); });
    if (!filled || /not available/i.test(s.textContent)) problems.push("empty section #" + s.id);
  });
  document.querySelectorAll("td, th").forEach(function (c) {
    var line = parseFloat(getComputedStyle(c).lineHeight) || 21;
    if (c.getBoundingClientRect().height > 9 * line) problems.push("squeezed cell (" + Math.round(c.getBoundingClientRect().height) +
                                                                 " px): " + c.textContent.slice(0, 60));
  });
  var out = document.createElement("pre");
  out.id = "layout-check";
  out.textContent = JSON.stringify({width: window.innerWidth, sections: document.querySelectorAll("section").length,
                                    cards: document.querySelectorAll(".card").length, problems: problems});
  document.body.appendChild(out);
})();
"""


def layout(chromium: str, page: Path, profile: Path, width: int = 1400) -> dict:
    """LAYOUT_JS's findings on a copy of `page` opened at `width` px."""
    checked = page.with_name(page.stem + "-layout.html")
    checked.write_text(page.read_text().replace("</body>", f"<script>{LAYOUT_JS}</script></body>"))
    done = browse(chromium, checked, profile, "--dump-dom", f"--window-size={width},2000")
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', done.stdout, re.S)
    assert found, "the layout check never ran"
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def real_compress(tmp_path_factory, _resnet8_on_digits, digits) -> Path:
    """A real (tiny) `hwai compress` run: prune, fuse and quantize, each kept or rolled back."""
    from test_compress import QUICK

    from hwai.models import ModelSpec
    from hwai.search.compress import CompressConfig, compress

    out = tmp_path_factory.mktemp("compress") / "out"
    cfg = CompressConfig(prune=0.5, finetune_epochs=0, quantize="int8", max_accuracy_drop=0.05, measure=QUICK)
    compress(copy.deepcopy(_resnet8_on_digits), digits, cfg, out=out, spec=ModelSpec("resnet8", 10, 1, (8, 8), 0.5),
             log=lambda s: None, progress=False)
    return out


@pytest.fixture(scope="module")
def real_export(tmp_path_factory, _resnet8_on_digits, digits) -> Path:
    """A real `hwai export` run (ONNX Runtime and OpenVINO where installed), reported by `hwai report`."""
    from test_runtimes import FAST

    from hwai import io
    from hwai import runtimes as hrt

    out = tmp_path_factory.mktemp("export") / "out"
    names = [n for n in ("onnxruntime", "openvino") if n in hrt.available()]
    rows = hrt.measure_all(copy.deepcopy(_resnet8_on_digits), digits, out, False, names, FAST, passes=3)
    choice = hrt.fastest(rows) if len(rows) > 1 else None
    io.write_json(out / "results.json", hrt.document(rows, FAST, "resnet8", "digits", None, choice, passes=3))
    report(out)
    return out


def test_reports_fit_their_cards_at_1400_px(chromium, real_run, real_compress, real_export, tmp_path):
    """The optimize (real and synthetic), compress and export reports at 1400 px: nothing wider than its card, no
    empty section, no cell squeezed to a word per line; each keeps a screenshot in tests/artifacts/."""
    from test_report_labels import export_results

    from hwai.report.labels import METRICS

    synthetic = report(write_run(tmp_path, synthetic_results()))
    exported = report(write_run(tmp_path / "export", export_results(size_kb=11030.0)))
    pages = {"optimize": real_run[0] / "report.html", "optimize-synthetic": synthetic,
             "compress": real_compress / "report.html", "export": real_export / "report.html", "export-synthetic": exported}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, page in pages.items():
        found = layout(chromium, page, tmp_path / f"profile-{name}")
        assert found["width"] == 1400 and found["sections"] >= 2 and found["cards"] >= 3, (name, found)
        assert found["problems"] == [], (name, found["problems"][:5])
        browse(chromium, page, tmp_path / f"shot-{name}", f"--screenshot={ARTIFACTS / f'report-{name}.png'}",
               "--window-size=1400,3000", "--hide-scrollbars")
    for run in (real_run[0], real_compress):  # every figure the producers label has a human label
        kinds = json.loads(next(run.glob("*.json")).read_text())["kinds"]
        assert set(kinds) - {"fits"} <= set(METRICS), run


def test_the_layout_check_sees_a_wide_table(chromium, tmp_path):
    """Not vacuous: a table wider than its card, and an empty section, are found."""
    page = report(write_run(tmp_path))
    wide = page.with_name("wide.html")
    wide.write_text(page.read_text().replace('<section id="environment">', '<section id="empty"><h2>Empty</h2>'
                                             '</section><section id="environment"><table><tr><td><code style="'
                                             'white-space:nowrap">' + "x" * 300 + "</code></td></tr></table>"))
    problems = layout(chromium, wide, tmp_path / "profile")["problems"]
    assert any("wider than its card section#environment" in p for p in problems)
    assert "empty section #empty" in problems
