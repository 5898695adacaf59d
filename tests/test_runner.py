"""The series runner, the CLI and the HTML report, on a two-notebook series that needs no model."""

import html
import json

import pytest


import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from mechunlearn_nb import __main__ as cli
from mechunlearn_nb import runner


def _notebook(path, body):
    nb = new_notebook()
    params = new_code_cell("FAST = False\nOUTPUT_DIR = 'out'\nMODEL_NAME = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def series(tmp_path):
    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "00_ok.ipynb", "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
              "from mechunlearn_nb import io\nout = io.output_dir(OUTPUT_DIR)\nplt.plot([0, 1]); plt.savefig(out / 'line.png')\n"
              "io.write_metrics(out, {'fast': FAST, 'value': 3})")
    _notebook(books / "01_broken.ipynb", "raise RuntimeError('boom')")
    return books


def test_list_notebooks_filters_and_rejects_unknown(series):
    assert [p.stem for p in runner.list_notebooks(["01"], series)] == ["01_broken"]
    with pytest.raises(ValueError, match="Unknown notebook"):
        runner.list_notebooks(["07"], series)


def test_run_series_writes_a_new_folder_and_report(series, tmp_path):
    first = runner.run_series(tmp_path / "runs", fast=True, notebook_dir=series)
    second = runner.run_series(tmp_path / "runs", fast=True, notebook_dir=series, only=["00"])
    assert first != second and first.exists() and second.exists()
    summary = json.loads((first / "summary.json").read_text())
    assert summary["notebooks"]["00_ok"]["status"] == "ok"
    assert summary["notebooks"]["00_ok"]["metrics"] == {"fast": True, "value": 3}
    assert summary["notebooks"]["01_broken"]["status"] == "failed" and "boom" in summary["notebooks"]["01_broken"]["error"]
    page = (first / "report.html").read_text()
    assert "00_ok/line.png" in page and "01_broken" in page and "boom" in page
    assert (first / "00_ok.ipynb").exists()


def test_cli_list(capsys):
    assert cli.main(["list"]) == 0
    assert "00_quickstart" in capsys.readouterr().out


def test_widget_cells_and_cell_timeout(tmp_path):
    """Notebooks with ipywidgets run through the polling engine; a cell past its timeout fails, never hangs."""
    from nbclient.exceptions import CellTimeoutError

    books, run = tmp_path / "nb", tmp_path / "run"
    books.mkdir()
    run.mkdir()
    body = ("import ipywidgets as w\nfrom mechunlearn_nb import io\nout = io.output_dir(OUTPUT_DIR)\n"
            "for i in range(20):\n    display(w.VBox([w.IntSlider(value=i), w.Dropdown(options=['a', 'b'])]))\n"
            "io.write_metrics(out, {'n': 20})")
    _notebook(books / "00_widgets.ipynb", body)
    assert runner.run_notebook(books / "00_widgets.ipynb", run, {"FAST": True}) == {"n": 20}
    _notebook(books / "01_slow.ipynb", "import time\ntime.sleep(30)")
    with pytest.raises(CellTimeoutError):
        runner.run_notebook(books / "01_slow.ipynb", run, {"FAST": True}, timeout=3)


def test_full_run_hands_notebook_03s_localizations_to_later_notebooks(tmp_path):
    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "03_locate.ipynb", "from mechunlearn_nb import io\nout = io.output_dir(OUTPUT_DIR)\n"
              "io.save_json({'fact lookup': ['m1'], 'OT (attribution patching)': ['a0'], 'random': ['a1'],"
              " 'all MLPs': ['m0', 'm1']}, out / 'localizations.json')\nio.write_metrics(out, {'ok': 1})")
    body = ("from mechunlearn_nb import io\nio.write_metrics(io.output_dir(OUTPUT_DIR), "
            "{'components': globals().get('COMPONENTS', globals().get('CF_COMPONENTS'))})")
    for name, extra in [("04_edit", "COMPONENTS = None"), ("08_other", "CF_COMPONENTS = None")]:
        nb = new_notebook()
        params = new_code_cell(f"FAST = False\nOUTPUT_DIR = 'out'\nMODEL_NAME = None\n{extra}")
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, new_code_cell(body)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, books / f"{name}.ipynb")
    run = runner.run_series(tmp_path / "runs", notebook_dir=books, report=False)
    summary = json.loads((run / "summary.json").read_text())["notebooks"]
    # only the located ones travel; a notebook without COMPONENTS (CounterFact) locates for itself
    assert summary["04_edit"]["metrics"]["components"] == {"fact lookup": ["m1"], "OT (attribution patching)": ["a0"]}
    assert summary["04_edit"]["components_from"].endswith("03_locate/localizations.json")
    assert summary["08_other"]["metrics"]["components"] is None
    # no expected values for these notebooks: nothing was reproduced, nor failed to be
    assert summary["04_edit"]["reference"] == "no reference" and summary["04_edit"]["reproduced"] is None
    fast = runner.run_series(tmp_path / "runs", fast=True, notebook_dir=books, report=False)
    assert json.loads((fast / "summary.json").read_text())["notebooks"]["04_edit"]["metrics"]["components"] is None
    again = runner.run_series(tmp_path / "runs", notebook_dir=books, report=False, reuse_localizations=False)
    assert json.loads((again / "summary.json").read_text())["notebooks"]["04_edit"]["metrics"]["components"] is None


