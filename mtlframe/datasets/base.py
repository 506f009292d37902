"""The dataset contract: a loader that returns one table plus its column schema."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mtlframe.errors import DataError, file_problem
from mtlframe.features import FEATURE_TYPES


@dataclass
class Table:
    """A loaded dataset.

    Attributes:
        frame: one row per example; feature columns, label columns, optional timestamp.
        features: ``column -> type`` (one of ``categorical``, ``numeric``, ``text``,
            ``multi_categorical``, ``sequence``) for every column usable as model input.
            ``multi_categorical`` cells hold ``|``-separated tokens (e.g. genres ``"Action|Comedy"``),
            ``sequence`` cells an ordered ``|``-separated id list, oldest first.
        labels: columns usable as task labels (NaN where missing).
        timestamp: column with an event time (enables the ``time`` split), or ``None``.
        user: user-id column, or ``None``.
        item: item-id column (for negative sampling and the cold-start split), or ``None``.
        source: where the data came from (a path), for error messages.
        folds: the dataset's own cross-validation folds (the ``predefined`` split): ``{k: row
            indices of fold k's test part}`` (1-based ``k``, int64), or ``None`` when it has none.
    """

    frame: pd.DataFrame
    features: dict[str, str]
    labels: list[str]
    timestamp: str | None = None
    user: str | None = None
    item: str | None = None
    source: str = ""
    credit: str = ""
    extra: dict = field(default_factory=dict)
    folds: dict[int, np.ndarray] | None = None

    def __post_init__(self) -> None:
        for col, typ in self.features.items():
            if typ not in FEATURE_TYPES:
                raise DataError(f"{self.source}: feature column '{col}' has type '{typ}'; "
                                f"types are {', '.join(FEATURE_TYPES)}")
        missing = [c for c in [*self.features, *self.labels] if c not in self.frame.columns]
        if missing:
            raise DataError(f"{self.source}: columns {missing} are declared but not in the data; "
                            f"columns present: {list(self.frame.columns)}")


class RecDataset:
    """Base class of dataset loaders.

    A subclass's ``__init__`` takes explicit typed parameters (its recipe schema, e.g.
    ``path: str | None = None``). :meth:`prepare` fetches files once per machine (called from
    ``LightningDataModule.prepare_data``, rank zero only); :meth:`load` reads them into a
    :class:`Table` (called on every rank).

    A dataset with its own cross-validation folds (the ``predefined`` split) sets
    :attr:`NUM_FOLDS` and returns them as :attr:`Table.folds`.
    """

    #: the number of the dataset's predefined folds (``None``: it has none)
    NUM_FOLDS: int | None = None

    def prepare(self) -> None:
        """Download or otherwise make the raw files available. Default: nothing to do."""

    def load(self) -> Table:  # pragma: no cover
        raise NotImplementedError


def require_file(path: str | Path, what: str, hint: str) -> Path:
    """Return ``path`` as a Path, or raise a :class:`DataError` naming it and the fix."""
    p = Path(path).expanduser()
    problem = file_problem(p)
    if problem:
        raise DataError(f"{what}: {p} {problem}. {hint}")
    return p
