"""The runner interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from scar_runtime.model_meta import ModelMetadata


class Runner(ABC):
    """Load a model (``activate``), run a batch (``infer``), free it (``deactivate``).

    ``infer`` takes the network input ``(N, C, H, W)`` float32 (C = the model's input channels:
    1, or 2K + 1 for a 2.5D model) and returns a dict of new arrays (the caller may keep them)
    with ``probs`` (N, classes, H, W), ``heatmaps`` (N, 10, H/4, W/4) and ``keypoints``
    (N, 10, 2), all float32. Usable as a context manager. ``metadata`` is readable after
    ``activate``.
    """

    name = "runner"

    def __init__(self):
        self.metadata: ModelMetadata | None = None
        self.is_active = False

    @abstractmethod
    def activate(self) -> None: ...

    @abstractmethod
    def infer(self, image: np.ndarray) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def deactivate(self) -> None: ...

    @property
    def description(self) -> str:
        return self.name

    def __enter__(self) -> Runner:
        if not self.is_active:
            self.activate()
        return self

    def __exit__(self, *exc) -> None:
        if self.is_active:
            self.deactivate()