def test_run_builds_notebook_09s_grid_from_its_parameters_and_the_report_says_what_ray_computed(tmp_path):
    """`run --workers` computes the grid notebook 09 would compute (the same GridConfig from the same parameters);
    the report says how many cells Ray computed, on how many workers, and which failed."""
    from dataclasses import asdict

    from mechunlearn_nb import plan
    from mechunlearn_nb.report import write_report

    nb = runner.NOTEBOOK_DIR / "09_comparison.ipynb"
    defaults = runner.notebook_defaults(nb)
    full = plan.notebook_config(defaults)
    # notebook 09's defaults are its plan's whole grid (plan v2: 3 tasks x 5 localizations x 5 test seeds)
    assert asdict(full) == asdict(plan.grid_config(plan.require(defaults["PLAN"])))
    assert len(full.tasks) * len(full.localizations) * len(full.seeds) == 75
    fast = plan.notebook_config({**defaults, "FAST": True})
    assert fast.tasks == plan.FAST_SIZES["tasks"] and fast.seeds == (0, 1) and fast.components["sports"]
    with pytest.raises(plan.PlanError, match="has no plan"):  # no plan: no grid, on Ray or in the notebook
        runner.run_grid_on_ray(nb, tmp_path, {"PLAN": None})
    with pytest.raises(ValueError, match="only a grid notebook"):
        runner.run_grid_on_ray(runner.NOTEBOOK_DIR / "00_quickstart.ipynb", tmp_path, {})

    run = tmp_path / "run"
    run.mkdir()
    summary = {"notebooks": {"09_comparison": {"status": "ok", "seconds": 12.0, "executed": str(run / "09.ipynb"),
               "cluster": {"computed": 6, "read_back": 2, "workers": 2, "seconds": 10.5, "cpus_per_worker": 1.0,
                           "gpus_per_worker": 0.0, "address": "local", "ray": {"seconds": 4.2},
                           "failed": [{"task": "edit 8 athletes", "localization": "random", "seed": 1,
                                       "error": "RuntimeError: boom"}]}}}}
    (run / "summary.json").write_text(json.dumps(summary))
    page = write_report(run, render_notebooks=False).read_text()
    assert "6 cell(s) computed by 2 worker(s)" in page and "Ray started in 4.2 s" in page and "2 found saved" in page
    assert "1 failed (the final pass computed them)" in page and "boom" in page and "parts" not in page


def test_notebooks_name_the_course_kernel_and_papermill_needs_none(tmp_path):
    """JupyterLab opens the course on the kernel setup.sh registers (mechunlearn_nb); papermill runs each
    notebook on this interpreter's own kernel, whatever its metadata names, so a fresh machine (CI) runs them."""
    import sys
    from pathlib import Path

    for nb_path in runner.list_notebooks():
        spec = nbformat.read(nb_path, as_version=4).metadata["kernelspec"]
        assert spec["name"] == "mechunlearn_nb", f"{nb_path.name} names kernel {spec['name']!r}"
    books, run = tmp_path / "nb", tmp_path / "run"
    books.mkdir()
    run.mkdir()
    _notebook(books / "00_named.ipynb", "import sys\nfrom mechunlearn_nb import io\n"
              "io.write_metrics(io.output_dir(OUTPUT_DIR), {'python': sys.executable})")
    nb = nbformat.read(books / "00_named.ipynb", as_version=4)
    nb.metadata["kernelspec"] = {"name": "a-kernel-nobody-registered", "display_name": "?", "language": "python"}
    nbformat.write(nb, books / "00_named.ipynb")
    python = runner.run_notebook(books / "00_named.ipynb", run, {"FAST": True})["python"]
    assert Path(python).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["grid-status", "--help"]])
