"""``mtlframe export``: a checkpoint as one ONNX or TorchScript graph plus its preprocessing as plain data.

The graph maps the *preprocessed* inputs (one tensor per model input, named after the feature) to
per-task predictions (one output per task, named after the task, in recipe order), with a dynamic
batch axis. ``preprocessor.json`` beside it says, for every input, how a raw value becomes the
input's value (vocabulary -> code, the out-of-vocabulary code, the missing-value rule, numeric
standardization / fill / clip, sequence separator / length / padding, the text hashing), so a
server in any language can feed the graph. Every export ends with a self-check: the exported file
runs on held-out rows and each named output is compared with ``mtlframe predict``'s numbers for
the same rows; a difference above :data:`TOLERANCE` fails the export and leaves no output.

Inputs (``B`` = batch, dynamic; see ``docs/export.md``):

* categorical feature ``f`` -> ``f``: int64 ``[B]``, ``vocabulary index + 1``, 0 = out of
  vocabulary or missing; a hashed one (``data.hash_buckets``): ``1 + stable_hash(canonical text)
  mod N``, 0 = missing (the contract's ``hash`` entry spells the hash out, see :data:`HASH_SPEC`);
* numeric feature ``f`` -> ``f``: float32 ``[B]``, ``(clip(x or fill) - mean) / std``;
* multi-categorical feature ``f`` -> ``f``: int64 ``[B, M]`` (``M`` dynamic), ``|``-separated
  tokens, ``vocabulary index + 2``, 1 = unknown, 0 = padding (right-padded); hashed: each token's
  ``1 + stable_hash(token) mod N``, 0 = padding;
* sequence feature ``f`` -> ``f``: int64 ``[B, L]`` (``L`` = ``max_len``, fixed), left-padded
  (most recent last), ``id-space index + 2``, 1 = unknown, 0 = padding; side field ``g`` ->
  ``f:g``: float32 ``[B, L]`` standardized, 0 at padding;
* text feature ``f`` of a ``bag-of-words`` encoder -> ``f``: int64 ``[B, T]`` (``T`` dynamic),
  hashed word n-grams (``crc32(f + "\\0" + token) % num_buckets + 1``), 0 = padding (right-padded);
* the text features of a frozen ``text`` encoder (``mtlframe-text``, mean / cls pooling) ->
  ``text:<f>[+<g>...]``: float32 ``[B, d_lm]``, the language model's vector of the row's rendered
  text, precomputed for every text of the checkpoint's data in ``text/<input>.parquet``
  (normalization and projection stay in the graph).

Outputs: ``binary`` / ``retrieval`` -> float32 ``[B]`` probability (retrieval: the sigmoid of the
row's own (user, item) score, as ``predict`` gives); ``regression`` -> float32 ``[B]`` in the
label's units; ``multiclass`` -> float32 ``[B, C]`` class probabilities in the order of the
contract's ``classes``.

Not exportable (refused at export time, naming the recipe key): the ``text`` encoder of
``mtlframe-text`` in fine-tune mode (a transformer on tokens) or with sentence segments /
attention pooling (per-token states), and any encoder whose ``featurize`` prepares inputs on the
data side in a way this module does not know (a plugin's).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlframe.errors import DataError, MTLFrameError
from mtlframe.preprocess import HASH_KEY

#: largest absolute difference between an exported output and ``predict``'s that passes the self-check
TOLERANCE = 1e-5
#: vocabularies longer than this go to ``vocab/<input>.parquet`` instead of inline in the JSON
INLINE_VOCAB = 5000
#: ONNX opset of the exported graphs
OPSET = 17
#: version of the ``preprocessor.json`` contract
CONTRACT_VERSION = 1
FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}


class ExportError(MTLFrameError):
    """The model cannot be exported (a component named), or the exported file failed its self-check."""


@dataclass(frozen=True)
class GraphInput:
    """One input of the exported graph.

    Attributes:
        name: the input's name (the feature column; ``f:g`` for a sequence's side field ``g``).
        kind: ``categorical``, ``numeric``, ``multi_categorical``, ``sequence``, ``sequence_field``
            or ``text_hashed``.
        dtype: ``int64`` or ``float32``.
        shape: ``["batch"]`` or ``["batch", <width name or int>]``.
    """

    name: str
    kind: str
    dtype: str
    shape: tuple


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the folder, the model file, and the self-check's maximum
    absolute difference per task (over the held-out rows)."""

    output: Path
    model_file: Path
    format: str
    inputs: list[GraphInput]
    outputs: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    rows: int = 0


# ------------------------------------------------------------------------------------------------
# What the graph reads
# ------------------------------------------------------------------------------------------------


def _is(enc: nn.Module, module: str, cls: str) -> bool:
    return type(enc).__module__ == module and type(enc).__name__ == cls


def _passes_through(enc: nn.Module) -> bool:
    """The encoder reads preprocessed columns as they are (no data-side ``featurize``)."""
    from mtlframe.encoders.base import Encoder

    return type(enc).featurize is Encoder.featurize


