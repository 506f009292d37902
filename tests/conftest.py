"""Shared fixtures. Tests run offline; real data comes from ../shared/data beside the checkout."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("MTLFRAME_STRICT_PLUGINS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A shell starts a background job (`pytest ... &`) with Ctrl-C ignored, and Python keeps it ignored:
# the tests of the Ctrl-C resume path would then see no KeyboardInterrupt. They test Python's
# default handler, so the suite runs with it whatever the shell did.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def ml100k() -> Path:
    path = SHARED_DATA / "ml-100k"
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {path}")
    return path


@pytest.fixture(scope="session")
def toy_ranking_log():
    """A function building the tiny implicit-feedback log the ranking tests train on: 40 users × 8
    of 30 items (seeded), ``age`` per user, ``genre`` per item, ``watch`` = 1, a random ``like`` and
    a row-order timestamp ``ts``; ``extra`` (user, item) pairs are appended before the columns are
    filled, so the first 320 rows are the same whatever is appended."""
    import numpy as np
    import pandas as pd

    def make(extra: list[tuple[int, int]] = ()) -> "pd.DataFrame":
        rng = np.random.default_rng(0)
        rows = [(u, int(i)) for u in range(40) for i in rng.choice(30, size=8, replace=False)] + list(extra)
        frame = pd.DataFrame(rows, columns=["user", "item"])
        frame["age"] = 20 + frame["user"] % 30
        frame["genre"] = "g" + (frame["item"] % 4).astype(str)
        frame["watch"] = 1.0
        frame["like"] = (rng.random(len(frame)) < 0.5).astype(float)
        frame["ts"] = np.arange(len(frame))
        return frame

    return make
