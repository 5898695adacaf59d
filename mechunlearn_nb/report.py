"""One HTML page for a run of the series.

:func:`write_report` reads a run folder written by ``runner.run_series`` — its
``summary.json``, every notebook's output folder (``metrics.json``, PNG
figures, CSV tables) and the executed notebooks — and writes ``report.html``
beside them: the notebooks in order, each with its status and duration, its
metrics checked against ``expected.toml``, its figures and tables, and links to
the executed notebook (as ``.ipynb`` and as rendered HTML).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from .io import write_text

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444} h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} .ok{color:#186a3b} .bad{color:#a93226;font-weight:bold} img{max-width:100%;margin:.5em 0}
.meta{color:#666;font-size:.9em}
"""


def _scalar_metrics(metrics: dict) -> pd.DataFrame:
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None]
    rows += [(k, json.dumps(v)[:200]) for k, v in metrics.items() if isinstance(v, (list, dict))]
    return pd.DataFrame(rows, columns=["metric", "value"])


def _table(df: pd.DataFrame, max_rows: int = 60) -> str:
    return df.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, escape=True)


#: what a rendered notebook shows in place of an ipywidgets explorer
WIDGET_NOTE = ("[interactive widget: live only in JupyterLab. Open the notebook there "
               "(.venv/bin/jupyter lab notebooks/) and run it to use this explorer.]")


def _without_live_widgets(nb):
    """Replace ipywidgets outputs by :data:`WIDGET_NOTE`.

    A headless run saves no widget state, so a rendered page cannot draw a widget: nbconvert would
    print its Python repr (``VBox(children=(Text(value=...``) instead, which reads like a bug.
    """
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                out["data"] = {"text/plain": WIDGET_NOTE}
    return nb


#: nbconvert's lab template without the three scripts it loads from CDNs (require.js, MathJax and the widget
#: manager): the rendered page then needs nothing from outside the machine. Widgets are replaced by
#: :data:`WIDGET_NOTE`; equations stay as their TeX source.
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
"""


def _render_notebook_html(ipynb: Path) -> Path | None:
    try:
        import jinja2
        import nbformat
        from nbconvert import HTMLExporter

        exporter = HTMLExporter(extra_loaders=[jinja2.DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})],
                                template_file="offline.html.j2")
        nb = _without_live_widgets(nbformat.read(ipynb, as_version=4))
        nb.metadata.pop("widgets", None)  # no widget state to embed: the explorers are live only in JupyterLab
        body, _ = exporter.from_notebook_node(nb)
    except Exception:  # nbconvert missing or a notebook it cannot render: the .ipynb link remains
        return None
    return write_text(ipynb.with_suffix(".html"), body)


#: the full-size comparison grid that ships with the repository (notebook 09 at the paper's sizes, 105 cells)
SHIPPED_GRID = Path(__file__).resolve().parent.parent / "results" / "09_comparison_full"


def _shipped_grid(folder: Path = SHIPPED_GRID) -> list[str]:
    """The shipped full-size grid's table and verdicts, labelled as shipped (for a run at small sizes)."""
    if not (folder / "comparison_table.csv").exists():
        return []
    parts = ["<h2 id='shipped-grid'>The full-size grid (shipped, not computed in this run)</h2>",
             f"<p class='meta'>This run used small sizes, so its notebook 09 grid is a few short cells. Below is the "
             f"grid computed earlier at the paper's sizes on the embedded model and shipped in "
             f"<code>results/09_comparison_full/</code> (5 tasks × 7 localizations × 3 seeds; how it was made: its "
             f"README.md). <code>python -m mechunlearn_nb run --full</code> computes it again.</p>",
             "<h3>Table (shipped): mean ± 95% interval over seeds</h3>",
             _table(pd.read_csv(folder / "comparison_table.csv"))]
    if (folder / "verdicts.csv").exists():
        verdicts = pd.read_csv(folder / "verdicts.csv")
        keep = [c for c in ("dataset", "claim", "versus", "diff_mean", "diff_ci95", "n_pairs", "verdict")
                if c in verdicts.columns]
        parts += ["<h3>Verdicts (shipped)</h3>", _table(verdicts[keep])]
    return parts