def _refusal(i: int, spec: Mapping[str, Any], enc: nn.Module) -> str | None:
    """Why encoder ``i`` cannot go into the graph (``None``: it can)."""
    name = spec.get("name", type(enc).__name__)
    where = f"model.encoders[{i}] ({name}, features {', '.join(getattr(enc, 'features', []) or [])})"
    mode = getattr(enc, "mode", None)
    if type(enc).__module__.startswith("mtlframe_text"):
        if mode == "finetune":
            return (f"{where} is a text encoder in fine-tune mode: it runs a transformer language model on "
                    "tokenized text, whose tokenizer is not part of the graph. Export is not supported for it; "
                    "serve the checkpoint with `mtlframe serve` (Python), or train with mode: frozen and a "
                    "bag-of-words or embedding encoder for text.")
        if _frozen_vectors(enc):
            return None
        why = ("sentence segments" if getattr(enc, "segments", None) == "sentences"
               else "attention pooling over token states")
        return (f"{where} is a frozen text encoder with {why}: the graph would need the language model's "
                "per-token (or per-sentence) states, which are not exported. Export supports frozen text "
                "encoders with mean/cls pooling (their text vectors become a graph input, precomputed in "
                "text/<input>.parquet); otherwise serve the checkpoint with `mtlframe serve`.")
    if _is(enc, "mtlframe.encoders.embedding", "EmbeddingEncoder") or \
            _is(enc, "mtlframe.encoders.numeric", "NumericEncoder") or \
            _is(enc, "mtlframe.encoders.bag_of_words", "BagOfWordsEncoder") or _passes_through(enc):
        return None
    return (f"{where}: {type(enc).__module__}.{type(enc).__name__} prepares its inputs on the data side "
            "(`featurize`) in a way the exporter does not know, so a server could not compute them. "
            "Export is not supported for this component; serve the checkpoint with `mtlframe serve` (Python).")


def _frozen_vectors(enc: nn.Module) -> bool:
    """A frozen ``text`` encoder (``mtlframe-text``) whose row encoding is one pooled text vector:
    exported with that vector ``[B, d_lm]`` as the graph input (precomputed per text)."""
    return (type(enc).__module__.startswith("mtlframe_text") and getattr(enc, "mode", None) == "frozen"
            and getattr(enc, "segments", None) != "sentences" and getattr(enc, "attention", None) is None)


def text_input_name(enc: nn.Module) -> str:
    """The graph input of a frozen text encoder: ``text:<feature>[+<feature>...]``."""
    return "text:" + "+".join(enc.features)


class FrozenTextTail(nn.Module):
    """What a frozen text encoder does after looking its text vector up: optional L2
    normalization, then its projection (dropout is off in eval). Input ``batch[key]`` is the text
    vector ``[B, d_lm]``; output ``[B, output_dim]``."""

    def __init__(self, enc: nn.Module) -> None:
        super().__init__()
        self.key = enc.key
        self.normalize = bool(enc.normalize)
        self.proj = enc.proj
        self.output_dim = enc.output_dim
        self.features = list(enc.features)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = batch[self.key]                                        # (B, d_lm)
        if self.normalize:
            x = nn.functional.normalize(x, dim=-1)
        return self.proj(x)                                        # (B, d)


def graph_inputs(loaded) -> list[GraphInput]:
    """The graph's inputs, in order: each encoder's features in recipe order (a feature read by
    two encoders once), then the other batch keys it reads (a sequence's side fields ``f:g``, the
    target item of ``target-attention``).

    Raises:
        ExportError: an encoder cannot be exported (every such encoder named with its recipe key).
    """
    pre = loaded.preprocessor
    specs = loaded.recipe.config.model.encoders
    problems = [r for i, enc in enumerate(loaded.encoders) if (r := _refusal(i, specs[i], enc))]
    if problems:
        raise ExportError("cannot export this checkpoint:\n  - " + "\n  - ".join(problems))
    seen: dict[str, GraphInput] = {}

    def add(name: str, kind: str, dtype: str, shape: tuple) -> None:
        seen.setdefault(name, GraphInput(name, kind, dtype, shape))

    for enc in loaded.encoders:
        if _frozen_vectors(enc):
            add(text_input_name(enc), "text_vector", "float32", ("batch", int(enc.lm_dim)))
            continue
        names = list(getattr(enc, "features", []) or [])
        names += [k for k in getattr(enc, "input_keys", []) if _passes_through(enc) and k not in names]
        for f in names:
            if ":" in f:  # a sequence's side field
                add(f, "sequence_field", "float32", ("batch", pre.sequences[f.split(":")[0]].max_len))
                continue
            typ = pre.features.get(f)
            if typ == "categorical":
                add(f, "categorical", "int64", ("batch",))
            elif typ == "numeric":
                add(f, "numeric", "float32", ("batch",))
            elif typ == "multi_categorical":
                add(f, "multi_categorical", "int64", ("batch", f"{f}_len"))
            elif typ == "sequence":
                add(f, "sequence", "int64", ("batch", pre.sequences[f].max_len))
            elif typ == "text":
                add(f, "text_hashed", "int64", ("batch", f"{f}_len"))
    return list(seen.values())


