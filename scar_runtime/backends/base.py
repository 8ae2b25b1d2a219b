"""The runner interface every backend implements (the template of Polygraphy's BaseRunner)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from scar_runtime.core.errors import ModelError
from scar_runtime.model_meta import INPUT_NAME, OUTPUT_NAMES, ModelMetadata


class Runner(ABC):
    """Load a model (``activate``), run a batch (``infer``), free it (``deactivate``).

    ``infer`` takes the network input ``(N, C, H, W)`` float32 (C = the model's input channels:
    1, or 2K + 1 for a 2.5D model) and returns a dict of new arrays (the caller may keep them)
    with ``probs`` (N, classes, H, W), ``heatmaps`` (N, 10, H/4, W/4) and ``keypoints``
    (N, 10, 2), all float32. Usable as a context manager. ``metadata`` is readable after
    ``activate``.

    The base owns the bookkeeping (``is_active``, the activation guard, the input and output
    checks); a backend writes ``activate_impl`` (load, set ``metadata``), ``infer_impl`` (a
    contiguous float32 batch in, the three outputs out) and ``deactivate_impl``.
    """

    name = "runner"

    def __init__(self):
        self.metadata: ModelMetadata | None = None
        self.is_active = False

    def activate(self) -> None:
        if self.is_active:
            raise RuntimeError(f"{self.name} runner is already active")
        self.activate_impl()
        self.is_active = True

    def infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner: call activate() first")
        if np.ndim(image) != 4:
            raise ValueError(f"{self.name} runner: the input is (N, C, H, W), not shape "
                             f"{np.shape(image)}")
        outputs = self.infer_impl(np.ascontiguousarray(image, dtype=np.float32))
        missing = [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise RuntimeError(f"{self.name} runner returned no {', '.join(missing)}")
        return outputs

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, image: np.ndarray) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...

    @property
    def description(self) -> str:
        return self.name

    def __enter__(self) -> Runner:
        if not self.is_active:
            self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()


def check_io_names(names_in: Sequence[str], names_out: Sequence[str], where: str) -> None:
    """A loaded graph must have scar-net's one input and (at least) its three outputs."""
    if list(names_in) != [INPUT_NAME] or not set(OUTPUT_NAMES) <= set(names_out):
        raise ModelError(f"{where}: inputs {list(names_in)} / outputs {list(names_out)} are not "
                         f"those of a scar-net model")
