"""Checking parameters at the edges: a wrong type or range fails at once, naming the fix.

A seed given as ``"0"``, a threshold as ``"0.5"`` or a switch as ``"False"`` (a
non-empty string, hence true) otherwise travels far before anything notices:
seven frames deep in numpy, inside pandas, or not at all — ``FAST="False"``
silently runs the fast version. Public functions check their parameters here,
and a notebook checks its ``parameters`` cell in one call::

    from mechunlearn_nb import checks
    checks.parameters(globals(), FAST=bool, SEED=int, THRESHOLD=checks.Float(0, 1),
                      N_FACTS=checks.Int(min=1), MODEL=checks.Str(none=True))

Each failure names the parameter, the type or range expected, the value given
and the fix; every failing parameter is listed in one message. ``bool``,
``int``, ``float`` and ``str`` stand for :class:`Bool`, :class:`Int`,
:class:`Float` and :class:`Str` with no bounds. The rules:

- an ``int`` is a Python or numpy integer, never a bool, a float (``2.5`` or
  ``2.0``) or a string;
- a ``float`` is any real number (an int too), never a bool, a string or NaN;
- a ``bool`` is ``True`` or ``False`` (or a numpy bool) only: ``"False"``,
  ``0`` and ``1`` are refused, since each reads as something else somewhere;
- a string given where a number or a bool is expected gets the unquoted
  spelling as its fix (papermill: ``-p NAME value`` parses numbers and
  ``True``/``False``; ``-r`` passes raw strings).
"""

from __future__ import annotations

import math
import numbers
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


class ParameterError(TypeError, ValueError):
    """A parameter has the wrong type or is out of range.

    Both a ``TypeError`` and a ``ValueError``, so that code catching either keeps working.
    """


def _given(value) -> str:
    return f"{value!r} (of type {type(value).__name__})"


