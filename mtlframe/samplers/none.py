"""``none``: no sampling; every epoch trains on the training rows as they are."""
from __future__ import annotations

from mtlframe.samplers.base import Sampler


class NoSampler(Sampler):
    """Identity sampler (the default)."""
