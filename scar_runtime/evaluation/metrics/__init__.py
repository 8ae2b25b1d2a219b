"""Segmentation and level-identification metrics for one case and for a set of cases.

Everything here works on numpy arrays (model class ids 0..10, see ``labels.py``) plus the voxel
spacing or the voxel->world affine, so it serves ``scar evaluate``, the benchmarks and the training
validation loop alike without reading files and without torch.

Partial labels are the normal case with public spine data (a set labels only vertebrae, or only
discs). A structure absent from the ground truth is therefore *not labelled*: unknown, not
background. It is reported as ``NOT_LABELLED`` with ``None`` metrics and never scored as 0 or 1,
and it is left out of every mean. A structure present in the ground truth is labelled, and then
every voxel of the volume is known to be either that structure or not.

Speed: each label volume is scanned once for bounding boxes (``scipy.ndimage.find_objects``)
and once for surfaces; per-structure work then happens on the union bounding box of prediction
and ground truth, and surface distances on surface points only, so a stray blob far from its
structure cannot make a case slow.
"""

from scar_runtime.evaluation.metrics.false_positives import (
    FAR_FP_MARGIN_MM,
    KEYPOINT_EXTENT_MM,
    OTHER_KIND_MARGIN_MM,
    far_false_positive_share,
    far_fp_stats,
    keypoint_reference_far_share,
    masked_case_far_share,
    size_outlier_ratio,
)
from scar_runtime.evaluation.metrics.masks import dice, hd95
from scar_runtime.evaluation.metrics.points import (
    centroids,
    keypoint_errors,
    level_identification,
)
from scar_runtime.evaluation.metrics.scores import (
    NOT_LABELLED,
    STATUS_MISSING,
    STATUS_OK,
    CaseScore,
    StructureScore,
    evaluate_case,
    summarize,
)

__all__ = [
    "FAR_FP_MARGIN_MM",
    "KEYPOINT_EXTENT_MM",
    "NOT_LABELLED",
    "OTHER_KIND_MARGIN_MM",
    "STATUS_MISSING",
    "STATUS_OK",
    "CaseScore",
    "StructureScore",
    "centroids",
    "dice",
    "evaluate_case",
    "far_false_positive_share",
    "far_fp_stats",
    "hd95",
    "keypoint_errors",
    "keypoint_reference_far_share",
    "level_identification",
    "masked_case_far_share",
    "size_outlier_ratio",
    "summarize",
]
