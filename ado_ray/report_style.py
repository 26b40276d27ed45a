"""The HTML report's style sheet and its one script, inlined into every page.

Colours: one per task state (`.st-*`: green changed, grey no change, red failed, amber
skipped, blue still in flight), one per phase (`.ph-*`) and one per agent run outcome
(`.oc-*`); the SVG charts use the same classes for their fills. The script only filters
the repository table (by text and state); the page is complete without it, and the filter
is shown only once the script has run (`html.js`).
"""

CSS = """
:root{--ink:#1f2933;--muted:#616e7c;--line:#e4e7eb;--band:#f5f7fa;--accent:#3b5bdb;
--changed:#2f9e44;--no_change:#868e96;--failed:#e03131;--skipped:#f08c00;--cancelled:#495057;
--flight:#1c7ed6;--queued:#ced4da}
*{box-sizing:border-box}
body{margin:0;color:var(--ink);background:#fff;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{padding:24px 40px 0;border-bottom:1px solid var(--line);background:#fbfcfd}
h1{margin:0 0 10px;font-size:26px;font-weight:650}
h1 .id{font:500 15px ui-monospace,"DejaVu Sans Mono",monospace;color:var(--muted);margin-left:8px}
h2{font-size:19px;margin:0 0 12px;font-weight:650}
h3{font-size:15px;margin:14px 0 6px}
dl{margin:0}dt{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
dd{margin:2px 0 0;font-weight:500}
.facts{display:flex;flex-wrap:wrap;gap:8px 36px;margin-bottom:14px}
nav{display:flex;gap:22px;font-size:13px}
nav a{color:var(--muted);text-decoration:none;padding:8px 0;border-bottom:2px solid transparent}
nav a:hover{color:var(--accent);border-color:var(--accent)}
main{padding:8px 40px 24px;max-width:1500px}
section{margin:26px 0 34px}
.note{color:var(--muted);margin:-6px 0 10px;max-width:900px}
.empty{color:var(--muted);font-style:italic}
a{color:var(--accent)}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:14px}
.card{min-width:118px;padding:10px 14px;border:1px solid var(--line);border-radius:8px;
border-left:5px solid var(--line);display:flex;flex-direction:column;gap:4px}
.card b{font-size:26px;line-height:1.1;font-weight:650}
.card .label{color:var(--muted)}.card .badge{align-self:flex-start}
.stack{display:flex;height:12px;border-radius:6px;overflow:hidden;margin-bottom:18px;
background:var(--band);max-width:900px}
.stack span{display:block;height:100%}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px 24px;
max-width:1200px}
.figures dd{font-size:18px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
color:#fff;background:var(--queued);white-space:nowrap}
.badge.st-queued{color:var(--ink)}
.st-changed{background:var(--changed);fill:var(--changed)}
.st-no_change{background:var(--no_change);fill:var(--no_change)}
.st-failed{background:var(--failed);fill:var(--failed)}
.st-skipped{background:var(--skipped);fill:var(--skipped)}
.st-cancelled{background:var(--cancelled);fill:var(--cancelled)}
.st-queued{background:var(--queued);fill:var(--queued)}
.st-preparing,.st-running,.st-collecting,.st-publishing{background:var(--flight);fill:var(--flight)}
.st-run-finished{background:var(--changed)}.st-run-running{background:var(--flight)}
.st-run-interrupted{background:var(--skipped)}
.st-changed-edge{border-left-color:var(--changed)}.st-no_change-edge{border-left-color:var(--no_change)}
.st-failed-edge{border-left-color:var(--failed)}.st-skipped-edge{border-left-color:var(--skipped)}
.st-cancelled-edge{border-left-color:var(--cancelled)}
.ph-prepare{fill:#a5b4c8;background:#a5b4c8}.ph-limit_wait{fill:#ffc078;background:#ffc078}
.ph-agent{fill:#4c6ef5;background:#4c6ef5}.ph-commit{fill:#9775fa;background:#9775fa}
.ph-publish{fill:#15aabf;background:#15aabf}
.oc-ok{fill:#4c6ef5;background:#4c6ef5}.oc-failed{fill:var(--failed);background:var(--failed)}
.oc-timeout{fill:#f08c00;background:#f08c00}.oc-other{fill:#adb5bd;background:#adb5bd}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;font-size:12.5px;color:var(--muted);margin:0 0 8px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;
vertical-align:-2px}
.chart{width:100%;height:auto;display:block;border:1px solid var(--line);border-radius:8px;
background:#fff}
.chart text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
.chart .tick,.chart .lane{font-size:11px;fill:var(--muted)}
.chart .axis{font-size:12px;fill:var(--muted)}
.chart .grid{stroke:var(--line);stroke-width:1}
.chart .band{fill:var(--band)}
.chart .axisline{stroke:#9aa5b1}
.chart line.mark{stroke:var(--ink);stroke-dasharray:4 3}
.chart text.mark{font-size:11px;fill:var(--ink);paint-order:stroke;stroke:#fff;stroke-width:3px}
.chart .cap{stroke:#fff;stroke-width:.5}
.chart a rect:hover{opacity:.75}
.grid-table{border-collapse:collapse;width:100%;font-size:13px}
.grid-table th{text-align:left;font-weight:600;color:var(--muted);
border-bottom:2px solid var(--line);padding:6px 8px;position:sticky;top:0;background:#fff}
.grid-table td{padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
.grid-table tbody tr:nth-child(even){background:#fafbfc}
.grid-table tr.total td{font-weight:650;border-top:2px solid var(--line)}
.grid-table tbody tr:target{background:#fff3bf}
.num{text-align:right;font-variant-numeric:tabular-nums}
.share{width:200px}.share span{display:block;height:10px;border-radius:3px;background:var(--accent)}
.repos td small{display:block;color:var(--muted);font-size:11.5px;overflow-wrap:anywhere}
.repos td.detail{max-width:420px;overflow-wrap:anywhere}
.repos td.logs,.repos td.diff{white-space:nowrap}
.repos td:nth-child(2){min-width:190px;max-width:320px}
.add{color:var(--changed);font-weight:600}.del{color:var(--failed);font-weight:600}
.muted{color:var(--muted)}
.cls{font-weight:600;color:var(--failed)}
.controls{display:none;gap:12px;align-items:center;margin-bottom:10px}.js .controls{display:flex}
.controls input,.controls select{font:inherit;padding:5px 8px;border:1px solid #cbd2d9;
border-radius:6px}
.controls input{width:280px}
#shown{color:var(--muted)}
.failure-class ul{list-style:none;padding:0;margin:0}
.failure-class li{border:1px solid var(--line);border-left:4px solid var(--failed);
border-radius:6px;padding:8px 12px;margin:0 0 8px}
pre.message{margin:0;white-space:pre-wrap;word-break:break-word;max-height:14em;overflow:auto}
.repos p,.failure-class p.repos{margin:6px 0 0;color:var(--muted)}
pre.settings{background:var(--band);border:1px solid var(--line);border-radius:8px;padding:12px;
overflow:auto;max-height:640px}
details summary{cursor:pointer;color:var(--accent)}
footer{padding:14px 40px 28px;color:var(--muted);font-size:12px;border-top:1px solid var(--line)}
@media print{header{background:none}nav,.controls{display:none}main{padding:0 12px}
.grid-table th{position:static}section{break-inside:auto}.chart{break-inside:avoid}
details>pre{display:block}}
"""

SCRIPT = """
(function () {
  document.documentElement.classList.add("js");  /* the filter shows only where it works */
  var input = document.getElementById("filter");
  var state = document.getElementById("state-filter");
  var shown = document.getElementById("shown");
  if (!input || !state || !shown) { return; }
  var rows = Array.prototype.slice.call(document.querySelectorAll("#repos tbody tr"));
  function apply() {
    var text = input.value.trim().toLowerCase(), want = state.value, n = 0;
    rows.forEach(function (row) {
      var keep = (!want || row.getAttribute("data-state") === want) &&
        (!text || row.textContent.toLowerCase().indexOf(text) !== -1);
      row.hidden = !keep;
      if (keep) { n += 1; }
    });
    shown.textContent = n + " of " + rows.length + " repositories";
  }
  input.addEventListener("input", apply);
  state.addEventListener("change", apply);
})();
"""
