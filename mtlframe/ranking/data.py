"""What full-ranking evaluation needs of one evaluation split: users, positives, exclusions."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from mtlframe.batching import Columns, take
from mtlframe.features import label_key, mask_key
from mtlframe.ranking.evaluate import CSR


@dataclass
class RankingSplit:
    """One evaluation split of one retrieval task, ready for :func:`~mtlframe.ranking.full_ranking`.

    Attributes:
        users: int64 ``[U]`` encoded user codes of the split (sorted; the out-of-vocabulary code 0
            is left out: those rows belong to users unknown to training, merged into one code).
        inputs: model-ready columns ``[U, ...]`` of each user's first row in the split (the user
            side of the two-tower model reads them).
        positives: ``U`` rows: catalogue positions of the items the user has a row with label 1
            (and a present label) in the split, each once.
        exclude: ``U`` rows: catalogue positions of the user's training items (any label); for
            the test split also the validation items.
        unreachable: int64 ``[U]``: distinct positive item codes without a catalogue position
            (items with no training row): counted in ``|R(u)|``, never recommended.
        popularity: float64 ``[I]``: training rows of each catalogue item.
        unknown_rows: rows of the split whose user code is 0 (not evaluated).
    """

    users: torch.Tensor
    inputs: Columns
    positives: CSR
    exclude: CSR
    unreachable: torch.Tensor
    popularity: torch.Tensor
    unknown_rows: int


def build_ranking_split(ids: Mapping[str, Mapping[str, torch.Tensor]], columns: Columns, catalogue,
                        split: str, task: str) -> RankingSplit:
    """Build the :class:`RankingSplit` of ``split`` (``val`` or ``test``) for retrieval task ``task``.

    Args:
        ids: ``{split: {"user": [N], "item": [N]}}`` encoded codes of every row
            (:attr:`~mtlframe.datamodule.RecDataModule.ids`).
        columns: the split's model-ready columns, with ``label/<task>`` (and ``mask/<task>``).
        catalogue: the :class:`~mtlframe.catalogue.Catalogue`.
        split: ``val`` (exclude training items) or ``test`` (exclude training and validation items).
        task: the retrieval task whose label 1 marks a positive.
    """
    from mtlframe.catalogue import NOT_INPUTS

    user = ids[split]["user"].long().cpu()
    item = ids[split]["item"].long().cpu()
    known = user != 0
    known_rows = torch.nonzero(known).flatten()
    codes, first = np.unique(user[known_rows].numpy(), return_index=True)
    users = torch.from_numpy(codes).long()
    rows = known_rows[torch.from_numpy(first).long()]
    history = ["train"] + (["val"] if split == "test" and "val" in ids else [])
    top = max([int(user.max()) if len(user) else 0] + [int(ids[h]["user"].max()) for h in history if len(ids[h]["user"])])
    lookup = torch.full((top + 1,), -1, dtype=torch.long)
    lookup[users] = torch.arange(len(users))
    n = len(users)

    label = columns[label_key(task)].cpu()
    positive = known & (label == 1)
    mask = columns.get(mask_key(task))
    if mask is not None:
        positive &= mask.cpu().bool()
    r, codes_pos = lookup[user[positive]], item[positive]
    p = catalogue.positions(codes_pos)
    positives = CSR.from_pairs(r[p >= 0], p[p >= 0], n)
    unreachable = CSR.from_pairs(r[p < 0], codes_pos[p < 0], n).lengths()

    ex_rows, ex_cols = [], []
    for h in history:
        hr, hp = lookup[ids[h]["user"].long().cpu()], catalogue.positions(ids[h]["item"].long().cpu())
        keep = (hr >= 0) & (hp >= 0)
        ex_rows.append(hr[keep])
        ex_cols.append(hp[keep])
    exclude = CSR.from_pairs(torch.cat(ex_rows), torch.cat(ex_cols), n)
    inputs = take({k: v for k, v in columns.items() if not k.startswith(NOT_INPUTS)}, rows)
    return RankingSplit(users, inputs, positives, exclude, unreachable,
                        catalogue.counts[catalogue.items].double(), int((~known).sum()))