class GatherBag(nn.Module):
    """``nn.EmbeddingBag`` (2-D input, ``padding_idx``, ``sum`` / ``mean``, optional
    ``per_sample_weights``) as a gather and a weighted sum (one batched matrix product, ~1.4x
    faster in ONNX Runtime than a multiply-and-sum), sharing the bag's weight: the ONNX exporter
    has no ``embedding_bag`` with ``padding_idx``. Same numbers up to float rounding (an empty bag
    gives zeros, as ``EmbeddingBag`` does)."""

    def __init__(self, bag: nn.EmbeddingBag) -> None:
        super().__init__()
        self.weight = bag.weight
        self.mode = bag.mode
        self.padding_idx = bag.padding_idx

    def forward(self, ids: torch.Tensor, per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        ids = ids.long()
        emb = self.weight[ids]                                     # (B, L, d)
        keep = (ids != self.padding_idx).to(emb.dtype) if self.padding_idx is not None else torch.ones_like(
            ids, dtype=emb.dtype)                                  # (B, L)
        w = keep if per_sample_weights is None else keep * per_sample_weights
        total = torch.bmm(w.unsqueeze(1), emb).squeeze(1)          # (B, 1, L) x (B, L, d) -> (B, d)
        if self.mode == "mean":
            total = total / keep.sum(1, keepdim=True).clamp(min=1.0)
        return total


def _graph_model(model: nn.Module, onnx: bool) -> nn.Module:
    """``model`` itself, or a copy (sharing its weights) whose frozen text encoders are
    :class:`FrozenTextTail` and, for ONNX, whose ``EmbeddingBag`` modules are :class:`GatherBag`."""
    import copy

    frozen = [i for i, enc in enumerate(model.encoders) if _frozen_vectors(enc)]
    if not onnx and not frozen:
        return model
    # the modules are copied, the parameters and buffers shared (no second copy of large tables)
    model = copy.deepcopy(model, memo={id(t): t for t in [*model.parameters(), *model.buffers()]})
    for i in frozen:
        model.encoders[i] = FrozenTextTail(model.encoders[i])
    if not onnx:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.EmbeddingBag):
                if child.mode == "max":
                    raise ExportError(f"an EmbeddingBag with mode 'max' ({name}) has no ONNX form here")
                setattr(parent, name, GatherBag(child))
    return model


class ExportGraph(nn.Module):
    """The checkpoint's model behind named per-feature inputs, giving per-task predictions.

    ``forward(*inputs)`` takes the tensors of :func:`graph_inputs` in that order and returns one
    tensor per task in recipe order (``as_dict``: ``{task: tensor}``): probabilities (binary,
    retrieval), values (regression), class probabilities ``[B, C]`` (multiclass), as
    :func:`mtlframe.tasks.to_prediction` gives them to ``predict``.
    """

    def __init__(self, loaded, inputs: Sequence[GraphInput], as_dict: bool = False, onnx: bool = False) -> None:
        super().__init__()
        self.model = _graph_model(loaded.model, onnx)
        self.names = [i.name for i in inputs]
        self.tasks = [(t.name, t.type) for t in loaded.tasks]
        self.as_dict = as_dict
        self._plan = []  # per encoder: how its batch keys are built from the inputs
        for enc in loaded.encoders:
            if _frozen_vectors(enc):
                self._plan.append(("same", enc.key, text_input_name(enc)))
            elif _is(enc, "mtlframe.encoders.embedding", "EmbeddingEncoder"):
                if enc.single:
                    # each feature's rows in the shared table: its codes 0..size
                    self._plan.append(("stack_ids", enc.key, list(enc.single), enc.fused.offsets.tolist(),
                                       list(enc.fused.cardinalities)))
                for f in enc.multi:
                    self._plan.append(("same", f, f))
            elif _is(enc, "mtlframe.encoders.numeric", "NumericEncoder"):
                self._plan.append(("stack", enc.key, list(enc.features)))
            elif _is(enc, "mtlframe.encoders.bag_of_words", "BagOfWordsEncoder"):
                for f in enc.features:
                    self._plan.append(("same", f"bow:{f}", f))
            else:
                for k in enc.input_keys:
                    self._plan.append(("same", k, k))

    def forward(self, *inputs: torch.Tensor):
        from mtlframe.tasks import to_prediction

        x = dict(zip(self.names, inputs))
        batch: dict[str, torch.Tensor] = {}
        for step in self._plan:
            if step[0] == "stack_ids":
                _, key, feats, offsets, rows = step
                # a code outside the feature's own 0..size is out of vocabulary (0), never another
                # feature's row of the shared table
                batch[key] = torch.stack([torch.where((x[f] < 0) | (x[f] >= n), torch.zeros_like(x[f]), x[f]) + off
                                          for f, off, n in zip(feats, offsets, rows)], dim=1)      # (B, F)
            elif step[0] == "stack":
                _, key, feats = step
                batch[key] = torch.stack([x[f] for f in feats], dim=1)                       # (B, F)
            else:
                batch[step[1]] = x[step[2]]
        out = self.model(batch)
        preds = {name: to_prediction(typ, out[name]).float() for name, typ in self.tasks}
        return preds if self.as_dict else tuple(preds[name] for name, _ in self.tasks)


