"""``none``: no sampling; every epoch trains on the training rows as they are."""
from __future__ import annotations

from mtlframe.samplers.base import Sampler


class NoSampler(Sampler):
    """Identity sampler (the default)."""

    resamples = False

    def __init__(self, *, feature_info, tasks) -> None:  # noqa: ANN001 - injected only
        super().__init__(feature_info, tasks)
