"""The head's loss: binary cross-entropy on logits over the labels an archive gives.

NIH labels every finding of every image; CheXpert, MIMIC and private archives leave some
unmentioned or uncertain, and those are missing (NaN targets), not negative. A missing label
adds nothing to the loss or to its denominator, so an image teaches what its report says
and nothing else. Where every label is known this is PyTorch's ``BCEWithLogitsLoss`` (mean),
and the tests hold it so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedBCEWithLogits(nn.Module):
    """Mean BCE-with-logits over the known targets; ``pos_weight`` weighs each finding's
    positives (negatives / positives on the training split, as in the 2018 recipe)."""

    pos_weight: torch.Tensor | None

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(targets)
        per_label = F.binary_cross_entropy_with_logits(
            logits, torch.where(known, targets, 0.0), pos_weight=self.pos_weight, reduction="none")
        return (per_label * known).sum() / known.sum().clamp_min(1)


__all__ = ["MaskedBCEWithLogits"]
