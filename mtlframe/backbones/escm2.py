"""``escm2``: Entire Space Counterfactual Multi-task Model.

Wang, Chang, Luo, Cao, Peng, Cheng, He, Feng. "ESCM²: Entire Space Counterfactual Multi-Task
Model for Post-Click Conversion Rate Estimation." SIGIR 2022.

The doubly-robust variant uses the joint-learning imputation of Wang, Zhang, Sun, Qi.
"Doubly Robust Joint Learning for Recommendation on Data Missing Not at Random." ICML 2019.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mtlframe.backbones.base import AuxLoss
from mtlframe.backbones.esmm import ESMM
from mtlframe.features import label_key, mask_key
from mtlframe.layers import MLP

_MODES = ("ips", "dr")


class ESCM2(ESMM):
    """ESMM plus a counterfactual risk that debiases the conditional (CVR) tower.

    ESMM's product ``pCTCVR = pCTR x pCVR`` (see :class:`~mtlframe.backbones.esmm.ESMM`) is kept;
    :meth:`auxiliary_loss_sums` adds, for each funnel step ``k >= 2`` (``o`` = label of step ``k-1``,
    e.g. click; ``r`` = label of step ``k``; ``e = CE(r, q_k)``; propensity ``\\hat o = p_{k-1}``,
    detached and clipped below at ``propensity_min``), averaged over the ``N`` impressions (under
    DDP, those of the global batch):

    .. math::
        R_{IPS} = \\frac{1}{N} \\sum_i \\frac{o_i \\, e_i}{\\hat o_i}, \\qquad
        R_{DR} = \\frac{1}{N} \\sum_i \\Big[ \\hat e_i + \\frac{o_i (e_i - \\hat e_i)}{\\hat o_i} \\Big]

    In DR, an imputation head on the step's representation predicts a pseudo-label ``\\tilde r``;
    the imputed error is ``\\hat e = CE(\\tilde r, q_k)`` (so un-clicked rows also train the CVR
    tower), and the head is trained by ``\\frac{1}{N} \\sum_i o_i (e_i - \\hat e_i)^2 / \\hat o_i``
    (DR-JL). The auxiliary loss is ``counterfactual_weight * R + imputation loss``; the task
    losses on ``p_1`` (CTR) and ``p_k`` (CTCVR) stay the module's, so the paper's
    ``L_CTR + lambda_c R + lambda_g L_CTCVR`` is obtained with the task weights.

    Args:
        hidden: widths of an MLP per task in front of its tower (``[]``: none).
        counterfactual: ``"ips"`` or ``"dr"``.
        counterfactual_weight: ``lambda_c`` (>= 0).
        propensity_min: lower clip of the propensity ``\\hat o`` (in ``(0, 1]``).
        imputation_hidden: hidden widths of each DR imputation head.
        dropout, activation, batch_norm: for the per-task MLPs.
        click: the click stage's task (the propensity's stage).
        conversion: the conversion stage's task; trained on click AND conversion.
        funnel: every stage's task in funnel order (instead of ``click``/``conversion``).
        strict: a row whose conversion is 1 and click 0 is a data error (default: a warning).
        input_dim, task_names, task_types: injected.

    Shape: as :class:`ESMM`; ``auxiliary_loss_sums`` returns named per-step sums and row counts
    (``[S - 1]`` each, so under DDP the mean is over the global batch), ``auxiliary_loss`` their
    per-batch values (named scalars).

    Raises:
        ValueError: unknown ``counterfactual``, ``counterfactual_weight < 0``, ``propensity_min``
            outside ``(0, 1]``, or ESMM's errors.

    Example::

        m = ESCM2(counterfactual="dr", click="ctr", conversion="ctcvr", input_dim=32, task_names=["ctr", "ctcvr"])
        h = m(x)
        logits = m.couple({t: towers[t](h[t]) for t in h})   # task losses on these
        aux = m.auxiliary_loss(batch, logits)   # {"escm2/dr": ..., "escm2/imputation": ...}
    """

    def __init__(self, hidden: list[int] = [], counterfactual: str = "ips",  # noqa: B006
                 counterfactual_weight: float = 0.1, propensity_min: float = 0.05,
                 imputation_hidden: list[int] = [32], dropout: float = 0.0, activation: str = "relu",  # noqa: B006
                 batch_norm: bool = False, click: str | None = None, conversion: str | None = None,
                 funnel: list[str] | None = None, strict: bool = False, *, input_dim: int,
                 task_names: list[str], task_types: dict[str, str] | None = None) -> None:
        super().__init__(hidden, dropout, activation, batch_norm, click, conversion, funnel, strict,
                         input_dim=input_dim, task_names=task_names, task_types=task_types)
        if counterfactual not in _MODES:
            raise ValueError(f"counterfactual must be one of {', '.join(_MODES)}, got '{counterfactual}'")
        if counterfactual_weight < 0:
            raise ValueError(f"counterfactual_weight must be >= 0, got {counterfactual_weight}")
        if not 0 < propensity_min <= 1:
            raise ValueError(f"propensity_min must be in (0, 1], got {propensity_min}")
        self.counterfactual = counterfactual
        self.counterfactual_weight = float(counterfactual_weight)
        self.propensity_min = float(propensity_min)
        self.imputation = nn.ModuleDict(
            {t: MLP(self.output_dims[t], imputation_hidden, dropout, activation, output_dim=1)
             for t in self.funnel[1:]} if counterfactual == "dr" else {})
        self._imputed: dict[str, torch.Tensor] | None = None
        self._conditional: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = super().forward(x)                                     # {task: (B, H)}
        if self.counterfactual == "dr":
            # pseudo-label logits, read by auxiliary_loss_sums of this same batch
            self._imputed = {t: self.imputation[t](h[t]).squeeze(-1) for t in self.funnel[1:]}  # {task: (B,)}
        return h

    def couple(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ESMM's coupling; also keeps the towers' conditional logits for :meth:`auxiliary_loss`."""
        self._conditional = {t: outputs[t].reshape(-1) for t in self.funnel}  # {task: (B,)}
        return super().couple(outputs)

    def auxiliary_loss_sums(self, batch: Mapping[str, torch.Tensor],
                            outputs: Mapping[str, torch.Tensor]) -> dict[str, AuxLoss]:
        """The counterfactual risk (and DR imputation loss) of the batch of the last forward, as
        per-row sums and row counts, one part per funnel step ``k >= 2`` (its own rows ``N_k``).

        :meth:`auxiliary_loss` (the per-batch value, ``sum_k sums[k] / N_k``) gives the class
        docstring's ``lambda_c R`` and imputation loss; the training module divides by the
        global batch's ``N_k`` under DDP instead.

        Args:
            batch: holds ``label/<task>`` (``[B]``, 0/1, NaN where missing) and optionally
                ``mask/<task>`` (``[B]`` bool; absent = every label present). A funnel step whose
                two labels are not both in the batch has a zero sum and a zero count.
            outputs: the coupled outputs (unused: the towers' conditional logits were kept by
                :meth:`couple` during the same forward).

        Returns:
            ``{"escm2/ips": AuxLoss}`` or ``{"escm2/dr": AuxLoss, "escm2/imputation": AuxLoss}``,
            each with ``sums [S - 1]`` (``lambda_c`` times the step's summed risk terms; the
            imputation sums unweighted) and ``counts [S - 1]`` (``N_k``: impressions with a known
            click whose conversion label is known or not needed); ``S`` = funnel stages. The same
            names and shapes whatever the batch holds.

        Raises:
            RuntimeError: no forward (with its coupling) has run yet.
        """
        if self._conditional is None or (self.counterfactual == "dr" and self._imputed is None):
            raise RuntimeError("ESCM2.auxiliary_loss needs the forward and couple() of the same batch first")
        cond = self._conditional
        first = cond[self.funnel[0]]
        risks, imputations, counts = [], [], []
        log_p_prev = F.logsigmoid(first)                           # (B,)  log p_{k-1}
        for prev, cur in zip(self.funnel, self.funnel[1:]):
            q = cond[cur]                                          # (B,)  conditional logit
            if label_key(prev) in batch and label_key(cur) in batch:
                o, has_o = _label(batch, prev)                     # (B,), (B,)  e.g. click
                r, has_r = _label(batch, cur)                      # (B,), (B,)  e.g. conversion
                # impressions with a known click; clicked ones also need their conversion label
                valid = has_o & (has_r | (o == 0))                 # (B,)
                prop = log_p_prev.detach().exp().clamp(min=self.propensity_min)  # (B,)
                e = F.binary_cross_entropy_with_logits(q, r, reduction="none")   # (B,)
                if self.counterfactual == "ips":
                    term = o * e / prop
                else:
                    pseudo = torch.sigmoid(self._imputed[cur])     # (B,)  imputed label
                    e_hat = F.binary_cross_entropy_with_logits(q, pseudo.detach(), reduction="none")
                    term = e_hat + o * (e - e_hat) / prop
                    e_hat_imp = F.binary_cross_entropy_with_logits(q.detach(), pseudo, reduction="none")
                    imp = o * (e.detach() - e_hat_imp) ** 2 / prop
                    imputations.append(torch.where(valid, imp, 0.0).sum())
                risks.append(self.counterfactual_weight * torch.where(valid, term, 0.0).sum())
                counts.append(valid.sum())
            else:  # a zero part: the same shapes at every step
                risks.append(q.sum() * 0.0)
                if self.counterfactual == "dr":
                    imputations.append(self._imputed[cur].sum() * 0.0)
                counts.append(torch.zeros((), dtype=torch.long, device=q.device))
            log_p_prev = log_p_prev + F.logsigmoid(q)
        n = torch.stack(counts)                                    # (S-1,)
        if self.counterfactual == "ips":
            return {"escm2/ips": AuxLoss(torch.stack(risks), n)}
        return {"escm2/dr": AuxLoss(torch.stack(risks), n), "escm2/imputation": AuxLoss(torch.stack(imputations), n)}


def _label(batch: Mapping[str, torch.Tensor], task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's labels with missing ones set to 0, and where they are present (both ``[B]``)."""
    y = batch[label_key(task)].reshape(-1).float()
    present = batch[mask_key(task)].reshape(-1).bool() if mask_key(task) in batch else ~torch.isnan(y)
    return torch.where(present, torch.nan_to_num(y), 0.0), present
