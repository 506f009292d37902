"""User and item vectors of retrieval tasks: export, exact top-K and an optional faiss index.

What ``mtlframe embeddings`` does, callable from Python (:func:`export_embeddings`). For each
retrieval task it writes, under ``OUTPUT/<task>/``:

* ``users.npy`` ``[U, d]`` float32 and ``user_ids.csv`` (one raw id a line, row ``i`` of the
  ``.npy``), the same for items (``items.npy``, ``item_ids.csv``);
* ``users.parquet`` / ``items.parquet`` (columns ``user`` / ``item`` and ``vector``, a list of
  ``d`` floats) when pyarrow is installed;
* with ``k``: ``top_k.csv`` (``user, rank, item, score``), the exact top-K by matrix product of
  every user against every item, seen items excluded (:func:`exact_top_k`);
* with ``faiss``: ``items.faiss``, a faiss inner-product index of the item vectors
  (:func:`build_faiss_index`, needs ``pip install 'mtlframe[faiss]'``).

A task's logit is ``u . v / temperature`` of these vectors (``temperature`` in ``meta.json``); with
``similarity: cosine`` the vectors are already L2-normalized, so the inner product is the cosine.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlframe.errors import MTLFrameError

#: faiss index kinds :func:`build_faiss_index` builds
FAISS_KINDS = ("flat", "hnsw")


def exact_top_k(users: torch.Tensor, items: torch.Tensor, k: int, exclude: Any = None,
                batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-K items per user by inner product, in user batches (``[Ub, d] @ [d, I]``).

    Args:
        users: ``[U, d]`` user vectors.
        items: ``[I, d]`` item vectors.
        k: list length.
        exclude: ``None``, or a callable ``rows [Ub] -> bool [Ub, I]`` (True: never return), e.g.
            the items each user has seen.
        batch_size: users per matrix product (memory ``batch_size * I`` floats).

    Returns ``(scores [U, k], index [U, k], valid [U, k])`` as :func:`mtlframe.recommend.top_k_scored`
    (ties by the lower item row; ``valid`` False past the end of a short list).
    """
    from mtlframe.recommend import top_k_scored

    outs = []
    for start in range(0, len(users), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(users)))
        scores = users[rows].float() @ items.float().T
        outs.append(top_k_scored(scores, k, None if exclude is None else exclude(rows)))
    if not outs:
        return (torch.empty(0, k), torch.empty(0, k, dtype=torch.long), torch.empty(0, k, dtype=torch.bool))
    return tuple(torch.cat(parts) for parts in zip(*outs))  # type: ignore[return-value]


def _faiss():
    try:
        import faiss  # noqa: PLC0415 - optional dependency, imported only where used
    except ImportError as exc:
        raise MTLFrameError("the faiss index needs faiss-cpu: pip install 'mtlframe[faiss]' (or faiss-cpu); "
                            "without it, use the exact top-K (--k), which is as fast for catalogues up to "
                            "about a million items on a GPU.") from exc
    return faiss


