"""The shared training loop (train.py) on the tiny model: seeds, frozen weights, restores, accuracy."""

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn_nb import data, models, tasks, train


@pytest.fixture(scope="module")
def task(tiny):
    known = data.load_sports().head(200)  # the tiny random model knows nothing: treat these as known
    return tasks.forget_sport(tiny, "basketball", "golf", known=known, max_forget=4, max_maintain=8)


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in models.named_parameters(model).items()}


def run(model, task, trainable: dict, seed: int, steps: int = 3, fail_at: int | None = None,
        precision: str = "float32") -> pd.DataFrame:
    """An injection with a maintain term and general text, training ``trainable`` in place."""
    rng = np.random.default_rng(seed)
    forget = train.tokenise_facts(model, task, "forget", need_new=True)
    maintain = train.tokenise_facts(model, task, "maintain_train")
    terms = [train.FactTerm("forget_loss", forget, train.Sampler(len(forget), 2, rng), train.inject_loss),
             train.FactTerm("maintain_loss", maintain, train.Sampler(len(maintain), 2, rng), train.maintain_loss, 0.5)]
    general = train.GeneralText(model, train.general_text("train", exclude=task.subjects), 16, 16, rng)

    def step_loss(step):
        if step == fail_at:
            raise KeyboardInterrupt("interrupted mid-training")
        return train.fact_step(model, terms, general)

    return train.train(trainable, step_loss, steps, 1e-2, schedule=train.cosine_schedule(1, steps), grad_clip=1.0,
                       evaluate=lambda step: {"acc": train.accuracy(model, forget)["acc_new"]}, eval_steps=(0, steps),
                       progress=False, precision=precision)


def test_same_seed_same_history_and_only_trainable_weights_move(tiny, task):
    before = weights(tiny)
    flags = {n: p.requires_grad for n, p in models.named_parameters(tiny).items()}
    params = {n: p for n, p in models.named_parameters(tiny).items() if ".layers.1.mlp." in n}
    assert params, "the tiny model has no layer-1 MLP weights"
    with train.restored(params) as originals, train.only_trainable(tiny, params):
        first = run(tiny, task, params, seed=0)
        moved = {n for n, p in models.named_parameters(tiny).items() if not torch.equal(p.detach(), before[n])}
        assert moved == set(params), f"weights outside the trainable set changed: {sorted(moved - set(params))[:3]}"
        assert all(torch.equal(originals[n], before[n]) for n in params)
    assert all(torch.equal(p.detach(), before[n]) for n, p in models.named_parameters(tiny).items()), "not restored"
    assert {n: p.requires_grad for n, p in models.named_parameters(tiny).items()} == flags
    with train.restored(params), train.only_trainable(tiny, params):
        again = run(tiny, task, params, seed=0)
    with train.restored(params), train.only_trainable(tiny, params):
        other = run(tiny, task, params, seed=1)
    keep = ["step", "lr", "loss", "forget_loss", "maintain_loss", "lm_loss", "grad_norm", "acc"]
    pd.testing.assert_frame_equal(first[keep], again[keep])
    assert not first["loss"].equals(other["loss"]), "another seed drew the same batches"
    assert list(first["step"]) == [0, 1, 2, 3] and first["acc"].notna().tolist() == [True, False, False, True]
    # warm-up of one step: the first step runs at learning rate 0, the second at the peak
    assert first["lr"].tolist()[1:3] == [0.0, 1e-2]


def test_weights_restored_after_an_error_inside_the_loop(tiny, task):
    before = weights(tiny)
    flags = {n: p.requires_grad for n, p in models.named_parameters(tiny).items()}
    params = {n: p for n, p in models.named_parameters(tiny).items() if ".layers.0.self_attn." in n}
    with pytest.raises(KeyboardInterrupt):
        with train.restored(params), train.only_trainable(tiny, params):
            run(tiny, task, params, seed=0, steps=3, fail_at=3)  # two steps have changed the weights by then
    assert all(torch.equal(p.detach(), before[n]) for n, p in models.named_parameters(tiny).items())
    assert {n: p.requires_grad for n, p in models.named_parameters(tiny).items()} == flags