def _unquote_hint(name: str, value, want: str) -> str:
    """The fix for a number or a bool written as a string: the same value without quotes."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    parses = {"an int": (int,), "a float": (int, float)}.get(want, ())
    for parse in parses:
        try:
            parse(text)
        except ValueError:
            continue
        return f" Fix: write {name}={text} without quotes (with papermill: -p {name} {text}, not -r)."
    if want == "a bool" and text.lower() in ("true", "false"):
        return (f" Fix: write {name}={text.capitalize()} without quotes (a non-empty string counts as true, so "
                f"'False' would act as True; with papermill: -p {name} {text.capitalize()}, not -r).")
    return ""


@dataclass(frozen=True)
class Int:
    """An integer, optionally bounded (inclusive) — e.g. ``Int(min=1)`` for a count."""

    min: int | None = None
    max: int | None = None
    none: bool = False  # None is allowed (e.g. "no limit")

    def check(self, name: str, value):
        if value is None and self.none:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
            extra = _unquote_hint(name, value, "an int")
            if isinstance(value, (float, np.floating)) and math.isfinite(value):
                whole = {math.floor(value), math.ceil(value)}
                extra = " Fix: pass a whole number, e.g. " + " or ".join(f"{name}={w}" for w in sorted(whole)) + "."
            raise ParameterError(f"{name} must be an int{_bounds(self)}, got {_given(value)}.{extra or ' Fix: pass an integer.'}")
        value = int(value)
        _check_range(name, value, self.min, self.max, "an int")
        return value


@dataclass(frozen=True)
class Float:
    """A real number (an int is accepted), optionally within ``[min, max]``."""

    min: float | None = None
    max: float | None = None
    none: bool = False

    def check(self, name: str, value):
        if value is None and self.none:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
            extra = _unquote_hint(name, value, "a float")
            raise ParameterError(f"{name} must be a number{_bounds(self)}, got {_given(value)}.{extra or ' Fix: pass a number.'}")
        value = float(value)
        if math.isnan(value):
            raise ParameterError(f"{name} must be a number{_bounds(self)}, got NaN. Fix: pass a number.")
        _check_range(name, value, self.min, self.max, "a number")
        return value


@dataclass(frozen=True)
class Bool:
    """``True`` or ``False`` — never a string (``"False"`` is a true value) nor 0/1."""

    none: bool = False

    def check(self, name: str, value):
        if value is None and self.none:
            return None
        if not isinstance(value, (bool, np.bool_)):
            extra = _unquote_hint(name, value, "a bool") or f" Fix: write {name}=True or {name}=False."
            raise ParameterError(f"{name} must be True or False (a bool), got {_given(value)}.{extra}")
        return bool(value)


@dataclass(frozen=True)
class Str:
    """A string, optionally one of ``choices``."""

    choices: tuple[str, ...] | None = None
    none: bool = False

    def check(self, name: str, value):
        if value is None and self.none:
            return None
        if not isinstance(value, str):
            raise ParameterError(f"{name} must be a string, got {_given(value)}. Fix: pass a string"
                                 f"{' such as ' + repr(self.choices[0]) if self.choices else ''}.")
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"{name} must be one of {list(self.choices)}, got {value!r}. Fix: choose one of those.")
        return value


@dataclass(frozen=True)
class ListOf:
    """A list or tuple whose items each pass ``item`` (e.g. ``ListOf(Int(min=0))`` for seeds), or None when
    ``none``."""

    item: object
    min_len: int = 0
    none: bool = False

    def check(self, name: str, value):
        if value is None and self.none:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise ParameterError(f"{name} must be a list, got {_given(value)}. Fix: pass a list, e.g. {name}=[0, 1, 2].")
        if len(value) < self.min_len:
            raise ParameterError(f"{name} must hold at least {self.min_len} item(s), got {len(value)}. Fix: add items.")
        spec = _spec(self.item)
        return [spec.check(f"{name}[{i}]", v) for i, v in enumerate(value)]


@dataclass(frozen=True)
class Dict:
    """A dict (e.g. ``EDIT_OVERRIDES = {"steps": 40}``), or None when ``none``."""

    none: bool = False

    def check(self, name: str, value):
        if isinstance(value, Mapping) or (value is None and self.none):
            return None if value is None else dict(value)
        raise ParameterError(f"{name} must be a dict{' or None' if self.none else ''}, got {_given(value)}. "
                             f"Fix: pass a dict, e.g. {name}={{}} (papermill: -y '{name}: {{}}').")


def _bounds(spec) -> str:
    lo, hi = spec.min, spec.max
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" ≥ {lo}"
    if hi is not None:
        return f" ≤ {hi}"
    return ""


def _check_range(name: str, value, lo, hi, kind: str) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (f" ≥ {lo}" if lo is not None else f" ≤ {hi}")
        raise ParameterError(f"{name} must be {kind}{bounds}, got {value!r}. Fix: pass a value{bounds}.")


_PLAIN = {bool: Bool(), int: Int(), float: Float(), str: Str()}


def _spec(spec):
    if spec in _PLAIN:
        return _PLAIN[spec]
    if not hasattr(spec, "check"):
        raise TypeError(f"Not a parameter spec: {spec!r}. Use bool, int, float, str, Int(...), Float(...), Str(...), "
                        "Bool(), ListOf(...).")
    return spec


# short helpers for function bodies: value = check_int("steps", steps, min=1)

def check_int(name: str, value, min: int | None = None, max: int | None = None, none: bool = False):
    """``value`` as an int, or a :class:`ParameterError` naming ``name``, the range and the fix."""
    return Int(min, max, none).check(name, value)


def check_float(name: str, value, min: float | None = None, max: float | None = None, none: bool = False):
    """``value`` as a float (ints accepted), or a :class:`ParameterError`."""
    return Float(min, max, none).check(name, value)


def check_bool(name: str, value, none: bool = False):
    """``value`` if it is ``True``/``False``; ``"False"`` (a string) raises."""
    return Bool(none).check(name, value)


def check_str(name: str, value, choices: Sequence[str] | None = None, none: bool = False):
    """``value`` if it is a string (one of ``choices`` when given)."""
    return Str(tuple(choices) if choices is not None else None, none).check(name, value)


def parameters(values: Mapping, **spec) -> dict:
    """Check a notebook's parameters in one call; returns the checked values.

    Args:
        values: where the parameters live: ``globals()`` in a notebook, ``locals()`` in a function,
            or any dict.
        **spec: parameter name → ``bool``, ``int``, ``float``, ``str`` or a spec (:class:`Int`,
            :class:`Float`, :class:`Bool`, :class:`Str`, :class:`ListOf`).

    Returns:
        name → value (ints as ``int``, numbers as ``float``).

    Raises:
        ParameterError: listing every parameter that is missing, of the wrong type or out of range,
            each with its fix.

    Example::

        checks.parameters(globals(), FAST=bool, SEED=int, THRESHOLD=checks.Float(0, 1))
    """
    out, errors = {}, []
    for name, s in spec.items():
        if name not in values:
            errors.append(f"{name} is not defined. Fix: define it in the parameters cell.")
            continue
        try:
            out[name] = _spec(s).check(name, values[name])
        except ParameterError as err:
            errors.append(str(err))
    if errors:
        head = "A parameter is wrong: " if len(errors) == 1 else f"{len(errors)} parameters are wrong:\n- "
        raise ParameterError(head + "\n- ".join(errors))
    return out


def template_fields(template: str) -> list[str]:
    """The named fields of a ``str.format`` template (``"{athlete} plays"`` → ``["athlete"]``; ``"{}"`` → ``[""]``)."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:  # an unmatched brace
        raise ParameterError(f"Template {template!r} is not a valid format string ({err}). "
                             "Fix: write literal braces as '{{' and '}}'.") from err


def check_template(name: str, template, fields: Sequence[str]) -> str:
    """A prompt template that uses only ``fields`` (and at least one of them).

    Raises:
        ParameterError: naming the unknown field(s) and the fields allowed, or saying that the
            template has no field at all (every prompt would be the same text).
    """
    check_str(name, template)
    used = template_fields(template)
    unknown = sorted({f for f in used if f not in fields})
    allowed = ", ".join("{" + f + "}" for f in fields)
    if unknown:
        shown = ", ".join("{" + f + "}" for f in unknown)
        raise ParameterError(f"{name} {template!r} uses the field(s) {shown}; the fields allowed are {allowed}. "
                             f"Fix: write the template with {allowed} (double literal braces: '{{{{').")
    if not used:
        raise ParameterError(f"{name} {template!r} has no field: every prompt would be the same text. "
                             f"Fix: put {allowed} where the subject goes.")
    return template
