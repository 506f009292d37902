"""``bag-of-words``: hashed word uni/bi-grams of text columns -> mean-pooled ``EmbeddingBag``.

A fast built-in text encoder (the "hashing trick", Weinberger et al., ICML 2009, with
fastText-style n-gram bags, Joulin et al., EACL 2017). Tokenization and hashing happen once
per split on the data side (:meth:`BagOfWordsEncoder.featurize`); training only does bag lookups.
"""
from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn

from mtlframe.encoders.base import Encoder
from mtlframe.errors import ArgumentError, DataError
from mtlframe.features import FeatureInfo

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str, ngrams: int = 2) -> list[str]:
    """Lower-cased word tokens plus word n-grams up to ``ngrams`` (joined with a space)."""
    words = _TOKEN.findall(text.lower())
    out = list(words)
    for n in range(2, ngrams + 1):
        out.extend(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return out


class BagOfWordsEncoder(Encoder):
    """Hashed n-gram bag-of-words over one or more text columns.

    Args:
        features: text columns; each gets its own mean-pooled bag, outputs are concatenated.
        dim: embedding width ``d`` per column.
        num_buckets: hash buckets shared by all columns (each column salts its hash).
        ngrams: largest word n-gram (1 = unigrams only).
        max_tokens: tokens kept per text (after n-gram expansion), the padded length ``L``.
        pooling: ``mean`` of the token embeddings, ``sum``, or ``sqrt`` (sum divided by the square
            root of the token count: keeps a signal of text length, often best for reviews).
        on_truncation: texts with more than ``max_tokens`` tokens are cut: ``warn`` (one warning
            per column, with the share of texts cut and the limit), ``error`` (a
            :class:`~mtlframe.errors.DataError` naming the column) or ``ignore``.
        feature_info: injected.

    Shape: batch -> ``[B, len(features) * d]``. An empty or missing text (or whitespace only) maps
    to a zero vector; the count per column is printed when the data is prepared.
    """

    accepts = frozenset({"text"})

    def __init__(self, features: list[str], dim: int = 32, num_buckets: int = 2**18, ngrams: int = 2,
                 max_tokens: int = 256, pooling: Literal["mean", "sum", "sqrt"] = "sqrt",
                 on_truncation: Literal["warn", "error", "ignore"] = "warn", *,
                 feature_info: Mapping[str, FeatureInfo]) -> None:
        super().__init__()
        if num_buckets < 2:
            raise ArgumentError("num_buckets", f"num_buckets must be >= 2, got {num_buckets}")
        for pname, value in (("dim", dim), ("ngrams", ngrams), ("max_tokens", max_tokens)):
            if value < 1:
                raise ArgumentError(pname, f"{pname} must be >= 1, got {value}")
        self.features = list(features)
        self.num_buckets = num_buckets
        self.ngrams = ngrams
        self.max_tokens = max_tokens
        self.pooling = pooling
        self.on_truncation = on_truncation
        self._warned: set[str] = set()   # columns whose truncation was reported
        self._empty: dict[str, list[int]] = {}   # column -> [empty or missing texts, texts], until reported
        self.bag = nn.EmbeddingBag(num_buckets + 1, dim, mode="mean" if pooling == "mean" else "sum", padding_idx=0)
        nn.init.normal_(self.bag.weight, std=0.05)
        self.output_dim = dim * len(self.features)
        self.input_keys = [f"bow:{f}" for f in self.features]

    def _ids(self, texts: np.ndarray, salt: str, column: str = "") -> torch.Tensor:
        cache: dict[str, int] = {}
        buckets = self.num_buckets
        rows: list[list[int]] = []
        cut, longest, empty = 0, 0, 0
        for text in texts:
            if not isinstance(text, str):  # a number or other value: its text; missing: empty
                text = "" if text is None or (isinstance(text, float) and text != text) else str(text)
            if not text.strip():
                empty += 1
                rows.append([])
                continue
            ids = []
            tokens = tokenize(text, self.ngrams)
            if len(tokens) > self.max_tokens:
                cut, longest = cut + 1, max(longest, len(tokens))
            for tok in tokens[: self.max_tokens]:
                h = cache.get(tok)
                if h is None:
                    h = cache[tok] = zlib.crc32((salt + tok).encode()) % buckets + 1
                ids.append(h)
            rows.append(ids)
        if cut and self.on_truncation != "ignore" and column not in self._warned:
            msg = (f"bag-of-words: column '{column}': {cut:,} of {len(rows):,} texts ({cut / len(rows):.1%}) have "
                   f"more than max_tokens={self.max_tokens} tokens (n-grams included; the longest has {longest:,}) "
                   "and are truncated")
            if self.on_truncation == "error":
                raise DataError(f"{msg}. Fix: raise max_tokens, or on_truncation: warn (or ignore) to accept it.")
            self._warned.add(column)
            warnings.warn(f"{msg}. Raise max_tokens to keep them; on_truncation: ignore silences this, error "
                          "refuses it", UserWarning, stacklevel=3)
        seen = self._empty.setdefault(column, [0, 0])
        seen[0] += empty
        seen[1] += len(rows)
        width = max((len(r) for r in rows), default=0) or 1
        out = np.zeros((len(rows), width), dtype=np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return torch.from_numpy(out)

    def data_notes(self) -> list[str]:
        """One line per text column with empty or missing cells featurized since the last call:
        how many, and what they become (a zero vector). The data module prints them."""
        notes = [f"bag-of-words: column '{c}': {e:,} of {n:,} texts ({e / n:.1%}) are empty or missing; each is "
                 "encoded as an empty bag (a zero vector)" for c, (e, n) in self._empty.items() if e]
        self._empty.clear()
        return notes

    def feature_slices(self) -> dict[str, tuple[int, int]]:
        """Each text column's ``d`` columns, in ``features`` order."""
        d = self.output_dim // max(len(self.features), 1)
        return {f: (j * d, (j + 1) * d) for j, f in enumerate(self.features)}

    def featurize(self, columns: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tokenize and hash each text column into a ``[N, L]`` int32 tensor (0 = padding)."""
        return {f"bow:{f}": self._ids(np.asarray(columns[f], dtype=object), f + "\x00", f) for f in self.features}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for k in self.input_keys:
            ids = batch[k]                                         # (B, L), 0 = padding
            weights = None
            if self.pooling == "sqrt":
                present = (ids > 0).float()                        # (B, L)
                weights = present / present.sum(1, keepdim=True).clamp(min=1.0).sqrt()
            parts.append(self.bag(ids, per_sample_weights=weights))  # (B, d); empty text -> zeros
        return torch.cat(parts, dim=1)
