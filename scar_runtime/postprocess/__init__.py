"""3D post-processing that knows the spine (working layout; see ``chain.py`` for the axes).

1. Structures: 6-connected components of each kind (bodies, discs, sacrum); fragments below a
   size floor go; a component the network gave two classes in large parts is split by class.
2. The column: a smooth curve fitted robustly through them (``chain.py``). Structures are cut to
   the column's radius, dropped when off it, ordered head to feet, merged when one structure
   came in pieces, cut to the height between their neighbours; structures far larger than the
   median of their kind are cut back to that.
3. Names by counting along the column from an anchor (``naming.py``): the sacrum when in view
   (the S1 class, or the lowest disc with the image going on below it), else T12 / the T12-L1
   disc (weighted votes), else the network's own classes. Thoracic structures above T12
   are dropped. Key-points are moved so that key-point k lies inside structure k.
4. Plausibility: fewer than ``min_lumbar_structures`` named lumbar structures, or structures far
   too small for lumbar ones (a cervical spine, a knee, noise) -> ``lumbar_spine_found`` False
   with a reason, and no lumbar labels at all.
5. Holes inside each structure are filled; the report says what changed, which anchor named the
   levels, how confident that is, and any transitional-anatomy warning.
"""

from scar_runtime.postprocess.column import postprocess
from scar_runtime.postprocess.config import PostprocessConfig, PostprocessReport

__all__ = ["PostprocessConfig", "PostprocessReport", "postprocess"]
