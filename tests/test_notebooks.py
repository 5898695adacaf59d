"""Execute every notebook with papermill at small size and check its metrics.json.

A new notebook in notebooks/ is picked up automatically; its expected values live in
mechunlearn_nb/expected.toml.
"""

import json

import pytest

from mechunlearn_nb import expected, runner

NOTEBOOKS = runner.list_notebooks()


def test_notebooks_committed_clean():
    import nbformat

    for nb_path in NOTEBOOKS:
        nb = nbformat.read(nb_path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{nb_path.name}: needs exactly one cell tagged 'parameters'"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{nb_path.name} has outputs"
        src = "\n".join(c.source for c in nb.cells)
        assert "sys.path" not in src and "%pip" not in src and "!pip" not in src
        assert "metrics" in src and "OUTPUT_DIR" in tagged[0].source and "FAST" in tagged[0].source


#: figures a notebook saves beside its metrics (what a results folder's README shows)
FIGURES = {"09_comparison": ("comparison_bars.png", "relearning_curves.png", "claims.png")}


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_meets_expected(nb_path, tmp_path):
    # a cell that runs longer than 30 min fails the test instead of holding CI
    metrics = runner.run_notebook(nb_path, tmp_path, {"FAST": True, "MODEL_NAME": None}, timeout=1800)
    assert metrics, f"{nb_path.name} wrote no metrics.json"
    assert (tmp_path / nb_path.stem / "metrics.json").exists()
    for name in FIGURES.get(nb_path.stem, ()):
        assert (tmp_path / nb_path.stem / name).stat().st_size > 0, f"{nb_path.name} did not save {name}"
    checks = expected.check(nb_path.stem, metrics, "fast")
    assert len(checks), f"{nb_path.stem}: no 'fast' expected values in mechunlearn_nb/expected.toml"
    failed = checks[~checks["ok"]]
    assert failed.empty, f"{nb_path.stem} outside expected ranges:\n{failed.to_string()}\nmetrics: {json.dumps(metrics)[:2000]}"
