"""What a task type decides: the loss, and how raw outputs become predictions."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(task_type: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row loss ``[B]``.

    * binary: binary cross-entropy on logits ``output [B]``, targets 0/1.
    * regression: squared error, ``output [B]``.
    * multiclass: cross-entropy on logits ``output [B, C]``, integer targets.
    * retrieval: binary cross-entropy on the pair's logit (the pointwise loss used with data-side
      negative samplers; with a model-side sampler the module uses the sampled softmax of
      :func:`mtlframe.retrieval.sampled_softmax_rows` instead).
    """
    if task_type in ("binary", "retrieval"):
        return F.binary_cross_entropy_with_logits(output, target, reduction="none")
    if task_type == "regression":
        return (output - target) ** 2
    if task_type == "multiclass":
        return F.cross_entropy(output, target.long(), reduction="none")
    raise ValueError(f"unknown task type '{task_type}'")


def to_prediction(task_type: str, output: torch.Tensor) -> torch.Tensor:
    """Probability ``[B]`` (binary; retrieval: the sigmoid of the pair's logit, a monotone score that
    is a calibrated probability only under the pointwise loss), class probabilities ``[B, C]``
    (multiclass) or value ``[B]``."""
    if task_type in ("binary", "retrieval"):
        return torch.sigmoid(output)
    if task_type == "multiclass":
        return torch.softmax(output, dim=-1)
    return output