def test_accuracy_counts_the_top_candidate(tiny, task):
    facts = train.tokenise_facts(tiny, task, "forget", need_new=True)
    acc = train.accuracy(tiny, facts)
    logp = train.last_token_logprobs(tiny, facts.ids)
    pred = logp.gather(1, facts.cands).argmax(-1)
    assert acc["n"] == len(facts)
    assert acc["acc_true"] == pytest.approx(float((pred == facts.true_pos).float().mean()))
    assert acc["acc_new"] == pytest.approx(float((pred == facts.new_pos).float().mean()))
    # one prompt per batch measures the same (right padding does not leak into the last token)
    assert train.accuracy(tiny, facts, batch_size=1)["acc_true"] == acc["acc_true"]
    assert np.isnan(train.accuracy(tiny, facts, idx=[])["acc_true"])
    sub = facts.subset([2, 0])
    assert sub.ids == [facts.ids[2], facts.ids[0]] and torch.equal(sub.true, facts.true[[2, 0]])


def test_mixed_precision_trains_float32_weights_on_a_bfloat16_forward(tiny, task):
    params = {n: p for n, p in models.named_parameters(tiny).items() if ".layers.1.mlp." in n}
    seen = []

    def spy(module, args, output):  # the dtype the forward pass computes in
        seen.append(output.dtype)

    mlp = next(m for n, m in train.hf_model(tiny).named_modules()
               if isinstance(m, torch.nn.Linear) and "layers.1." in n and "down_proj" in n)
    handle = mlp.register_forward_hook(spy)
    try:
        with train.restored(params), train.only_trainable(tiny, params):
            full = run(tiny, task, params, seed=0)
            n_full = len(seen)
        with train.restored(params), train.only_trainable(tiny, params):
            mixed = run(tiny, task, params, seed=0, precision="bfloat16-mixed")
            assert all(p.dtype == torch.float32 for p in params.values()), "mixed precision changed the weights' dtype"
    finally:
        handle.remove()
    train_full, train_mixed = seen[:n_full], seen[n_full:]
    assert torch.bfloat16 not in train_full and torch.bfloat16 in train_mixed
    # the measurements (evaluate) stay float32: the first and the last forward pass of each run
    assert train_mixed[0] == torch.float32 and train_mixed[-1] == torch.float32
    # the same batches, a loss within bfloat16's rounding of the float32 one, and a different one somewhere
    steps = full["step"] > 0
    np.testing.assert_allclose(mixed["loss"][steps], full["loss"][steps], rtol=0.05)
    assert not np.array_equal(mixed["loss"][steps], full["loss"][steps])
    with pytest.raises(ValueError, match="bfloat16-mixed"):
        run(tiny, task, params, seed=0, precision="bf16")


def test_bfloat16_training_without_native_support_warns_with_the_fix(monkeypatch):
    """On a CPU without AMX or AVX-512 BF16, torch emulates bfloat16 (far slower than float32): training that way
    warns once, naming precision='float32'; with native support, or in float32, nothing is said."""
    import warnings

    from mechunlearn_nb import train

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert train.native_bfloat16(cpu) is False and train.native_bfloat16("cuda") is True
    train._warn_slow_bfloat16.cache_clear()
    with pytest.warns(RuntimeWarning, match=r"no AMX or AVX-512 BF16.*Fix: precision='float32'"):
        train.step_precision("bfloat16-mixed", cpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.step_precision("bfloat16-mixed", cpu)  # once per process
        train.step_precision("float32", cpu)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
        train._warn_slow_bfloat16.cache_clear()
        assert train.native_bfloat16(cpu) is True
        train.step_precision("bfloat16-mixed", cpu)
