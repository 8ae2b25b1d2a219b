"""Class probabilities averaged with the neighbouring sagittal slices before the argmax.

The network labels each slice on its own (2.5D models see their neighbours, but still decide each
slice alone), so at a structure's lateral edges, where partial volume makes one slice ambiguous,
neighbouring slices can disagree. Averaging each slice's softmax with its two neighbours, weights
``w, 1 - 2w, w`` (the edge slice repeated at the volume's ends, as the 2.5D input does), is a
cheap 3-slice ensemble; ``w = 0.25`` was picked before measuring, not tuned, and its gain on
the val split is in MODEL_CARD.md. A single-slice image is unchanged.

Streaming: batches arrive in slice order; a slice is decided once its right neighbour is in,
so at most ``batch + 2`` slices of probabilities are held.

Speed: the mix and the argmax run one class plane at a time (a 384 x 384 plane is 590 kB and
stays in cache), a running maximum with a strict ``>`` so ties keep the lower class as
``np.argmax`` does. ``np.argmax(axis=0)`` over a (C, H, W) slice walks memory with a stride of a
whole plane, and the whole-slice form cost about twice as much (docs/performance.md), for the
same labels.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class SliceSmoother:
    def __init__(self, n_slices: int, weight: float):
        if not 0.0 <= weight <= 1.0 / 3.0:
            raise ValueError(f"slice smoothing weight must be in [0, 1/3], not {weight}")
        self.n = n_slices
        self.weight = float(weight)
        self._held: list[np.ndarray] = []  # (C, H, W) probabilities of slices _first, _first+1
        self._first = 0
        self._next = 0  # first slice not yet decided
        self._scratch: tuple[np.ndarray, ...] | None = None  # per-plane buffers of _decide

    def push(self, start: int, probs: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Add the (B, C, H, W) probabilities of slices ``start..start+B-1`` (in order); yields
        ``(first_slice, (b, H, W) uint8 labels)`` for every slice that can now be decided."""
        if start != self._first + len(self._held):
            raise ValueError("slice batches must arrive in order, without gaps")
        probs = np.asarray(probs, dtype=np.float32)
        # one (C, H, W) view per slice: no batch is concatenated or gathered (a slice is
        # megabytes, and copies made the smoothing cost more than the argmax)
        seq = self._held + list(probs)
        end = self._first + len(seq)  # slices received
        # decide slices < last: all received ones at the end (or without smoothing)
        last = end if end == self.n or self.weight == 0.0 else end - 1
        if last > self._next:
            labels = np.empty((last - self._next,) + probs.shape[2:], np.uint8)
            for j, i in enumerate(range(self._next, last)):
                self._decide(seq, i, labels[j])
            yield self._next, labels
            self._next = last
        # keep the left neighbour of the next slice and the undecided ones, as copies: the
        # caller's batch array is not ours to hold
        keep = self._next if self.weight == 0.0 else max(self._first, self._next - 1)
        n_held = len(self._held)
        self._held = [p if k < n_held else p.copy()
                      for k, p in enumerate(seq) if self._first + k >= keep]
        self._first = keep

    def _decide(self, seq: list[np.ndarray], i: int, labels: np.ndarray) -> None:
        """``labels[:] = argmax_c((1 - 2w) * centre + w * (left + right))`` for slice i, edges
        repeated, computed class plane by class plane (see the module's note on speed)."""
        w = self.weight
        centre = left = right = seq[i - self._first]
        if w != 0.0:  # without smoothing the right neighbour may not have arrived yet
            left = seq[max(i - 1, 0) - self._first]
            right = seq[min(i + 1, self.n - 1) - self._first]
        plane = centre.shape[1:]
        if self._scratch is None or self._scratch[0].shape != plane:
            self._scratch = (np.empty(plane, np.float32), np.empty(plane, np.float32),
                             np.empty(plane, np.float32), np.empty(plane, bool))
        best, mixed, tmp, higher = self._scratch
        labels[...] = 0
        for c in range(centre.shape[0]):
            if w == 0.0:
                value = centre[c]
            else:  # the same operations, in the same order, as the whole-slice form
                np.add(left[c], right[c], out=mixed)
                mixed *= w
                np.multiply(centre[c], 1.0 - 2 * w, out=tmp)
                mixed += tmp
                value = mixed
            if c == 0:
                best[...] = value
                continue
            np.greater(value, best, out=higher)
            np.copyto(labels, c, where=higher)
            np.maximum(best, value, out=best)