def build_faiss_index(items: np.ndarray | torch.Tensor, kind: str = "flat", hnsw_m: int = 32):
    """A faiss inner-product index over item vectors (row ``j`` = item ``j``).

    Args:
        items: ``[I, d]`` vectors (normalize them first for cosine similarity).
        kind: ``flat`` (``IndexFlatIP``: exact, brute force with BLAS) or ``hnsw``
            (``IndexHNSWFlat`` with the inner-product metric: approximate, sub-linear; Malkov &
            Yashunin 2018).
        hnsw_m: neighbours per node of the HNSW graph.

    Raises:
        MTLFrameError: faiss is not installed, or an unknown ``kind``.
    """
    faiss = _faiss()
    x = np.ascontiguousarray(_numpy(items), dtype=np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(x.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(x.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * hnsw_m)
    else:
        raise MTLFrameError(f"faiss index kind {kind!r} is not one of {', '.join(FAISS_KINDS)}.")
    index.add(x)
    return index


def faiss_search(index, users: np.ndarray | torch.Tensor, k: int, ef_search: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [U, k], item rows [U, k])`` of the ``k`` best items of each user in a faiss index
    (``-1`` rows when the index holds fewer than ``k``). ``ef_search``: HNSW search breadth."""
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search
    return index.search(np.ascontiguousarray(_numpy(users), dtype=np.float32), k)


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def write_vectors(folder: Path, side: str, ids: Sequence[Any], vectors: torch.Tensor) -> list[Path]:
    """Write ``<side>s.npy`` (``[N, d]`` float32), ``<side>_ids.csv`` (header ``side``, one raw id per
    row, row ``i`` = vector ``i``) and, when pyarrow is installed, ``<side>s.parquet`` (columns
    ``side`` and ``vector``). Returns the paths written."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    arr = _numpy(vectors).astype(np.float32, copy=False)
    written = [folder / f"{side}s.npy", folder / f"{side}_ids.csv"]
    np.save(written[0], arr)
    pd.DataFrame({side: list(ids)}).to_csv(written[1], index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return written
    frame = pd.DataFrame({side: list(ids), "vector": list(arr)})
    written.append(folder / f"{side}s.parquet")
    frame.to_parquet(written[-1], index=False)
    return written


def write_meta(folder: Path, meta: dict[str, Any]) -> Path:
    path = folder / "meta.json"
    path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return path


def export_embeddings(checkpoint: str | Path, output: str | Path, *, k: int | None = None, faiss: str | None = None,
                      accelerator: str = "auto", data_path: str | Path | None = None,
                      overrides: list[str] | None = None, batch_size: int = 1024) -> dict[str, dict[str, Any]]:
    """Write the user and item vectors of every retrieval task of a checkpoint (see the module docstring).

    Users: every user of the training data (any split), each from the same representative row as
    ``mtlframe recommend`` uses (their latest row in the data); items: the
    catalogue (every item with a training row).

    Args:
        checkpoint: an mtlframe checkpoint with at least one ``retrieval`` task.
        output: the folder to write (``OUTPUT/<task>/...``).
        k: also write ``top_k.csv``, every user's exact top ``k`` by matrix product, items the user
            has a row with (any split) excluded, ``score`` = the task's logit ``u . v / temperature``.
        faiss: also write ``items.faiss`` (``flat``: exact; ``hnsw``: approximate), an
            inner-product index; load it with ``faiss.read_index``.
        accelerator, data_path, overrides: as for :func:`mtlframe.recommend.recommend` (``data.*`` only).
        batch_size: users per matrix product for ``k``.

    Returns ``{task: {"users", "items", "dim", "similarity", "temperature", "files"}}``.

    Raises:
        CheckpointError: no ``ranking:`` section or no retrieval task.
        MTLFrameError: faiss asked for and not installed; ``k < 1``.
        DataError: the data is not the data the checkpoint was trained on.
    """
    import pandas as pd

    from mtlframe.errors import CheckpointError, DataError
    from mtlframe.recommend import _seen, _user_rows, all_users, catalogue_ids, encode_rows, user_columns
    from mtlframe.run import _quiet_lightning, load_checkpoint, rebuild_system, resolve_device

    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise MTLFrameError(f"--k must be an integer >= 1, got {k!r}.")
    if faiss is not None:
        _faiss()   # before the slow data load: a missing package shows at once
        if faiss not in FAISS_KINDS:
            raise MTLFrameError(f"faiss index kind {faiss!r} is not one of {', '.join(FAISS_KINDS)}.")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise DataError(f"--output {out} is a file; embeddings writes a folder (one subfolder per retrieval task).")
    _quiet_lightning()
    device = resolve_device(accelerator)
    loaded = load_checkpoint(checkpoint)
    retrieval = [t.name for t in loaded.tasks if t.type == "retrieval"]
    if loaded.recipe.config.ranking is None or not retrieval:
        raise CheckpointError(f"{checkpoint} has no retrieval task, so no user and item vectors to export; "
                              "mtlframe recommend ranks with its other tasks.")
    dm, module = rebuild_system(checkpoint, loaded, command="embeddings", data_path=data_path, overrides=overrides)
    model = module.model.to(device).eval()
    cat = dm.catalogue
    user_feature = cat.user_feature
    raw_users, keys = all_users(dm, user_feature)
    where_split, where_row, row_keys = _user_rows(dm, keys, user_feature)
    found = where_split >= 0
    raw_users, keys, where_split, where_row = raw_users[found], keys[found], where_split[found], where_row[found]
    user_cols = {c: v.to(device) for c, v in user_columns(dm, where_split, where_row, list(cat.columns)).items()}
    item_ids = catalogue_ids(dm)
    result: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():
        x_users = encode_rows(model, user_cols)
        x_items = encode_rows(model, {c: v.to(device) for c, v in cat.columns.items()})
        seen = None
        if k is not None:
            seen = _seen(dm, keys, row_keys, cat, len(keys))
        for task in retrieval:
            head = model.retrieval[task]
            u, v = head.user_vectors(x_users).float(), head.item_vectors(x_items).float()
            folder = out / task
            files = write_vectors(folder, "user", raw_users, u) + write_vectors(folder, "item", item_ids, v)
            if k is not None:
                scores, index, valid = exact_top_k(
                    u / head.temperature, v, k, batch_size=batch_size,
                    exclude=lambda rows: seen.dense(int(rows[0]), int(rows[-1]) + 1, len(v), device))
                valid_np = valid.cpu().numpy()
                per_user = valid_np.sum(1)
                frame = pd.DataFrame({
                    "user": np.repeat(raw_users, per_user),
                    "rank": np.concatenate([np.arange(1, n + 1) for n in per_user]) if len(per_user) else [],
                    "item": item_ids[index.cpu().numpy()[valid_np]],
                    "score": scores.cpu().numpy()[valid_np].astype(np.float64)})
                files.append(folder / "top_k.csv")
                frame.to_csv(files[-1], index=False)
            if faiss is not None:
                index_ = build_faiss_index(v, faiss)
                files.append(folder / "items.faiss")
                _faiss().write_index(index_, str(files[-1]))
            meta = {"task": task, "users": len(raw_users), "items": len(item_ids), "dim": int(u.shape[1]),
                    "similarity": head.similarity, "temperature": head.temperature,
                    "logit": "users[i] . items[j] / temperature", "user_feature": user_feature,
                    "item_feature": cat.item_feature, "checkpoint": str(checkpoint)}
            files.append(write_meta(folder, meta))
            result[task] = {**{key: meta[key] for key in ("users", "items", "dim", "similarity", "temperature")},
                            "files": [f.name for f in files]}
    return result
