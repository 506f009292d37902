"""Shared id tables: one encoder reading the embedding table another encoder owns.

A ``sequence`` feature with ``share_with: item_id`` holds ``item_id`` codes (``seq_code - 1``), so
the history and the target item live in one embedding space. The table stays in the
``embedding`` encoder that encodes ``item_id`` (one fused table serves all its features); a
sequence encoder reads it through a :class:`SharedTables` object, bound after every encoder is
built (:func:`bind_tables`, called by :meth:`mtlframe.build.Builder.encoders`). The object is not
an ``nn.Module``, so the owning encoder is not registered a second time as a submodule: its
parameters appear once in ``model.parameters()`` and in checkpoints, and gradients from both
readers add up in the one parameter.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtlframe.errors import ArgumentError


class SharedTables:
    """``lookup(feature, codes)`` over the categorical tables of a model's encoders.

    Args:
        encoders: the model's encoders; those with a ``lookup(feature, codes)`` method and a
            ``single`` list of features (the ``embedding`` encoder) serve their features.

    Example::

        tables = SharedTables(encoders)
        tables.lookup("item_id", codes)   # codes [B, L] -> [B, L, d]
    """

    def __init__(self, encoders: Sequence[nn.Module]) -> None:
        self._owner: dict[str, nn.Module] = {}
        for enc in encoders:
            if callable(getattr(enc, "lookup", None)):
                for f in getattr(enc, "single", ()):
                    self._owner.setdefault(f, enc)

    def __contains__(self, feature: str) -> bool:
        return feature in self._owner

    def features(self) -> list[str]:
        """The features whose table can be looked up."""
        return list(self._owner)

    def dim(self, feature: str) -> int:
        """Width ``d`` of ``feature``'s table."""
        return int(self._owner[feature].fused.dim)

    def lookup(self, feature: str, codes: torch.Tensor) -> torch.Tensor:
        """``codes [...]`` (``feature``'s categorical codes) -> ``[..., d]`` rows of its table.

        Raises:
            KeyError: no encoder serves ``feature``.
        """
        return self._owner[feature].lookup(feature, codes)


def bind_tables(encoders: Sequence[nn.Module]) -> list[tuple[int, ArgumentError]]:
    """Give every encoder that has ``bind_tables`` the :class:`SharedTables` of ``encoders``.

    Returns ``(encoder index, ArgumentError)`` for each encoder that refused the tables (its
    ``share_with`` feature has no table, widths differ), for the caller to report at that
    encoder's recipe key; ``[]`` when all bound.
    """
    tables = SharedTables(encoders)
    problems = []
    for i, enc in enumerate(encoders):
        bind = getattr(enc, "bind_tables", None)
        if bind is None:
            continue
        try:
            bind(tables)
        except ArgumentError as exc:
            problems.append((i, exc))
    return problems