def write_report(run_dir: str | Path, render_notebooks: bool = True) -> Path:
    """Write ``<run_dir>/report.html`` and return its path."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    parts = [f"<h1>mechunlearn_nb run {html.escape(run_dir.name)}</h1>",
             f"<p class='meta'>model: {html.escape(str(summary.get('model')))} · size: {summary.get('size')} · "
             f"started {summary.get('started')} · finished {summary.get('finished', '(running)')}</p>",
             "<p class='meta'>The explorers (ipywidgets) are live only in JupyterLab: "
             "<code>.venv/bin/jupyter lab notebooks/</code>, then run the notebook. The rendered notebooks load "
             "nothing from the internet, so their equations show as TeX source.</p>"]
    overview = [dict(notebook=name, status=e.get("status"), seconds=e.get("seconds"),
                     # a failed notebook has no reference outcome; a model without expected values says so
                     reproduced={True: "yes", False: "no"}.get(e.get("reproduced"), e.get("reference", "–")))
                for name, e in summary["notebooks"].items()]
    parts += ["<h2>Overview</h2>", _table(pd.DataFrame(overview))]
    for name, entry in summary["notebooks"].items():
        folder = run_dir / name
        ipynb = run_dir / f"{name}.ipynb"
        links = [f"<a href='{html.escape(ipynb.name)}'>executed notebook (.ipynb)</a>"] if ipynb.exists() else []
        if render_notebooks and ipynb.exists():
            rendered = _render_notebook_html(ipynb)
            if rendered is not None:
                links.append(f"<a href='{html.escape(rendered.name)}'>rendered (HTML)</a>")
        status = entry.get("status")
        cls = "ok" if status == "ok" else "bad"
        parts.append(f"<h2 id='{html.escape(name)}'>{html.escape(name)}</h2>")
        parts.append(f"<p><span class='{cls}'>{html.escape(str(status))}</span> · {entry.get('seconds')} s · {' · '.join(links)}</p>")
        if entry.get("error"):
            parts.append(f"<pre class='bad'>{html.escape(entry['error'][:3000])}</pre>")
        if entry.get("cluster"):  # the grid's cells computed on Ray workers before the final pass (run --workers)
            c = entry["cluster"]
            ray_start = f", Ray started in {c['ray']['seconds']} s" if c.get("ray") else ""
            parts.append(f"<h3>Cells computed on Ray</h3><p>{c['computed']} cell(s) computed by {c['workers']} worker(s) "
                         f"({c['cpus_per_worker']} CPU, {c['gpus_per_worker']} GPU each; Ray at "
                         f"{html.escape(str(c['address']))}{ray_start}) in {c['seconds']} s; {c['read_back']} found "
                         f"saved by an earlier run; {len(c['failed'])} failed"
                         f"{' (the final pass computed them)' if c['failed'] else ''}.</p>")
            if c["failed"]:
                rows = "".join(f"<tr><td>{html.escape(str(f['task']))}</td><td>{html.escape(str(f['localization']))}</td>"
                               f"<td>{f['seed']}</td><td class='bad'>{html.escape(f['error'][:300])}</td></tr>"
                               for f in c["failed"])
                parts.append(f"<table><tr><th>task</th><th>localization</th><th>seed</th><th>error</th></tr>{rows}</table>")
        checks = pd.DataFrame(entry.get("checks") or [])
        if len(checks):
            parts += ["<h3>Expected values</h3>", _table(checks)]
        metrics = entry.get("metrics") or {}
        if metrics:
            parts += ["<h3>Metrics</h3>", _table(_scalar_metrics(metrics))]
        if folder.is_dir():
            for csv in sorted(folder.glob("*.csv")):
                try:
                    parts += [f"<h3>{html.escape(csv.stem)}</h3>", _table(pd.read_csv(csv))]
                except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
                    continue
            for png in sorted(folder.glob("*.png")):
                rel = png.relative_to(run_dir).as_posix()
                parts.append(f"<figure><img src='{html.escape(rel)}' alt='{html.escape(png.stem)}'>"
                             f"<figcaption class='meta'>{html.escape(png.stem)}</figcaption></figure>")
    if summary.get("size") == "fast" and any(name.startswith("09") for name in summary["notebooks"]):
        parts += _shipped_grid()
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>mechunlearn_nb run {html.escape(run_dir.name)}</title>" \
           f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    return write_text(run_dir / "report.html", page)