# ------------------------------------------------------------------------------------------------
# Raw rows -> graph inputs (the Python side of the contract), and predict's numbers
# ------------------------------------------------------------------------------------------------


def export_inputs(loaded, frame, inputs: Sequence[GraphInput] | None = None,
                  source: str = "input") -> dict[str, np.ndarray]:
    """The graph's inputs for the raw rows of ``frame`` (a DataFrame as ``predict`` takes it):
    ``{input name: array}`` with the dtypes and shapes of :func:`graph_inputs`.

    Raises:
        DataError: as :meth:`~mtlframe.preprocess.Preprocessor.transform` (a missing column, a
            missing numeric value without a fill, ...).
    """
    inputs = list(inputs if inputs is not None else graph_inputs(loaded))
    cols = loaded.preprocessor.transform(frame, source, with_labels=False)
    hashed = {}
    for enc in loaded.encoders:
        if _frozen_vectors(enc):  # the LM's vector of each row's text (cached; computed when new)
            rows = enc.featurize({f: cols[f] for f in enc.features})[enc.key]
            hashed[text_input_name(enc)] = enc.table[rows]
        elif _is(enc, "mtlframe.encoders.bag_of_words", "BagOfWordsEncoder"):
            made = enc.featurize({f: cols[f] for f in enc.features})
            hashed.update({f: made[f"bow:{f}"] for f in enc.features})
    out = {}
    for g in inputs:
        if g.kind in ("text_hashed", "text_vector"):
            value = hashed[g.name]
        else:
            value = cols[g.name]
        arr = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        out[g.name] = np.ascontiguousarray(arr.astype(np.int64 if g.dtype == "int64" else np.float32))
    return out


def predict_outputs(loaded, frame, source: str = "input") -> dict[str, np.ndarray]:
    """``predict``'s numbers for ``frame`` as the graph names them: ``{task: [N] or [N, C]}``
    (multiclass: the ``<task>_p_<class>`` columns in class order)."""
    from mtlframe.run import predict_frame

    pred = predict_frame(loaded, frame, source=source, report={})
    out = {}
    for t in loaded.tasks:
        if t.type == "multiclass":
            out[t.name] = np.stack([pred[f"{t.name}_p_{c}"].to_numpy(np.float32) for c in t.classes], axis=1)
        else:
            out[t.name] = pred[t.name].to_numpy(np.float32)
    return out


# ------------------------------------------------------------------------------------------------
# The preprocessor contract
# ------------------------------------------------------------------------------------------------


def _vocab_entry(values: Sequence[Any] | np.ndarray, name: str, folder: Path) -> dict[str, Any]:
    """A vocabulary inline (``values``) or in ``vocab/<name>.parquet`` (column ``value``)."""
    is_int = isinstance(values, np.ndarray)
    vals = [int(v) for v in values.tolist()] if is_int else [str(v) for v in values]
    entry: dict[str, Any] = {"value_type": "int" if is_int else "string", "size": len(vals)}
    if len(vals) <= INLINE_VOCAB:
        entry["values"] = vals
        return entry
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "vocab").mkdir(exist_ok=True)
    safe = _safe(name)
    pq.write_table(pa.table({"value": pa.array(vals, pa.int64() if is_int else pa.string())}),
                   folder / "vocab" / f"{safe}.parquet")
    entry["file"] = f"vocab/{safe}.parquet"
    return entry


CATEGORY_TEXT = ("A raw value is compared as text: strip surrounding blanks; an empty cell or NaN is missing; "
                 "a number with an integer value is written without decimals (3.0 -> '3'). With value_type "
                 "'int' the vocabulary holds integers and a raw integer is compared as an integer.")


#: how a hashed feature's value becomes a code, for a server without mtlframe (the ``hash`` entry
#: of a hashed input; ``tests/test_hashing.py`` recomputes codes from it alone)
HASH_SPEC = {
    "function": "siphash-2-4 then splitmix64-finalizer",
    "key": HASH_KEY, "key_encoding": "ascii", "encoding": "utf-8",
    "siphash": "SipHash-2-4 (Aumasson & Bernstein 2012) of the UTF-8 bytes of the canonical text, with the 16 ASCII "
               "bytes of key as the 128-bit key (k0 = bytes 0-7, k1 = bytes 8-15, little-endian); the 64-bit "
               "result as an unsigned integer",
    "finalizer": "x ^= x >> 30; x = x * 0xBF58476D1CE4E5B9 mod 2^64; x ^= x >> 27; x = x * 0x94D049BB133111EB "
                 "mod 2^64; x ^= x >> 31",
    "canonical": "an integer -> its decimal digits (7, -3); a float with an integer value and |x| < 2^53 -> the "
                 "same digits (7.0 -> '7'); another float -> Python's str (7.5 -> '7.5', inf -> 'inf'); a boolean -> "
                 "'True' / 'False'; a string -> itself with surrounding blanks stripped, as written ('007' and "
                 "'7.0' stay themselves); null, NaN, an empty or blank string -> missing. A multi-categorical "
                 "token is a string (the cell split on the separator, each token stripped).",
}


