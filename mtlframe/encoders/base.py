"""The encoder contract: batch columns -> one ``[B, d]`` tensor."""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
from torch import nn



class Encoder(nn.Module):
    """Base class of feature encoders.

    A subclass's ``__init__`` signature is its recipe schema: explicit typed parameters, with
    ``features: list[str]`` (the columns it encodes, from the recipe) and the injected keyword
    ``feature_info: dict[str, FeatureInfo]`` (fitted vocabularies and lengths; never written in
    a recipe). It sets :attr:`output_dim`.

    Class attributes:
        accepts: feature types this encoder can encode; the builder checks every listed feature
            against it and reports a recipe error otherwise.
        injected: constructor parameters the builder fills in.

    Data-side preparation: an encoder that needs columns the preprocessor does not produce (raw
    text, say) overrides :meth:`featurize`, which the data module calls once per split, off the
    training hot path; the tensors it returns join the batch under the keys it chooses.
    """

    accepts: ClassVar[frozenset[str]] = frozenset()
    injected: ClassVar[tuple[str, ...]] = ("feature_info",)
    output_dim: int

    def featurize(self, raw: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Turn raw columns (``name -> [N]`` numpy arrays, strings for text) into tensors.

        Returns ``{batch_key: [N, ...] tensor}``; the default needs nothing and returns ``{}``.
        """
        return {}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        """Encode a batch. Returns ``[B, output_dim]``."""
        raise NotImplementedError
