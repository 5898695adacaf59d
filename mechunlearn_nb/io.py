"""Writing results: one atomic writer, JSON files, the notebooks' ``metrics.json`` and its keys.

A partially written file never replaces a good one: everything is written to a
temporary path in the same folder and renamed over the target when complete
(:func:`atomic_path`); a failed write leaves the old file and no temporary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Write a file or a folder under a temporary name beside ``path``; rename it over ``path`` when complete.

    ``with atomic_path(target) as tmp: ...`` — write ``tmp`` (a file, or a folder you create);
    when the block ends without an error, ``tmp`` takes ``path``'s place (an existing folder is
    swapped out and removed only after the new one is in). On an error, or if the block wrote
    nothing, ``tmp`` is removed and ``path`` is left as it was.

    Args:
        path: the file or folder to write.
        replace: when ``False`` and ``path`` already exists when the block ends (another process
            finished first), keep that one and drop ours.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            return
        if path.exists() and not replace:
            return
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            tmp.replace(path)
    finally:
        _remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, as UTF-8; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_json(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(obj, indent=2, default=_default))


def write_metrics(output_dir: str | os.PathLike, metrics: dict) -> Path:
    """Write a notebook's ``metrics.json`` into its output folder (the tests read it)."""
    return save_json(metrics, Path(output_dir) / "metrics.json")


def output_dir(path: str | os.PathLike) -> Path:
    """Create (if needed) and return a notebook's output folder."""
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(*parts, sep: str = "-") -> str:
    """A file- and metric-name-safe key: each part lower-cased, every run of other characters than
    ``a-z0-9`` replaced by ``sep``, the parts joined by ``"__"``.

    ``slug("OT (causal tracing)", 0)`` → ``"ot-causal-tracing__0"`` (the grid's cell files and metric keys);
    ``slug("OT (causal tracing)", sep="_")`` → ``"ot_causal_tracing"`` (the notebooks' metric keys,
    e.g. ``f"edit_acc_{slug(name, sep='_')}"``).
    """
    return "__".join(re.sub(r"[^a-z0-9]+", sep, str(p).lower()).strip(sep) for p in parts)