def _hash_entry(n: int) -> dict[str, Any]:
    return {**HASH_SPEC, "num_buckets": int(n)}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _text_vectors(loaded, enc: nn.Module, frames: Sequence[Any], folder: Path, name: str) -> dict[str, Any]:
    """Write ``text/<input>.parquet`` (columns ``text``, ``vector``): the frozen LM vector of every
    distinct rendered text of ``frames`` (raw rows); the contract entry's ``vectors`` part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for frame in frames:
        cols = {}
        for f in enc.features:
            cols.update(loaded.preprocessor.transform_column(frame, f))
        enc.featurize({f: cols[f] for f in enc.features})  # every text gets its row of enc.table
    texts = list(enc._rows)
    rows = torch.tensor([enc._rows[t] for t in texts], dtype=torch.long)
    vectors = enc.table[rows].numpy().astype(np.float32)
    (folder / "text").mkdir(exist_ok=True)
    path = f"text/{_safe(name)}.parquet"
    pq.write_table(pa.table({"text": pa.array(texts, pa.string()),
                             "vector": pa.array(list(vectors), pa.list_(pa.float32()))}), folder / path)
    return {"file": path, "size": len(texts), "dim": int(vectors.shape[1]) if len(texts) else int(enc.lm_dim)}


def contract(loaded, inputs: Sequence[GraphInput], folder: Path, text_rows: Sequence[Any] = ()) -> dict[str, Any]:
    """``preprocessor.json``: for each graph input, how a raw value is mapped (see ``docs/export.md``);
    large vocabularies are written to ``folder/vocab/*.parquet``, the precomputed vectors of frozen
    text features (for the texts of the raw frames ``text_rows``) to ``folder/text/*.parquet``."""
    pre = loaded.preprocessor
    frozen = {text_input_name(enc): enc for enc in loaded.encoders if _frozen_vectors(enc)}
    bow = {f: enc for enc in loaded.encoders if _is(enc, "mtlframe.encoders.bag_of_words", "BagOfWordsEncoder")
           for f in enc.features}
    items = []
    for g in inputs:
        d: dict[str, Any] = {"name": g.name, "kind": g.kind, "dtype": g.dtype, "shape": list(g.shape)}
        if g.kind == "categorical" and g.name in pre.hash_buckets:
            d.update(column=g.name, hash=_hash_entry(pre.hash_buckets[g.name]), missing_code=0,
                     rule="code = 1 + finalizer(siphash(canonical text)) % num_buckets (see hash); missing -> 0; "
                          "no vocabulary, nothing is out of it")
        elif g.kind == "categorical":
            d.update(column=g.name, vocabulary=_vocab_entry(pre.vocab[g.name], g.name, folder), oov_code=0,
                     missing_code=0, rule="code = 1 + position of the value in vocabulary; unknown or missing -> 0. "
                     + CATEGORY_TEXT)
        elif g.kind == "numeric":
            mean, std = pre.stats[g.name]
            clip = pre.clip.get(g.name)
            d.update(column=g.name, mean=mean, std=std, fill=pre.fill.get(g.name),
                     clip=list(clip) if clip else None,
                     rule="x = float(raw) (inf and -inf count as missing); missing -> fill (fill null: the row "
                          "is refused); x = min(max(x, clip[0]), clip[1]) when clip is set; "
                          "value = float32((x - mean) / std)")
        elif g.kind == "multi_categorical" and g.name in pre.hash_buckets:
            d.update(column=g.name, hash=_hash_entry(pre.hash_buckets[g.name]), separator="|",
                     max_len=pre.multi_len[g.name], padding_code=0, padding="right",
                     rule="split the cell on '|', strip each token; token code = 1 + finalizer(siphash(token)) % "
                          "num_buckets (see hash); an empty token takes a slot but no code; keep the first max_len "
                          "slots, right-pad with 0 (any width >= 1 works)")
        elif g.kind == "multi_categorical":
            d.update(column=g.name, vocabulary=_vocab_entry(pre.vocab[g.name], g.name, folder), separator="|",
                     max_len=pre.multi_len[g.name], padding_code=0, oov_code=1, padding="right",
                     rule="split the cell on '|', strip each token; token code = 2 + position in vocabulary, "
                          "unknown -> 1; an empty token takes a slot but no code; keep the first max_len slots, "
                          "right-pad with 0 (any width >= 1 works: the batch's longest row is enough)")
        elif g.kind == "sequence":
            spec = pre.sequences[g.name]
            space = spec.share_with or g.name
            d.update(column=g.name, separator="|", max_len=spec.max_len, padding="left", padding_code=0,
                     oov_code=1, share_with=spec.share_with, history_of=spec.of,
                     vocabulary=_vocab_entry(pre.vocab[space], space, folder),
                     rule="split on '|' (oldest first; an empty cell is an empty history); token code = 2 + "
                          "position in vocabulary (the vocabulary of share_with when set), unknown -> 1; keep the "
                          "max_len most recent tokens, left-pad with 0 so the most recent is in the last column")
        elif g.kind == "sequence_field":
            mean, std = pre.seq_stats[g.name]
            d.update(sequence=g.name.split(":")[0], field=g.name.split(":", 1)[1], mean=mean, std=std,
                     separator="|", padding="left",
                     rule="one number per id of the sequence, aligned with it; value = (x - mean) / std; 0 at padding")
        elif g.kind == "text_hashed":
            enc = bow[g.name]
            d.update(column=g.name, tokenizer={"lowercase": True, "token_regex": r"[a-z0-9]+(?:'[a-z]+)?",
                                               "ngrams": enc.ngrams, "ngram_join": " "},
                     hash={"function": "crc32", "salt": g.name + "\u0000", "encoding": "utf-8",
                           "num_buckets": enc.num_buckets},
                     max_tokens=enc.max_tokens, padding="right", padding_code=0,
                     rule="missing -> ''; words = all matches of token_regex in the lower-cased text; tokens = "
                          "words, then the word 2-grams, ..., ngrams-grams (words joined by ngram_join), in "
                          "order; keep the first max_tokens; code = crc32(utf8(salt + token)) % num_buckets + 1; "
                          "right-pad with 0 (any width >= 1)")
        elif g.kind == "text_vector":
            enc = frozen[g.name]
            d.update(features=list(enc.features), template=enc.template, fill_empty=enc.fill_empty,
                     model=str(enc.resolved.name), pooling=enc.pooling, max_length=enc.max_length,
                     normalized_in_graph=bool(enc.normalize),
                     vectors=_text_vectors(loaded, enc, text_rows, folder, g.name),
                     rule="render the row's text as the text encoder does (the features' cells, stripped, joined "
                          "with '. ', or `template`; empty cells per `fill_empty`; a text without a letter or digit "
                          "is ''), then take its vector from `vectors` (column text -> vector); a text not in the "
                          "file must be embedded with the same model, pooling and max_length (mtlframe-text's "
                          "frozen encoder), or the row refused")
        items.append(d)
    outputs = []
    for t in loaded.tasks:
        o: dict[str, Any] = {"name": t.name, "task_type": t.type, "dtype": "float32"}
        if t.type == "multiclass":
            o.update(shape=["batch", len(t.classes)], classes=list(t.classes),
                     meaning="class probabilities (softmax), columns in the order of classes")
        else:
            o.update(shape=["batch"], meaning={"binary": "probability of label 1 (sigmoid)",
                                               "regression": "predicted value in the label's units",
                                               "retrieval": "sigmoid of the score of the row's own (user, item) "
                                                            "pair"}.get(t.type, t.type))
        outputs.append(o)
    return {"contract_version": CONTRACT_VERSION, "inputs": items, "outputs": outputs,
            "batch_axis": 0, "input_order": [g.name for g in inputs], "output_order": [t.name for t in loaded.tasks]}


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def _example(inputs: Sequence[GraphInput], n: int) -> tuple[torch.Tensor, ...]:
    """All-zero inputs of ``n`` rows (widths: fixed ones as given, dynamic ones 3)."""
    out = []
    for g in inputs:
        shape = [n] + [s if isinstance(s, int) else 3 for s in g.shape[1:]]
        out.append(torch.zeros(shape, dtype=torch.int64 if g.dtype == "int64" else torch.float32))
    return tuple(out)


def _traced(write) -> list[str]:
    """Run ``write()`` (a tracing export); return the tracer's warnings about Python code that
    depends on the data (``file:line: message``, each once): such code is recorded along the path
    the example inputs took. Other warnings are silenced."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write()
    seen = [f"{'/'.join(Path(w.filename).parts[-3:])}:{w.lineno}: {str(w.message).split('. ')[0][:160]}"
            for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    return list(dict.fromkeys(seen))


def _write_onnx(graph: ExportGraph, inputs: Sequence[GraphInput], path: Path, example) -> list[str]:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MTLFrameError("ONNX export needs onnx and onnxruntime: pip install 'mtlframe[export]'") from None
    axes = {g.name: {0: "batch", **{i: s for i, s in enumerate(g.shape) if i and isinstance(s, str)}}
            for g in inputs}
    axes.update({name: {0: "batch"} for name, _ in graph.tasks})
    return _traced(lambda: torch.onnx.export(
        graph, example, str(path), input_names=[g.name for g in inputs],
        output_names=[name for name, _ in graph.tasks], dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        do_constant_folding=True))


def _write_torchscript(graph: ExportGraph, path: Path, example) -> list[str]:
    def write() -> None:
        torch.jit.trace(graph, example, strict=False, check_trace=False).save(str(path))

    return _traced(write)


def run_exported(model_file: str | Path, fmt: str, feeds: Mapping[str, np.ndarray],
                 threads: int | None = None) -> dict[str, np.ndarray]:
    """Run an exported file on ``feeds`` (``{input: array}``); ``{output name: array}``.

    ONNX runs in onnxruntime (CPU), TorchScript through ``torch.jit.load``; ``threads`` sets
    onnxruntime's intra-op threads (``None``: its default)."""
    if fmt == "onnx":
        sess = onnx_session(model_file, threads)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, {k: np.asarray(v) for k, v in feeds.items()})))
    module = torch.jit.load(str(model_file))
    order = json.loads((Path(model_file).parent / "preprocessor.json").read_text())["input_order"] \
        if (Path(model_file).parent / "preprocessor.json").exists() else list(feeds)
    with torch.inference_mode():
        out = module(*[torch.from_numpy(np.asarray(feeds[k])) for k in order])
    return {k: v.numpy() for k, v in out.items()}


def onnx_session(model_file: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for ``model_file`` (``threads``: intra-op threads)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MTLFrameError("running ONNX files needs onnxruntime: pip install 'mtlframe[export]'") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])


def _checkpoint_table(loaded):
    """The checkpoint's training data, loaded again with its recipe's dataset.

    Raises:
        DataError: it cannot be read (moved, not on this machine).
    """
    from mtlframe.build import Builder

    try:
        return Builder(loaded.recipe).dataset().load()
    except (OSError, MTLFrameError) as exc:
        raise DataError(f"the self-check needs held-out rows, and the checkpoint's data could not be read "
                        f"({exc}); pass a file of rows with --data FILE.") from None


def held_out_rows(loaded, rows: int, data: str | Path | None = None):
    """Up to ``rows`` raw rows for the self-check: the first ones of ``data`` (a CSV / Parquet
    file), else of the test split of the checkpoint's own data (re-split with the recipe's seed;
    with ``data.stream``: the first rows of its test directory, else val, else train, read a row
    group at a time, never the whole directory).

    Raises:
        DataError: the file or the checkpoint's data cannot be read (the path named).
    """
    from mtlframe.run import read_table

    if data is not None:
        return read_table(data).head(rows).reset_index(drop=True)
    stream = loaded.recipe.config.data.stream
    if stream is not None:
        return _first_stream_rows(loaded.recipe, rows)
    from mtlframe.datamodule import split_indices

    recipe = loaded.recipe
    table = _checkpoint_table(loaded)
    s = recipe.config.data.split
    idx = split_indices(table, s.name, s.val, s.test, recipe.config.seed, s.cold_items)
    pick = idx["test"] if len(idx["test"]) else idx["val"] if len(idx["val"]) else idx["train"]
    return table.frame.iloc[np.sort(pick)[:rows]].reset_index(drop=True)


def _first_stream_rows(recipe, rows: int):
    """The first ``rows`` rows (all columns) of a ``data.stream`` recipe's test directory, else its
    val directory, else its training directory (``data.dataset.path``), in file order.

    Raises:
        DataError: the directory is gone or holds no Parquet file (named; the fix: ``--data FILE``).
    """
    import pandas as pd

    from mtlframe.streaming import ParquetStream

    cfg = recipe.config.data
    source = cfg.stream.test or cfg.stream.val or cfg.dataset.path
    try:
        batches = iter(ParquetStream(source, batch_size=rows, null_ints_as_float=True))
        first = next(batches, {})
    except (OSError, MTLFrameError) as exc:
        raise DataError(f"the self-check needs held-out rows, and the checkpoint's stream {source} could not be "
                        f"read ({exc}); pass a file of rows with --data FILE.") from None
    return pd.DataFrame({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in first.items()})


def self_check(model_file: Path, fmt: str, loaded, frame, inputs: Sequence[GraphInput],
               source: str = "held-out rows") -> dict[str, float]:
    """Compare every named output of ``model_file`` with ``predict``'s numbers on ``frame``, on
    the whole batch and on its first row alone (a batch size baked into the graph shows there).

    Returns:
        ``{task: max abs difference}``.

    Raises:
        ExportError: an output is missing, has another shape, or differs by more than
            :data:`TOLERANCE` (the task, the difference and the row named).
    """
    want = predict_outputs(loaded, frame, source)
    feeds = export_inputs(loaded, frame, inputs, source)
    got = run_exported(model_file, fmt, feeds)
    one = run_exported(model_file, fmt, {k: v[:1] for k, v in feeds.items()})
    diffs = {}
    for t in loaded.tasks:
        for label, out, ref in (("the batch", got, want[t.name]), ("one row", one, want[t.name][:1])):
            if t.name not in out:
                raise ExportError(f"self-check failed: the exported {fmt} file has no output '{t.name}' "
                                  f"(outputs: {', '.join(out)}); nothing was written.")
            value = np.asarray(out[t.name])
            if value.shape != ref.shape:
                raise ExportError(f"self-check failed: task '{t.name}' ({label}): the exported output has shape "
                                  f"{list(value.shape)}, predict gives {list(ref.shape)}; nothing was written.")
            err = np.abs(value.astype(np.float64) - ref.astype(np.float64))
            worst = float(np.nanmax(err)) if err.size else 0.0
            if not np.isfinite(err).all() or worst >= TOLERANCE:
                row = int(np.nanargmax(err.reshape(len(err), -1).max(1))) + 1 if np.isfinite(err).all() else 0
                raise ExportError(f"self-check failed: task '{t.name}': the exported {fmt} output differs from "
                                  f"mtlframe predict by {worst:.3g} (max abs, tolerance {TOLERANCE:g}) on {label} of "
                                  f"{len(frame)} {source} (worst at row {row}); nothing was written. A component "
                                  "of the model does not trace faithfully; please report it with the recipe.")
            diffs[t.name] = max(diffs.get(t.name, 0.0), worst)
    return diffs


def _check_replaceable(out: Path, checkpoint: Path) -> None:
    """Refuse an ``--output`` that replacing would lose more than an earlier export: the checkpoint
    itself or a folder above it (e.g. its run folder), a file, or a folder of other files.

    Raises:
        MTLFrameError: naming ``--output`` and why.
    """
    if not out.exists():
        return
    target, ckpt = out.resolve(), checkpoint.resolve()
    why = ("is the checkpoint being exported" if target == ckpt
           else "holds the checkpoint being exported" if target in ckpt.parents
           else "is a file, not an export folder" if not out.is_dir()
           else "is not an earlier export (no export.json)" if any(out.iterdir())
           and not (out / "export.json").is_file() else None)
    if why:
        raise MTLFrameError(f"--output {out} {why}; --overwrite replaces only a folder an earlier mtlframe export "
                            "wrote. Choose a new --output folder (e.g. exported/<run>).")


def export_model(checkpoint: str | Path, format: str = "onnx", output: str | Path = "export",
                 rows: int = 256, data: str | Path | None = None, overwrite: bool = False,
                 _corrupt: Any = None) -> ExportResult:
    """Export a checkpoint to ``output/model.onnx`` (or ``model.pt``) + ``preprocessor.json``.

    Args:
        checkpoint: an mtlframe checkpoint (``runs/<run>/checkpoints/best.ckpt``).
        format: ``onnx`` (onnxruntime; opset :data:`OPSET`, legacy TorchScript-based exporter
            with dynamic axes) or ``torchscript`` (``torch.jit.trace``; returns ``{task: tensor}``).
        output: the folder to create; it must not exist unless ``overwrite`` (it is replaced only
            once the new export passed its self-check, and only when it is an earlier export:
            never a folder holding the checkpoint, a file, or a folder without ``export.json``).
        rows: held-out rows for the self-check (``data``'s first rows, else the checkpoint's
            test split).
        data: a CSV / Parquet file of raw rows for the self-check.

    Returns:
        :class:`ExportResult` (with each task's self-check difference).

    Raises:
        MTLFrameError: an unknown format, ``output`` exists (without ``overwrite``; with it,
            ``output`` holds the checkpoint or is not an earlier export), onnx /
            onnxruntime missing.
        ExportError: a component cannot be exported (named, with its recipe key); the self-check
            failed (task and difference named) -- then nothing is written.
        CheckpointError, DataError: as ``predict``.
    """
    from mtlframe.run import load_checkpoint

    if format not in FORMATS:
        raise MTLFrameError(f"unknown export format {format!r}; choose {' or '.join(FORMATS)}.")
    if rows < 1:
        raise MTLFrameError(f"--rows must be at least 1 (held-out rows for the self-check), got {rows}.")
    out = Path(output)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise MTLFrameError(f"{out} already exists; choose a new --output folder, or pass --overwrite to replace it "
                            "(it is replaced only after the new export passed its self-check).")
    _check_replaceable(out, Path(checkpoint))
    loaded = load_checkpoint(checkpoint)
    inputs = graph_inputs(loaded)
    frame = held_out_rows(loaded, rows, data)
    loaded.model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        graph = ExportGraph(loaded, inputs, as_dict=format == "torchscript", onnx=format == "onnx").eval()
        for p in graph.parameters():  # the file computes no gradients (TorchScript keeps the flag)
            p.requires_grad_(False)
        example = _example(inputs, 2)
        model_file = tmp / FILES[format]
        start = time.perf_counter()
        with torch.no_grad():
            tracer = (_write_onnx(graph, inputs, model_file, example) if format == "onnx"
                      else _write_torchscript(graph, model_file, example))
        seconds = time.perf_counter() - start
        text_rows = [frame]
        if any(g.kind == "text_vector" for g in inputs):  # precomputed vectors: every text of the data
            try:
                text_rows.append(_checkpoint_table(loaded).frame)
            except DataError:
                pass  # only the self-check rows' texts (the data is not on this machine)
        spec = contract(loaded, inputs, tmp, text_rows)
        (tmp / "preprocessor.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        if _corrupt is not None:  # tests: damage the written file to prove the self-check catches it
            _corrupt(model_file)
        try:
            diffs = self_check(model_file, format, loaded, frame, inputs)
        except ExportError as exc:
            if not tracer:
                raise
            raise ExportError(f"{exc}\nThe tracer saw Python code that depends on the data (recorded along one "
                              "path only), a likely cause:\n  - " + "\n  - ".join(tracer)) from None
        meta = {"format": format, "model_file": FILES[format], "checkpoint": str(Path(checkpoint).resolve()),
                "torch": torch.__version__, "opset": OPSET if format == "onnx" else None,
                "export_seconds": round(seconds, 3), "tracer_warnings": tracer,
                "self_check": {"rows": len(frame), "source": str(data) if data else "checkpoint test split",
                               "tolerance": TOLERANCE, "max_abs_diff": diffs}}
        (tmp / "export.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, out / FILES[format], format, list(inputs), [t.name for t in loaded.tasks], diffs,
                        len(frame))
