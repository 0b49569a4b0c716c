"""The report page's stylesheet and scripts (kept here so report.html needs nothing but itself)."""

CSS = """
:root { --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f6f7f9; --card: #fff;
        --measured: #1d4ed8; --predicted: #b45309; --good: #15803d; --bad: #b91c1c; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); line-height: 1.5;
       font: 15px/1.5 Inter, "Segoe UI", system-ui, -apple-system, sans-serif; }
header { background: linear-gradient(120deg, #0f172a, #1e3a8a); color: #fff; padding: 28px 0 72px; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 650; letter-spacing: -0.01em; }
header .sub { color: #cbd5e1; font-size: 14px; }
header code { color: #e2e8f0; }
main, .wrap { max-width: 1200px; margin: 0 auto; padding: 0 24px; }
main { margin-top: -52px; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 16px; margin-bottom: 20px; }
.card { background: var(--card); border-radius: 12px; padding: 16px 18px;
        box-shadow: 0 1px 2px rgba(0,0,0,.06), 0 4px 16px rgba(15,23,42,.06); }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .06em; }
.card .value { font-size: 30px; font-weight: 700; margin: 2px 0; letter-spacing: -0.02em; }
.card .note { color: var(--muted); font-size: 13px; }
.card.good .value { color: var(--good); } .card.bad .value { color: var(--bad); }
section { background: var(--card); border-radius: 12px; padding: 20px 22px; margin-bottom: 20px;
          box-shadow: 0 1px 2px rgba(0,0,0,.06); }
section h2 { margin: 0 0 4px; font-size: 18px; font-weight: 650; }
section h2 .badge { vertical-align: middle; margin-left: 6px; }
section p.lead { margin: 0 0 12px; color: var(--muted); font-size: 14px; }
.na { color: var(--muted); font-style: italic; padding: 12px 0; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tr.chosen td { background: #fff7ed; }
.scroll { overflow-x: auto; }
tr:last-child td { border-bottom: none; }
.better { color: var(--good); font-weight: 600; } .worse { color: var(--bad); font-weight: 600; }
.badge { display: inline-block; font-size: 11px; font-weight: 600; padding: 1px 8px; border-radius: 999px;
         letter-spacing: .02em; white-space: nowrap; }
.badge.measured { background: #dbeafe; color: var(--measured); border: 1px solid #bfdbfe; }
.badge.predicted { color: var(--predicted); border: 1px dashed #f59e0b;
                   background: repeating-linear-gradient(135deg, #fffbeb 0 6px, #fef3c7 6px 12px); }
.badge.unknown { background: #f3f4f6; color: var(--muted); border: 1px solid var(--line); }
.badge.ok { background: #dcfce7; color: var(--good); } .badge.fail { background: #fee2e2; color: var(--bad); }
.chips { display: flex; flex-wrap: wrap; gap: 8px; margin: 6px 0 10px; }
.chip { background: #f3f4f6; border-radius: 8px; padding: 3px 10px; font-size: 13px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 20px; }
details summary { cursor: pointer; color: var(--measured); margin-top: 8px; font-size: 14px; }
.notes dt { font-weight: 600; margin-top: 8px; } .notes dd { margin: 2px 0 0; color: #374151; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; overflow-wrap: anywhere; }
.sub { color: var(--muted); font-size: 12px; font-weight: 400; white-space: normal; }
table.compare { table-layout: fixed; }
table.compare th:nth-child(1) { width: 34%; } table.compare th:nth-child(2) { width: 11%; }
table.compare th:nth-child(3), table.compare th:nth-child(4) { width: 17%; } table.compare th:nth-child(5) { width: 21%; }
table.compare td:nth-child(5) { white-space: normal; }  /* a change in words may wrap: '1.13× faster (not a ...)' */
tr.group td { background: #f8fafc; color: #374151; font-size: 13px; padding-top: 12px; }
section h3 { font-size: 15px; font-weight: 650; margin: 18px 0 6px; }
.step + .step { border-top: 1px solid var(--line); margin-top: 8px; }
table.trials td:nth-child(2) { min-width: 220px; }
table.pairs td:first-child { width: 32%; color: #374151; }
details details summary { margin-top: 2px; font-size: 12px; }
footer { color: var(--muted); font-size: 13px; padding: 8px 0 40px; }
@media (max-width: 900px) { .cards { grid-template-columns: repeat(2, 1fr); } .grid2 { grid-template-columns: 1fr; } }
"""

# Runs before plotly.js: collects every error the page raises, for the browser test (and for people).
ERRORS_JS = """
window.hwaiErrors = [];
window.addEventListener("error", function (e) { window.hwaiErrors.push(String(e.message || e.type)); });
window.addEventListener("unhandledrejection", function (e) { window.hwaiErrors.push("unhandled rejection: " + e.reason); });
(function () {
  var original = console.error;
  console.error = function () {
    window.hwaiErrors.push(Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
"""

# Draws the figures, then writes a machine-readable status into #hwai-status: what rendered, how many
# points each trace drew (SVG nodes, not input data), and the errors collected above.
PLOT_JS = """
(function () {
  var figures = JSON.parse(document.getElementById("hwai-figures").textContent);
  var ids = Object.keys(figures);
  var config = {responsive: true, displaylogo: false};
  Promise.all(ids.map(function (id) {
    return Plotly.newPlot(id, figures[id].data, figures[id].layout, config);
  })).catch(function (e) { window.hwaiErrors.push("plot failed: " + e); }).then(writeStatus);

  function writeStatus() {
    var plots = ids.map(function (id) {
      var gd = document.getElementById(id);
      var traces = Array.prototype.map.call(gd.querySelectorAll("g.trace"), function (g) {
        var trace = g.__data__ && g.__data__[0] && g.__data__[0].trace;
        return {name: trace ? trace.name : null, xaxis: trace ? trace.xaxis : null,
                points: g.querySelectorAll(".point").length};
      });
      return {id: id, rendered: !!gd.querySelector("svg.main-svg"), traces: traces};
    });
    document.getElementById("hwai-status").textContent = JSON.stringify({
      plots: plots.length, rendered: plots.filter(function (p) { return p.rendered; }).length,
      figures: plots, errors: window.hwaiErrors});
    document.body.setAttribute("data-hwai-status", "ready");
  }
})();
"""
