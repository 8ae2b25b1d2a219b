"""SCAR-Net loss: L = L_seg + lambda * L_rec, with partial labels.

Partial-label (marginal) segmentation loss: a data set that labels only some structures says
nothing about the others, so for each sample the probabilities of the classes its set does NOT
label are merged into background before cross-entropy and soft Dice. A vertebra-only case then
never teaches "disc = background" (a disc predicted there simply counts as background), and the
reverse for a disc-only case. Key-point-only (weak) cases have no mask and feed L_rec only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossTerms:
    total: torch.Tensor
    seg_ce: torch.Tensor
    seg_dice: torch.Tensor
    rec: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items()}


def marginal_log_probs(logits: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
    """Log-probabilities where each sample's unlabelled classes are merged into background.

    logits: (N, C, H, W); class_mask: (N, C) bool, True for classes the sample's set labels
    (background must be True). Returns (N, C, H, W); unlabelled channels get the most negative
    float, so they carry no probability and no gradient.
    """
    logp = F.log_softmax(logits, dim=1)
    m = class_mask[:, :, None, None]
    unl = (~m).clone()
    unl[:, 0] = True  # background absorbs the unlabelled classes
    neg = torch.finfo(logp.dtype).min
    bg = torch.logsumexp(logp.masked_fill(~unl, neg), dim=1, keepdim=True)
    out = logp.masked_fill(~m, neg)
    return torch.cat([bg, out[:, 1:]], dim=1)


def partial_ce(logits, target, class_mask, sample_weight) -> torch.Tensor:
    logp = marginal_log_probs(logits, class_mask)
    nll = F.nll_loss(logp, target, reduction="none").mean(dim=(1, 2))
    w = sample_weight.to(nll.dtype)
    return (nll * w).sum() / w.sum().clamp_min(1)


def partial_soft_dice(logits, target, class_mask, sample_weight, eps: float = 1.0):
    """1 - mean soft Dice over foreground classes, each over the samples that label it."""
    probs = marginal_log_probs(logits, class_mask).exp()
    n, c = probs.shape[:2]
    onehot = F.one_hot(target, c).permute(0, 3, 1, 2).to(probs.dtype)
    use = class_mask[:, 1:] & (sample_weight[:, None] > 0)  # (N, C-1)
    inter = (probs[:, 1:] * onehot[:, 1:]).sum(dim=(2, 3))
    denom = (probs[:, 1:] + onehot[:, 1:]).sum(dim=(2, 3))
    w = use.to(probs.dtype)
    # batch Dice per class (sums over the samples labelling it), more stable than per sample
    dice = (2 * (inter * w).sum(0) + eps) / ((denom * w).sum(0) + eps)
    present = use.any(0)
    if not present.any():
        return logits.sum() * 0
    return 1 - dice[present].mean()


def heatmap_loss(pred, target, kp_mask, pos_weight: float = 0.0) -> torch.Tensor:
    """MSE on the key-point heatmaps this sample's set supervises, weighted ``1 + pos_weight*t``.

    Why the weight: a sigma-1.5-cell Gaussian covers ~7 of the 4,096 cells of a 256 px crop, so
    plain mean MSE is ~0.002 for an all-zero prediction; even times lambda=50 that signal is
    too weak against the segmentation loss and the first full run collapsed to zero heatmaps
    (key-point error ~52 mm). Weighting the cells by the target keeps the optimum (the target)
    and multiplies the pull on the peaks by ``1 + pos_weight``.
    """
    se = ((pred - target) ** 2 * (1 + pos_weight * target)).mean(dim=(2, 3))  # (N, K)
    w = kp_mask.to(se.dtype)
    return (se * w).sum() / w.sum().clamp_min(1)


def scar_loss(out, batch, rec_weight: float, heatmap_pos_weight: float = 0.0) -> LossTerms:
    """``batch``: tensors labels (N,H,W), class_mask (N,C), has_seg (N,), heatmaps, kp_mask."""
    sw = batch["has_seg"].float()
    ce = partial_ce(out.logits, batch["labels"], batch["class_mask"], sw)
    dice = partial_soft_dice(out.logits, batch["labels"], batch["class_mask"], sw)
    rec = heatmap_loss(out.heatmaps, batch["heatmaps"], batch["kp_mask"], heatmap_pos_weight)
    return LossTerms(total=ce + dice + rec_weight * rec, seg_ce=ce, seg_dice=dice, rec=rec)
