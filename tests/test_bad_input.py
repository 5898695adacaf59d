"""Bad input and faults: each case gets a message that names the problem and the fix.

Tiny-model and pure-Python tests run in seconds. The model-cache tests work in a
temporary ``MECHUNLEARN_CACHE`` (never the user's cache); the concurrent-build
test builds the embedded model for real and is marked ``slow``.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from mechunlearn_nb import data, editing, models


# ---------------------------------------------------------------------------
# Deltas: several on one model
# ---------------------------------------------------------------------------


def _checksum(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(models.named_parameters(model).items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _delta(model, weights: list[str], seed: int, name: str) -> editing.Delta:
    params = models.named_parameters(model)
    g = torch.Generator().manual_seed(seed)
    tensors = {n: torch.randn(params[n].shape, generator=g) * 0.01 for n in weights}
    return editing.Delta(tensors, {n: None for n in weights}, models.model_name(model), name=name)


MLP1 = ["model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"]
ATTN0 = ["model.layers.0.self_attn.q_proj.weight"]


def test_revert_out_of_order_raises_naming_the_order_and_right_order_restores(tiny):
    base = _checksum(tiny)
    a = _delta(tiny, MLP1 + ATTN0, 1, "A")
    b = _delta(tiny, MLP1[:1], 2, "B")  # shares an MLP weight with A
    a.apply(tiny)
    b.apply(tiny)
    assert editing.applied_deltas(tiny) == [a, b]
    with pytest.raises(RuntimeError, match=r"revert 'B' first \(applied 'A' then 'B'") as err:
        a.revert(tiny)
    assert "revert_all" in str(err.value)
    # the refused revert changed nothing: the ledger and the weights are as they were
    assert editing.applied_deltas(tiny) == [a, b]
    b.revert(tiny)
    a.revert(tiny)
    assert _checksum(tiny) == base
    assert editing.applied_deltas(tiny) == []


def test_disjoint_deltas_revert_in_any_order_exactly(tiny):
    base = _checksum(tiny)
    a = _delta(tiny, ATTN0, 3, "A")
    b = _delta(tiny, MLP1, 4, "B")
    a.apply(tiny)
    b.apply(tiny)
    a.revert(tiny)  # no weight in common with B: exact
    b.revert(tiny)
    assert _checksum(tiny) == base


def test_revert_all_restores_base(tiny):
    base = _checksum(tiny)
    for i in range(3):
        _delta(tiny, MLP1, 10 + i, f"D{i}").apply(tiny)
    assert _checksum(tiny) != base
    editing.revert_all(tiny)
    assert _checksum(tiny) == base and editing.applied_deltas(tiny) == []


def test_evaluate_refuses_a_model_with_another_delta_applied(tiny):
    from mechunlearn_nb import evaluation

    other = _delta(tiny, MLP1, 5, "other edit")
    with other.applied(tiny):
        with pytest.raises(RuntimeError, match=r"evaluate\(\) needs the base model.*'other edit'.*Fix: revert"):
            evaluation.evaluate(tiny, task=_FakeTask())
    assert editing.applied_deltas(tiny) == []


class _FakeTask:
    """Only what evaluate() reads before its checks."""

    formats = ("completion",)
    dataset = "sports"
    name = "fake"


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def test_load_mmlu_loads_every_shipped_subject_keeping_literal_none():
    df = data.load_mmlu()
    shipped = {f.name[: -len("_test.csv")] for f in (data.data_dir() / "mmlu" / "test").glob("*_test.csv")}
    assert set(df["subject"]) == shipped and len(shipped) == 57
    ccs = df[df["subject"] == "college_computer_science"].reset_index(drop=True)
    # rows 10 and 94 have the literal answer text "None" (read as missing before)
    assert (ccs.loc[[10, 94], ["choice0", "choice1", "choice2", "choice3"]] == "None").any(axis=1).all()
