"""Token positions in a fact prompt: one vocabulary for tracing, patching and probing.

In ``"Fact: Tiger Woods plays the sport of golf\\nFact: LeBron James plays the sport of"``
the fact is looked up at the subject (``" LeBron James"``) and assembled into the
answer at the prompt's *last* token (``" of"``). Every module that reads or
restores activations names positions the same way:

- **the subject span** is ``(start, end)`` with ``end`` exclusive, as Python
  slices are: ``ids[start:end]`` are the subject's tokens (BOS counts as
  position 0), ``end - 1`` is the last subject token;
- **position kinds** (a position may have several: a one-token subject is both
  ``first_subject`` and ``last_subject``): ``before`` the subject,
  ``first_subject``, ``middle_subject``, ``last_subject``, ``later`` (after the
  subject, before the last token), ``last`` (the prompt's last token), and
  ``all`` (a head restored or attributed at every position at once).

Earlier versions called the last token ``"final"`` in probe tables; that name is
still read (:func:`canonical`) so that saved tables and settings keep working.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .scoring import encode_prompts

LAST = "last"
FIRST_SUBJECT, MIDDLE_SUBJECT, LAST_SUBJECT = "first_subject", "middle_subject", "last_subject"
#: the position kinds traced and patched by default, in the order plots show them
POSITION_KINDS = (FIRST_SUBJECT, LAST_SUBJECT, "later", LAST)
#: every position kind, in the order tables and plots sort them
ALL_KINDS = ("before", FIRST_SUBJECT, MIDDLE_SUBJECT, LAST_SUBJECT, "later", LAST, "all")
#: names earlier versions wrote, and the kind each means now
OLD_NAMES = {"final": LAST}


class SubjectNotFoundError(ValueError):
    """The subject's tokens could not be located in the prompt."""


def canonical(kind: str) -> str:
    """The current name of a position kind: ``"final"`` (an earlier name of the last token) → ``"last"``."""
    return OLD_NAMES.get(kind, kind)


def subject_tokens(model, subject: str) -> list[int]:
    """Token ids of a subject as it appears inside a prompt (with a leading space)."""
    return model.tokenizer(" " + subject.strip(), add_special_tokens=False)["input_ids"]


def subject_span(model, prompt_ids: Sequence[int], subject: str, prompt: str | None = None) -> tuple[int, int]:
    """``(start, end)`` of the subject's tokens in a tokenised prompt (``end`` exclusive).

    The subject is tokenised on its own, with a leading space and then without, and the
    *last* occurrence of that token sequence in the prompt is returned (the one-shot
    example comes first in the fact prompt). When the tokenizer merges the subject with its
    neighbours differently in context and the prompt's text is given, the span falls back
    to the tokens whose characters overlap the subject's characters.

    Args:
        prompt_ids: the prompt's token ids (with BOS, as :func:`.scoring.encode_prompts` gives them).
        subject: the subject, as written in the prompt.
        prompt: the prompt's text, for the character-offset fallback (without it, a subject
            tokenised differently in context is an error).

    Raises:
        SubjectNotFoundError: the subject is not in the prompt, or no token covers it.
    """
    tok = model.tokenizer
    ids = list(prompt_ids)
    tried = []
    for variant in (" " + subject.strip(), subject.strip()):
        sub = tok(variant, add_special_tokens=False)["input_ids"]
        tried.append(tok.convert_ids_to_tokens(sub))
        for start in range(len(ids) - len(sub), -1, -1):
            if sub and ids[start : start + len(sub)] == sub:
                return start, start + len(sub)
    if prompt is None:
        raise SubjectNotFoundError(
            f"Subject {subject!r} not found in the prompt's tokens (tried {tried}; prompt tokens "
            f"{tok.convert_ids_to_tokens(ids)}). The subject must be tokenised the same way alone as inside "
            "the prompt. Fix: put the subject after a space in the prompt (as in 'Fact: {athlete} plays ...'), "
            "or pass the exact subject string that occurs in the prompt."
        )
    char_start = prompt.rfind(subject.strip())
    if char_start < 0 or not subject.strip():
        raise SubjectNotFoundError(
            f"Subject {subject!r} does not occur in the prompt {prompt!r}. "
            "Fix: pass the subject exactly as it is written in the prompt (same spelling and case)."
        )
    char_end = char_start + len(subject.strip())
    try:
        # offsets of the text's own tokens, shifted by what precedes them in prompt_ids (BOS, when the model's
        # tokenizer adds it: scoring.prepends_bos)
        own = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        offsets = [(0, 0)] * (len(prompt_ids) - len(own)) + list(own)
    except (NotImplementedError, TypeError, ValueError) as err:
        raise SubjectNotFoundError(
            f"Subject {subject!r} is in the prompt but its tokens differ in context and this tokenizer "
            "gives no character offsets to match them. Fix: use a fast tokenizer, or pass positions yourself."
        ) from err
    covered = [i for i, (a, b) in enumerate(offsets) if b > a and a < char_end and b > char_start]
    if not covered:
        raise SubjectNotFoundError(f"No token of the prompt {prompt!r} covers the subject {subject!r}.")
    return covered[0], covered[-1] + 1


def position_kind(pos: int, start: int, end: int, length: int) -> list[str]:
    """The kinds of a position, given the subject span ``(start, end)`` (end exclusive) and the prompt's length.

    A one-token subject is both ``first_subject`` and ``last_subject``.
    """
    kinds = []
    if pos < start:
        kinds.append("before")
    if pos == start:
        kinds.append(FIRST_SUBJECT)
    if start < pos < end - 1:
        kinds.append(MIDDLE_SUBJECT)
    if pos == end - 1:
        kinds.append(LAST_SUBJECT)
    if end <= pos < length - 1:
        kinds.append("later")
    if pos == length - 1:
        kinds.append(LAST)
    return kinds


def fact_positions(model, prompts: Sequence[str], subjects: Sequence[str]) -> pd.DataFrame:
    """Token positions of each prompt: ``first_subject``, ``last_subject``, ``last`` (and ``n_tokens``).

    Args:
        prompts: the prompts (BOS is counted as position 0).
        subjects: the subject of each prompt, as written in it.

    Returns:
        One row per prompt, integer columns ``first_subject, last_subject, last, n_tokens``.
    """
    if len(prompts) != len(subjects):
        raise ValueError(f"{len(prompts)} prompts but {len(subjects)} subjects: give one subject per prompt.")
    rows = []
    for prompt, subject, ids in zip(prompts, subjects, encode_prompts(model, list(prompts))):
        start, end = subject_span(model, ids, subject, prompt=prompt)
        rows.append({FIRST_SUBJECT: start, LAST_SUBJECT: end - 1, LAST: len(ids) - 1, "n_tokens": len(ids)})
    return pd.DataFrame(rows)