def test_cli_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    assert "usage: python -m mechunlearn_nb" in shown and "``" not in shown


def test_cli_version(capsys):
    import mechunlearn_nb

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"python -m mechunlearn_nb {mechunlearn_nb.__version__}"


def test_run_series_reports_each_notebook_as_it_finishes(series, tmp_path, capsys):
    """One line per notebook (name, seconds, outcome) and papermill's progress bar over its cells."""
    runner.run_series(tmp_path / "runs", fast=True, notebook_dir=series, report=False)
    shown = capsys.readouterr()
    lines = [line.strip() for line in shown.out.splitlines() if line.strip().startswith(("00_ok:", "01_broken:"))]
    assert len(lines) == 2 and lines[0].endswith("no expected values for this model: nothing to compare") and "FAILED at In [" in lines[1] and "RuntimeError: boom" in lines[1], shown.out
    assert "Executing" in shown.err and "cell/s" in shown.err, shown.err[-500:]


def test_report_says_widgets_are_live_only_in_jupyterlab(tmp_path):
    """A headless run keeps no widget state: the rendered notebook says so instead of printing a widget's repr."""
    from mechunlearn_nb.report import WIDGET_NOTE

    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "00_widget.ipynb", "import ipywidgets as w\nw.VBox([w.Text(value='LeBron James')])")
    run = runner.run_series(tmp_path / "runs", fast=True, notebook_dir=books)
    rendered = (run / "00_widget.html").read_text()
    assert html.escape(WIDGET_NOTE) in rendered and "VBox(children" not in rendered
    assert "live only in JupyterLab" in (run / "report.html").read_text()


def test_run_defaults_to_small_sizes_and_prints_its_estimate_first(tmp_path, monkeypatch, capsys):
    """`run` with no size flag: small sizes; `--full`: the paper's sizes. Each prints its estimate before it starts."""
    calls = []

    def fake_run_series(**kwargs):
        calls.append(kwargs)
        run = tmp_path / f"run{len(calls)}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"notebooks": {}}))
        return run

    monkeypatch.setattr(runner, "run_series", fake_run_series)
    assert cli.main(["run", "--only", "00,09", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert calls[-1]["fast"] is True
    small = runner.estimate(runner.list_notebooks(["00", "09"]), fast=True)
    assert line.startswith("Running 2 notebook(s) at small sizes") and f"about {runner.describe_duration(small['seconds'].sum())}" in line

    assert cli.main(["run", "--full", "--only", "09", "--workers", "2", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    full = runner.estimate(runner.list_notebooks(["09"]), fast=False)["seconds"].iloc[0]
    assert calls[-1]["fast"] is False and f"about {runner.describe_duration(full / 2)}" in line and "paper's sizes" in line
    assert full > 20 * 3600 > small["seconds"].sum()  # the measured grid: 21 h of one-core time, the small series minutes
    with pytest.raises(SystemExit) as stop:  # one size at a time (argparse's own one-line error)
        cli.main(["run", "--full", "--fast", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert len(calls) == 2


def test_estimate_names_notebooks_without_a_measured_pace(tmp_path):
    book = tmp_path / "42_new.ipynb"
    _notebook(book, "x = 1")
    table = runner.estimate([book], fast=True, model="some/model")
    assert table["seconds"].isna().all() and table["basis"].tolist() == ["not measured"]
    line = cli._estimate_line(table, True, "some/model")
    assert "no measured time for 42_new" in line


def test_small_run_report_shows_the_shipped_full_size_grid_labelled_as_shipped(tmp_path):
    from mechunlearn_nb.report import SHIPPED_GRID, write_report

    claim = __import__("pandas").read_csv(SHIPPED_GRID / "verdicts.csv")["claim"].iloc[0]
    pages = {}
    for size in ("fast", "full"):
        run = tmp_path / size
        (run / "09_comparison").mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(
            {"size": size, "notebooks": {"09_comparison": {"status": "ok", "seconds": 1.0}}}))
        pages[size] = write_report(run, render_notebooks=False).read_text()
    assert "shipped, not computed in this run" in pages["fast"] and html.escape(claim) in pages["fast"]
    assert "shipped" not in pages["full"]  # a full-size run shows its own grid only
