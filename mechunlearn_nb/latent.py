"""Latent knowledge after an edit: is the true sport still written inside?

An edit can change what the model *says* while the old fact stays readable in
its residual stream, one linear read-out away from coming back. Guo et al.
(2024) check this with probes: train a linear probe per layer to read the sport
off the residual stream of athletes the edit did **not** touch (the maintain
set), then apply it to the **edited** athletes and count, layer by layer, how
often it reads

- the **ground truth** (the sport the athlete really plays): the old fact is
  still represented at that layer;
- the **edit label** (the sport the edit injected): the new fact has replaced
  it there.

The read-out is taken at the last token of the fact prompt (``" of"`` in
``"... LeBron James plays the sport of"``), where the answer is assembled; the
last subject token can be probed too (``position="last_subject"``). Layer ``i``
is the residual stream after ``i`` blocks (0: embeddings), as in
:mod:`.probing`.

What to expect. Before the edit the probes read the ground truth from the layer
where extraction has happened on. An edit made in the fact-lookup MLPs changes
the subject's representation *before* extraction, so after it the probes read
the edit label from the same layers and the ground truth fades everywhere. An
edit made in late layers (output tracing, attention near the output) can leave
the ground truth readable in the middle layers and only overwrite it at the
end — knowledge that a relearning attack can bring back.

Probes are refitted on the model that is probed (the edited model for
``"after"``, the base model for ``"before"``), so they read each model in its
own representation; ``probes_from="base"`` keeps the base model's probes
instead. A probe is only as good as its held-out accuracy on maintain
athletes, which is reported per layer next to the fractions.

:func:`fractions_by_edit` condenses a table to one row per edit; :func:`.plots.plot_latent`
draws it layer by layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .editing import require_base_model
from .positions import LAST, canonical
from .probing import apply_probes, fact_residuals, split_indices, train_probes

COLUMNS = ["task", "localization", "seed", "stage", "position", "layer", "frac_true", "frac_edit", "maintain_acc",
           "n_edited", "n_probe_train"]


def default_probe_facts(task) -> pd.DataFrame:
    """The athletes probes train on by default: the task's maintain sets, without any edited athlete."""
    facts = pd.concat([task.maintain_train, task.maintain_eval], ignore_index=True)
    return facts[~facts["athlete"].isin(set(task.forget["athlete"]))].reset_index(drop=True)


def missing_probe_sports(task, probe_facts: pd.DataFrame | None = None) -> list[str]:
    """The edited athletes' true sports that no probe-training athlete has (a probe could never read them).

    A forget-one-sport task (``tasks.forget_sport``) edits every known player of that sport, so its maintain
    sets hold none: ``["basketball"]`` for "forget basketball"; an athlete-editing task gives ``[]``.
    """
    probe_facts = default_probe_facts(task) if probe_facts is None else probe_facts
    return sorted(set(task.forget["true_answer"]) - set(probe_facts["sport"]))


def _check_task(task, probe_facts: pd.DataFrame) -> None:
    if task.dataset != "sports":
        raise ValueError(f"Latent probes read the sport of athletes; task {task.name!r} is a {task.dataset} task. "
                         "Fix: use a sports task (tasks.edit_athletes or tasks.forget_sport).")
    if len(task.forget) == 0:
        raise ValueError(f"Task {task.name!r} has no edited facts to probe.")
    classes = set(probe_facts["sport"])
    missing = missing_probe_sports(task, probe_facts)
    if missing:
        raise ValueError(f"The probe training facts contain no athlete of sport(s) {missing}, so a probe could never read "
                         "the edited athletes' ground truth. (A forget-one-sport task keeps no player of that sport in "
                         "its maintain set.) Fix: use tasks.edit_athletes, or pass probe_facts that include other known "
                         "athletes of those sports.")
    if len(classes) < 2:
        raise ValueError("Probes need athletes of at least two sports in the probe training facts.")


