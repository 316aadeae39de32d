"""What every stage of one fill call shares, built once: the image, the mask, the brain, the mirror, the model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..mirror import lr_axis, midline, mirror_lr


@dataclass
class FillContext:
    """One fill call's inputs. ``image``: normalised float32 (brain ~[0, 1], background 0); ``mask``: bool,
    1 = to fill; ``affine`` tells which voxel axis is left-right (None: axis 0). ``model``, ``device`` and
    ``progress`` are the call's fill model (its ``refiner`` too), torch device and progress bar, set by
    :func:`usb_prep.fill.pipeline.run_fill`. ``other_contrast``: another contrast of the same head on the same
    grid, normalised alike, its lesion already filled (the filled T1w for a FLAIR): the patch and nlm fills
    match its patches too (``FillSettings.guide_weight``)."""

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray | None = None
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    seed: int = 0
    model: Any = None
    device: Any = "cpu"
    progress: Any = None
    other_contrast: np.ndarray | None = None
    start: np.ndarray | None = None  # what the model stage noises inside the mask (a prior's image); None: the image

    def __post_init__(self):
        self.image = np.asarray(self.image, np.float32)
        self.mask = np.asarray(self.mask, bool)
        if self.image.shape != self.mask.shape:
            raise ValueError(f"image {self.image.shape} and mask {self.mask.shape} differ in shape")
        if self.start is not None and np.shape(self.start) != self.image.shape:
            raise ValueError(f"the model stage's start {np.shape(self.start)} and the image {self.image.shape} differ")
        if self.other_contrast is not None:
            self.other_contrast = np.asarray(self.other_contrast, np.float32)
            if self.other_contrast.shape != self.image.shape:
                raise ValueError(f"the guide contrast {self.other_contrast.shape} and the image {self.image.shape} "
                                 "differ in shape (resample it onto the image's grid)")

    @cached_property
    def brain(self) -> np.ndarray:
        return self.image > 0

    @cached_property
    def centre(self) -> float:
        """The image's left-right midline (voxel coordinate): the one both mirrors reflect across."""
        return midline(self.image, lr_axis(self.affine))

    @cached_property
    def mirrored(self) -> np.ndarray:
        """The image reflected across its left-right midline, lesion voxels left out (zero)."""
        return mirror_lr(self.image, self.affine, exclude=self.mask, centre=self.centre)

    @cached_property
    def mirrored_other(self) -> np.ndarray | None:
        """``other_contrast`` reflected across the image's midline (as :attr:`mirrored`; nothing left out: it is
        known everywhere)."""
        if self.other_contrast is None:
            return None
        return mirror_lr(self.other_contrast, self.affine, centre=self.centre)

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
