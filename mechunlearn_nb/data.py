"""The vendored datasets, read and validated.

Every loader returns a pandas DataFrame (or a list of paragraphs for general
text) whose columns and types have been checked; a broken or missing file
raises :class:`DataError` naming the file and what is wrong with it. Origins
and licences are in ``data/README.md``.

- ``sports_facts.csv`` — 1,559 athletes and their sport (football, baseball,
  basketball): the Sports Facts task of the paper.
- ``counterfact.jsonl.gz`` — the 21,919 CounterFact rewrites (prompt, subject,
  true and new target), without prompt lists.
- ``counterfact_prompts_subset.jsonl.gz`` — 2,715 of them with paraphrase and
  neighborhood prompts.
- ``counterfact_mcq.csv`` — multiple-choice questions for CounterFact facts.
- ``general_text.txt`` (WikiText-2) / ``general_text_pd.txt`` (Pride and
  Prejudice) — text for the language-modelling side-effect loss.
- ``mmlu/test/*.csv`` — MMLU, for side effects on general knowledge.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

import pandas as pd

SPORTS = ("football", "baseball", "basketball")


class DataError(ValueError):
    """A vendored data file is missing or does not have the expected shape."""


def data_dir() -> Path:
    """``$MECHUNLEARN_DATA`` or the repository's ``data/`` folder."""
    env = os.environ.get("MECHUNLEARN_DATA")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "data"
    if not path.is_dir():
        raise DataError(
            f"Data folder {path} not found. Fix: install the package from its repository "
            "(pip install -e .) so that data/ sits beside it, or set MECHUNLEARN_DATA to the folder."
        )
    return path


def _path(name: str) -> Path:
    path = data_dir() / name
    if not path.exists():
        raise DataError(f"{path}: file missing from the data folder. Fix: restore it from the repository (git checkout -- data/).")
    return path


