"""What every stage of one fill call shares, built once: the image, the mask, the brain, the mirror, the model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..mirror import mirror_lr


@dataclass
class FillContext:
    """One fill call's inputs. ``image``: normalised float32 (brain ~[0, 1], background 0); ``mask``: bool,
    1 = to fill; ``affine`` tells which voxel axis is left-right (None: axis 0). ``model``, ``device`` and
    ``progress`` are the call's fill model (its ``refiner`` too), torch device and progress bar, set by
    :func:`usb_prep.fill.pipeline.run_fill`."""

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray | None = None
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    seed: int = 0
    model: Any = None
    device: Any = "cpu"
    progress: Any = None

    def __post_init__(self):
        self.image = np.asarray(self.image, np.float32)
        self.mask = np.asarray(self.mask, bool)
        if self.image.shape != self.mask.shape:
            raise ValueError(f"image {self.image.shape} and mask {self.mask.shape} differ in shape")

    @cached_property
    def brain(self) -> np.ndarray:
        return self.image > 0

    @cached_property
    def mirrored(self) -> np.ndarray:
        """The image reflected across its left-right midline, lesion voxels left out (zero)."""
        return mirror_lr(self.image, self.affine, exclude=self.mask)

    def widened(self, ring: int) -> FillContext:
        """The same call with the mask grown by ``ring`` voxels within the head (the stages fill that; the
        caller writes back only the original mask)."""
        from scipy import ndimage

        return self.grown(ndimage.binary_dilation(self.mask, iterations=ring) & self.brain)

    def grown(self, extra: np.ndarray) -> FillContext:
        """The same call with ``extra`` voxels added to the mask."""
        return dataclasses.replace(self, mask=self.mask | extra)

    def whole(self, values: np.ndarray) -> np.ndarray:
        """A whole image: ``values`` (the mask's voxels) inside the mask, the image elsewhere."""
        out = self.image.copy()
        out[self.mask] = values
        return out