def _stage_rows(model, task, probe_facts, train, test, position, C, seed, batch_size, progress, probes=None):
    """Residuals of the probe facts and the edited athletes on the model as it is now; fractions per layer."""
    y = probe_facts["sport"].to_numpy()
    X_m = fact_residuals(model, probe_facts, positions=(position,), batch_size=batch_size, progress=progress)[position]
    X_f = fact_residuals(model, task.forget, positions=(position,), batch_size=batch_size, progress=progress)[position]
    if probes is None:
        probes = train_probes(X_m[train], y[train], C=C, seed=seed)
    pred = apply_probes(probes, X_f)
    true = task.forget["true_answer"].to_numpy()[:, None]
    new = task.forget["new_answer"].astype(object).to_numpy()[:, None]
    held = apply_probes(probes, X_m[test]) == y[test][:, None]
    table = pd.DataFrame({"layer": np.arange(pred.shape[1]), "frac_true": (pred == true).mean(0),
                          "frac_edit": (pred == new).mean(0), "maintain_acc": held.mean(0)})
    return table.assign(position=position, n_edited=len(true), n_probe_train=len(train)), probes


def latent_knowledge(model, task, results: dict, *, position: str = LAST, probe_facts: pd.DataFrame | None = None,
                     probes_from: str = "edited", test_size: float = 0.25, C: float = 0.1, seed: int = 0,
                     batch_size: int = 32, progress: bool = True, base: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per layer, how often probes trained on maintain athletes read the edited athletes' true sport and edit label.

    Args:
        model: the base model (each edit's delta is applied while it is probed, then reverted).
        task: a sports task (its forget set is the edited athletes, with ``true_answer`` and ``new_answer``).
        results: ``{name: EditResult}``; the names label the rows (``localization``).
        position: ``"last"`` (the prompt's last token; ``"final"``, its earlier name, is read the same) or
            ``"last_subject"`` (:mod:`.positions`).
        probe_facts: known athletes to train the probes on (default: the task's maintain sets).
        probes_from: ``"edited"`` (refit on each edited model) or ``"base"`` (fit once on the base model).
        test_size: share of ``probe_facts`` held out to measure the probes (``maintain_acc``).
        C: the probes' inverse L2 strength.
        seed: split and solver seed.
        base: the ``"before"`` rows of an earlier call on the same task, position and seed, reused instead of
            probing the base model again (e.g. one edit per call, as the comparison grid does; only with
            ``probes_from="edited"``, which refits the probes on every model anyway).

    Returns:
        Tidy ``task, localization, seed, stage, position, layer, frac_true, frac_edit, maintain_acc, n_edited,
        n_probe_train``: stage ``"before"`` (localization ``"base"``, the unedited model) and ``"after"``
        (one block per edit). ``frac_true + frac_edit <= 1`` at every layer (the two labels differ).
    """
    position = canonical(position)
    if probes_from not in ("edited", "base"):
        raise ValueError(f"probes_from must be 'edited' or 'base', got {probes_from!r}.")
    if probe_facts is None:
        probe_facts = default_probe_facts(task)
    else:
        probe_facts = probe_facts[~probe_facts["athlete"].isin(set(task.forget["athlete"]))].reset_index(drop=True)
    _check_task(task, probe_facts)
    if (task.forget["true_answer"] == task.forget["new_answer"]).any():
        raise ValueError("Some edited athletes' new answer equals their true answer; nothing was edited for them.")
    train, test = split_indices(probe_facts["sport"].to_numpy(), test_size=test_size, seed=seed)
    for res in results.values():
        if res.delta.is_applied(model):
            raise RuntimeError("An edit's delta is already applied to the model; latent_knowledge applies each itself. "
                               "Fix: revert it first.")
    require_base_model(model, "latent_knowledge()")
    args = (task, probe_facts, train, test, position, C, seed, batch_size, False)
    frames = []
    if base is not None:
        if probes_from == "base":
            raise ValueError("base= reuses the base model's read-outs, not its probes; with probes_from='base' "
                             "the probes must be fitted again. Fix: drop base= or use probes_from='edited'.")
        before = base[base["stage"] == "before"]
        if before.empty or set(before["task"]) != {task.name} or set(before["position"].map(canonical)) != {position} \
                or set(before["seed"]) != {seed}:
            raise ValueError(f"base= must hold the 'before' rows of task {task.name!r}, position {position!r}, seed "
                             f"{seed} (from an earlier latent_knowledge call). Fix: pass that call's table, or drop base=.")
        frames.append(before.drop(columns=["task", "seed"]).assign(position=position))
    stages = tqdm([*(["base"] if base is None else []), *results], desc="latent probes", disable=not progress,
                  leave=False)
    base_probes = None
    for name in stages:
        if name == "base":
            table, base_probes = _stage_rows(model, *args)
            frames.append(table.assign(localization="base", stage="before"))
            continue
        with results[name].applied(model):
            table, _ = _stage_rows(model, *args, probes=base_probes if probes_from == "base" else None)
        frames.append(table.assign(localization=name, stage="after"))
    out = pd.concat(frames, ignore_index=True).assign(task=task.name, seed=seed)
    out.attrs.update(probes_from=probes_from, position=position, n_probe_facts=len(probe_facts))
    return out.reindex(columns=COLUMNS)


def long_form(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (localization, stage, layer, read-out): ``prediction`` is ``"ground truth"`` or ``"edit label"``.

    The ``"before"`` rows (the base model) are repeated under each edit's name, so that every edit's
    panel can show them as its reference.
    """
    names = [n for n in table["localization"].unique() if n != "base"]
    base = table[table["stage"] == "before"]
    parts = [table[table["stage"] == "after"]] + [base.assign(localization=n) for n in names]
    wide = pd.concat(parts, ignore_index=True)
    long = wide.melt(id_vars=["localization", "stage", "position", "layer"], value_vars=["frac_true", "frac_edit"],
                     var_name="prediction", value_name="fraction")
    long["prediction"] = long["prediction"].map({"frac_true": "ground truth", "frac_edit": "edit label"})
    return long


def fractions_by_edit(table: pd.DataFrame, last_k: int | None = None, window: tuple[int, int] | None = None) -> pd.DataFrame:
    """Per edit: the largest fraction of ground-truth read-outs over the layers, and at the last layer.

    Args:
        last_k: also report the mean ground-truth fraction over the last ``k`` layers (``late_frac_true``).
        window: also report the mean fractions over the layers ``window[0] .. window[1]`` (inclusive):
            ``window_frac_true``, ``window_frac_edit`` — e.g. the layers between the fact-lookup MLPs and
            the late layers, where an edit of the read-out can leave the old fact in place.

    Returns:
        ``localization, stage, max_frac_true, final_frac_true, max_frac_edit, final_frac_edit`` (+ ``late_frac_true``,
        ``window_frac_true``, ``window_frac_edit``).
    """
    rows = []
    for (loc, stage), g in table.groupby(["localization", "stage"], sort=False):
        g = g.sort_values("layer")
        row = dict(localization=loc, stage=stage, max_frac_true=float(g["frac_true"].max()),
                   final_frac_true=float(g["frac_true"].iloc[-1]), max_frac_edit=float(g["frac_edit"].max()),
                   final_frac_edit=float(g["frac_edit"].iloc[-1]))
        if last_k:
            row["late_frac_true"] = float(g["frac_true"].iloc[-last_k:].mean())
        if window is not None:
            inside = g[g["layer"].between(*window)]
            if inside.empty:
                raise ValueError(f"No layer in window {window} (layers {int(g['layer'].min())}-{int(g['layer'].max())}).")
            row["window_frac_true"] = float(inside["frac_true"].mean())
            row["window_frac_edit"] = float(inside["frac_edit"].mean())
        rows.append(row)
    return pd.DataFrame(rows)
