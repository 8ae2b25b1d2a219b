"""What post-processing may do (PostprocessConfig) and what it did (PostprocessReport)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PostprocessConfig:
    min_component_mm3: float = 150.0  # smaller fragments are noise (a lumbar body is ~30 cm^3)
    column_radius_mm: float = 35.0  # a body is ~45 mm deep and ~50 mm wide: half + margin
    max_offset_mm: float = 20.0  # a structure whose centre is farther off the column goes
    max_size_ratio: float = 3.0  # a structure > this x the median of its kind is cut back
    min_size_share: float = 0.15  # a piece < this x the median of its kind is a sliver
    min_keypoint_confidence: float = 0.3  # weaker key-points do not vote on level names
    keypoint_reach_mm: float = 8.0  # a key-point this close to a structure votes for it
    min_lumbar_structures: int = 3  # fewer named lumbar structures: no lumbar spine here
    # Smallest plausible lumbar sagittal cross-sections (median over the structures found):
    # a lumbar body is ~30 x 40 mm (1,200 mm^2), a disc ~10 x 40 mm; a cervical body is
    # ~15 x 16 mm (~250 mm^2).
    min_body_area_mm2: float = 450.0
    min_disc_area_mm2: float = 120.0
    # Consecutive lumbar levels are ~37 mm apart (mean body-centre distance over 41 public
    # cases, sd ~2 mm); cervical ones ~16 mm, thoracic ~25 mm at T12.
    min_level_spacing_mm: float = 27.0
    fill_holes: bool = True  # holes inside a structure (a dark nucleus, a vessel) filled
    # Softmax averaged with the neighbouring slices before the argmax (slice_smoothing.py);
    # 0 = each slice alone.
    slice_smoothing: float = 0.25
    # The network needs a roughly upright spine (training: natural tilt up to 15 degrees over 63
    # masked cases, median 5.5, plus +-10 degrees of rotation): a column that still leans more
    # than this in the image the network saw (after any straightening) is reported.
    max_tilt_deg: float = 20.0
    # A column whose axis (straighten.py) leans more than straighten_above_deg from
    # upright_axis_deg (the median of 85 masked reference cases; 5th-95th percentile -11.5 ..
    # -1) is rotated upright and segmented again, and again while the axis measured on the
    # rotated image is still more than straighten_again_deg off (a badly tilted first answer
    # under-measures the tilt), at most straighten_passes extra passes; 0 = never.
    upright_axis_deg: float = -6.0
    straighten_above_deg: float = 10.0
    straighten_again_deg: float = 4.0
    straighten_passes: int = 2


@dataclass
class PostprocessReport:
    corrections: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    order_warnings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # transitional anatomy, anchor conflicts
    lumbar_spine_found: bool = True
    reason: str | None = None
    anchor: str | None = None  # "sacrum" | "T12" | "network classes"
    naming_confidence: float | None = None
    keypoint_moves: list[str] = field(default_factory=list)
    # angle (degrees) between the head-feet axis and the line from the column's top to its
    # bottom structure, in the sagittal plane
    column_tilt_deg: float | None = None
    # the column's axis in the input image (straighten.py), the rotation it was segmented at
    # (None: as it came) and how many extra passes that took
    column_axis_deg: float | None = None
    straightened_deg: float | None = None
    straighten_passes: int = 0
    # key-point index -> mm (the frame of the input key-points), moved inside their structures
    keypoints_mm: dict[int, np.ndarray] | None = None

    def to_dict(self) -> dict:
        return {"lumbar_spine_found": self.lumbar_spine_found, "reason": self.reason,
                "level_naming": {"anchor": self.anchor, "confidence": self.naming_confidence},
                "warnings": self.warnings, "corrections": self.corrections,
                "removed": self.removed, "order_warnings": self.order_warnings,
                "keypoint_moves": self.keypoint_moves, "column_tilt_deg": self.column_tilt_deg,
                "straightening": {"column_axis_deg": self.column_axis_deg,
                                  "rotated_deg": self.straightened_deg,
                                  "passes": self.straighten_passes}}