def _check_columns(df: pd.DataFrame, path: Path, columns: dict[str, str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {list(columns)}, found {list(df.columns)}.")
    for col, kind in columns.items():
        if df[col].isna().any():
            rows = df.index[df[col].isna()].tolist()[:5]
            raise DataError(f"{path}: column {col!r} has empty values (rows {rows}).")
        if kind == "str":
            df[col] = df[col].astype(str)
            if (df[col].str.strip() == "").any():
                raise DataError(f"{path}: column {col!r} has blank strings.")
        elif kind == "int":
            try:
                df[col] = df[col].astype("int64")
            except (TypeError, ValueError) as err:
                raise DataError(f"{path}: column {col!r} must hold integers ({err}).") from err
    return df


@functools.cache
def _sports(path: str) -> pd.DataFrame:
    p = Path(path)
    df = _check_columns(pd.read_csv(p), p, {"athlete": "str", "sport": "str"})
    bad = sorted(set(df["sport"]) - set(SPORTS))
    if bad:
        raise DataError(f"{p}: unknown sport(s) {bad}; expected one of {list(SPORTS)}.")
    if df["athlete"].duplicated().any():
        raise DataError(f"{p}: duplicated athletes {df['athlete'][df['athlete'].duplicated()].tolist()[:5]}.")
    return df.reset_index(drop=True)


def load_sports(path: str | Path | None = None) -> pd.DataFrame:
    """Sports Facts: columns ``athlete, sport`` (1,559 rows)."""
    return _sports(str(path or _path("sports_facts.csv"))).copy()


def _read_jsonl_gz(path: Path) -> list[dict]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable gzip JSON-lines file ({err}).") from err


def _flatten_counterfact(records: list[dict], path: Path) -> pd.DataFrame:
    rows = []
    for i, r in enumerate(records):
        try:
            rw = r["requested_rewrite"]
            row = dict(case_id=int(r["case_id"]), prompt=rw["prompt"], subject=rw["subject"],
                       relation_id=rw["relation_id"], target_true=rw["target_true"]["str"],
                       target_new=rw["target_new"]["str"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: record {i} lacks field {err} (expected case_id and requested_rewrite "
                            "{prompt, subject, relation_id, target_true.str, target_new.str}).") from err
        if "{}" not in row["prompt"]:
            raise DataError(f"{path}: record {i} (case {row['case_id']}): prompt {row['prompt']!r} has no '{{}}' for the subject.")
        for key in ("paraphrase_prompts", "neighborhood_prompts"):
            if key in r:
                row[key] = list(r[key])
        rows.append(row)
    return pd.DataFrame(rows)


@functools.cache
def _counterfact(path: str) -> pd.DataFrame:
    p = Path(path)
    df = _flatten_counterfact(_read_jsonl_gz(p), p)
    return _check_columns(df, p, {"case_id": "int", "prompt": "str", "subject": "str", "relation_id": "str",
                                  "target_true": "str", "target_new": "str"})


def load_counterfact(with_prompts: bool = False) -> pd.DataFrame:
    """CounterFact rewrites: ``case_id, prompt, subject, relation_id, target_true, target_new``.

    Args:
        with_prompts: return only the 2,715 cases that come with ``paraphrase_prompts`` and
            ``neighborhood_prompts`` (list columns).
    """
    name = "counterfact_prompts_subset.jsonl.gz" if with_prompts else "counterfact.jsonl.gz"
    df = _counterfact(str(_path(name))).copy()
    if with_prompts:
        missing = [c for c in ("paraphrase_prompts", "neighborhood_prompts") if c not in df.columns]
        if missing:
            raise DataError(f"{_path(name)}: no {missing} in the records.")
    return df


@functools.cache
def _mcq(path: str) -> pd.DataFrame:
    p = Path(path)
    cols = {"question": "str", "target_true": "str", "false_1": "str", "false_2": "str", "false_3": "str", "prompt_id": "int"}
    return _check_columns(pd.read_csv(p), p, cols)


def load_counterfact_mcq() -> pd.DataFrame:
    """CounterFact multiple-choice questions: ``question, target_true, false_1..3, prompt_id`` (= case_id)."""
    return _mcq(str(_path("counterfact_mcq.csv"))).copy()


def load_general_text(source: str = "wikitext", exclude: list[str] | None = None, min_chars: int = 200) -> list[str]:
    """Paragraphs of general text for the language-modelling loss.

    Args:
        source: ``"wikitext"`` (WikiText-2, CC BY-SA) or ``"pd"`` (Pride and Prejudice, public domain).
        exclude: drop paragraphs mentioning any of these strings (e.g. the athletes being edited,
            so the retain text does not teach the fact back).
        min_chars: drop paragraphs shorter than this.
    """
    files = {"wikitext": "general_text.txt", "pd": "general_text_pd.txt"}
    if source not in files:
        raise DataError(f"Unknown general-text source {source!r}; choose one of {list(files)}.")
    p = _path(files[source])
    paras = [line.strip() for line in p.read_text(encoding="utf-8").split("\n") if len(line.strip()) >= min_chars]
    paras = drop_mentions(paras, exclude)
    if not paras:
        raise DataError(f"{p}: no paragraph left (min_chars={min_chars}, {len(exclude or [])} exclusions).")
    return paras


def drop_mentions(paragraphs: list[str], exclude: list[str] | None) -> list[str]:
    """The paragraphs that mention none of the strings in ``exclude`` (empty strings ignored)."""
    needles = [e for e in (exclude or []) if e]
    return [q for q in paragraphs if not any(n in q for n in needles)] if needles else list(paragraphs)


def load_mmlu(subjects: list[str] | None = None) -> pd.DataFrame:
    """MMLU test questions: ``subject, question, choice0..3, answer`` (answer 0–3 = A–D)."""
    folder = data_dir() / "mmlu" / "test"
    files = sorted(folder.glob("*_test.csv"))
    if not files:
        raise DataError(f"{folder}: no *_test.csv files.")
    available = {f.name[: -len("_test.csv")]: f for f in files}
    if subjects:
        unknown = sorted(set(subjects) - set(available))
        if unknown:
            raise DataError(f"Unknown MMLU subject(s) {unknown}; available: {sorted(available)[:8]}... ({len(available)} in all).")
        available = {s: available[s] for s in subjects}
    frames = []
    for subject, f in available.items():
        # Answers are text: "None", "NA" or "null" are literal choices here, not missing values
        # (pandas would read them as NaN), so only truly empty cells count as missing.
        df = _check_columns(pd.read_csv(f, keep_default_na=False, na_values=[""]), f, {"question": "str", "choice0": "str", "choice1": "str",
                                                "choice2": "str", "choice3": "str", "answer": "int"})
        df.insert(0, "subject", subject)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
