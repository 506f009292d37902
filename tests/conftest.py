"""Shared fixtures. Tests run offline; real data comes from ../shared/data beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MTLFRAME_STRICT_PLUGINS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
