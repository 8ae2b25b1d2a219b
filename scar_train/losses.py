"""SCAR-Net loss: L = L_seg + lambda * L_rec, with partial labels.

Partial-label (marginal) segmentation loss: a data set that labels only some structures says
nothing about the others, so for each sample the probabilities of the classes its set does NOT
label are merged into background before cross-entropy and soft Dice.

Merged everywhere, that taught "a disc is not background" only on the few disc-labelled cases, and
the shipped v0.1 model painted "L5/S1" over the background of most full-field volumes. So the merge
is per pixel: an unlabelled class c is merged only within ``UNKNOWN_MARGIN_MM[c]`` of a structure
the set labels (where c could really lie: a disc touches the vertebrae around it; L1 lies within
one body height of the L1/L2 disc; T12 can be two levels above the first labelled disc). Farther
out it is known background, also on key-point-only cases, whose pixels far from every annotated
centre feed the cross-entropy this way (they still have no Dice term).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scar_runtime import labels as L

# mm from the nearest labelled structure beyond which an UNLABELLED class is known background.
# Vertebral bodies: one body height + disc (~35 mm) from a labelled disc. Discs: they touch their
# vertebrae. Anchors reach farther: from L1/L2 (the first disc a disc-only set labels) T12 ends
# ~75 mm up; S1 extends ~40 mm below L5 and lower sacral segments are not S1.
UNKNOWN_MARGIN_MM: dict[int, float] = {
    **{c: 35.0 for c in L.VERTEBRA_IDS},
    **{c: 15.0 for c in L.DISC_IDS},
    L.T12_ID: 80.0,
    L.T12_L1_ID: 45.0,
    L.S1_ID: 60.0,
}


def unknown_margins(num_classes: int, device=None) -> torch.Tensor:
    """(C,) margins in mm; background 0 (never unknown)."""
    m = torch.zeros(num_classes, device=device)
    for c, v in UNKNOWN_MARGIN_MM.items():
        if c < num_classes:
            m[c] = v
    return m


@dataclass
class LossTerms:
    total: torch.Tensor
    seg_ce: torch.Tensor
    seg_dice: torch.Tensor
    rec: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items()}


def known_classes(class_mask: torch.Tensor, distance: torch.Tensor | None) -> torch.Tensor:
    """(N, C, H, W) or (N, C, 1, 1) bool: classes with a target at each pixel.

    class_mask: (N, C) classes the sample's set labels; distance: (N, H, W) mm to the nearest
    labelled structure, or None (then the set's classes hold everywhere: the plain marginal loss).
    """
    m = class_mask[:, :, None, None]
    if distance is None:
        return m
    margins = unknown_margins(class_mask.shape[1], class_mask.device)[None, :, None, None]
    return m | (distance[:, None] >= margins)


def marginal_log_probs(logits: torch.Tensor, class_mask: torch.Tensor,
                       distance: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities where each sample's unknown classes are merged into background.

    logits: (N, C, H, W); class_mask: (N, C) bool, True for classes the sample's set labels
    (background must be True); distance: see :func:`known_classes`. Returns (N, C, H, W);
    unknown channels get the most negative float, so they carry no probability and no gradient.
    """
    logp = F.log_softmax(logits, dim=1)
    m = known_classes(class_mask, distance)
    unl = ~m  # a new tensor: safe to edit
    unl[:, 0] = True  # background absorbs the unknown classes
    neg = torch.finfo(logp.dtype).min
    bg = torch.logsumexp(logp.masked_fill(~unl, neg), dim=1, keepdim=True)
    out = logp.masked_fill(~m, neg)
    return torch.cat([bg, out[:, 1:]], dim=1)


def partial_ce(logits, target, class_mask, sample_weight, distance=None,
               pixel_weight=None) -> torch.Tensor:
    """Per-sample mean of the (pixel-weighted) NLL, then the sample-weighted mean of those.

    ``pixel_weight`` (N, H, W) multiplies each pixel's NLL and is not renormalised (as U-Net's
    weight map): up-weighted pixels add loss rather than take it from the others."""
    logp = marginal_log_probs(logits, class_mask, distance)
    nll = F.nll_loss(logp, target, reduction="none")
    if pixel_weight is not None:
        nll = nll * pixel_weight.to(nll.dtype)
    nll = nll.mean(dim=(1, 2))
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
    """``batch``: tensors labels (N,H,W), class_mask (N,C), has_seg (N,), heatmaps, kp_mask and
    optionally distance (N,H,W) and ce_weight (N,H,W). With ``distance`` every sample feeds the
    cross-entropy (a key-point sample only where it is far from its centres); without it only mask
    samples do. ``ce_weight`` weights the cross-entropy per pixel (the body-disc gaps: data.py)."""
    sw = batch["has_seg"].float()
    distance = batch.get("distance")
    ce_w = torch.ones_like(sw) if distance is not None else sw
    ce = partial_ce(out.logits, batch["labels"], batch["class_mask"], ce_w, distance,
                    batch.get("ce_weight"))
    dice = partial_soft_dice(out.logits, batch["labels"], batch["class_mask"], sw)
    rec = heatmap_loss(out.heatmaps, batch["heatmaps"], batch["kp_mask"], heatmap_pos_weight)
    return LossTerms(total=ce + dice + rec_weight * rec, seg_ce=ce, seg_dice=dice, rec=rec)
