"""Writing results: atomic JSON files and the notebooks' ``metrics.json``.

A partially written file never replaces a good one: everything is written to a
temporary file in the same folder and renamed over the target.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np


def _default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_json(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_default))
    tmp.replace(path)
    return path


def write_metrics(output_dir: str | os.PathLike, metrics: dict) -> Path:
    """Write a notebook's ``metrics.json`` into its output folder (the tests read it)."""
    return save_json(metrics, Path(output_dir) / "metrics.json")


def output_dir(path: str | os.PathLike) -> Path:
    """Create (if needed) and return a notebook's output folder."""
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def metric_key(name: str) -> str:
    """A localization or edit name as part of a ``metrics.json`` key: ``"OT (causal tracing)"`` → ``"ot_causal_tracing"``."""
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_").replace("__", "_")


def slug(*parts) -> str:
    """A file- and metric-name-safe key: ``slug("OT (causal tracing)", 0)`` → ``"ot-causal-tracing__0"``."""
    return "__".join(re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") for p in parts)
