"""Crops around lesions, so that filling costs grow with lesion size, not image size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Box:
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]  # exclusive

    @property
    def slices(self):
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))

    @property
    def shape(self):
        return tuple(b - a for a, b in zip(self.lo, self.hi))

    def overlaps(self, other: "Box") -> bool:
        return all(a < d and c < b for a, b, c, d in zip(self.lo, self.hi, other.lo, other.hi))

    def union(self, other: "Box") -> "Box":
        return Box(tuple(map(min, self.lo, other.lo)), tuple(map(max, self.hi, other.hi)))


def lesion_boxes(mask: np.ndarray, context: int, divisor: int, min_size: int) -> list[Box]:
    """Boxes covering each lesion plus ``context`` voxels, merged where they touch.

    Each box is grown to a multiple of ``divisor`` and at least ``min_size``;
    it may reach outside the image (callers pad with zeros there).
    """
    labels, n = ndimage.label(mask)
    boxes = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        boxes.append(Box(tuple(s.start - context for s in sl), tuple(s.stop + context for s in sl)))
    merged = True
    while merged:  # merge until no two boxes overlap
        merged = False
        out: list[Box] = []
        for b in boxes:
            for i, o in enumerate(out):
                if b.overlaps(o):
                    out[i] = o.union(b)
                    merged = True
                    break
            else:
                out.append(b)
        boxes = out
    return [_grow(b, divisor, min_size) for b in boxes]


def bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of ``mask``'s bounding box grown by ``margin`` voxels, clipped to the array (``mask`` not empty)."""
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
                 for i, n in zip(idx, mask.shape))


def box_of(mask: np.ndarray, margin: int) -> Box:
    """:func:`bbox` as a :class:`Box`."""
    sl = bbox(mask, margin)
    return Box(tuple(s.start for s in sl), tuple(s.stop for s in sl))


def pad_to(arr: np.ndarray, divisor: int, min_size: int = 0) -> np.ndarray:
    """``arr`` zero-padded at the far end of each axis to a multiple of ``divisor`` and at least ``min_size``."""
    shape = [max(-(-s // divisor) * divisor, min_size) for s in arr.shape]
    return extract(arr, Box((0, 0, 0), tuple(shape)))


def zoom_to(arr: np.ndarray, shape, order: int) -> np.ndarray:
    """``arr`` resampled to ``shape`` (grid mode: voxel areas line up), zero outside."""
    factors = [s / a for s, a in zip(shape, arr.shape)]
    out = ndimage.zoom(arr, factors, order=order, grid_mode=True, mode="grid-constant")
    return extract(out, Box((0, 0, 0), tuple(shape)))


def _grow(b: Box, divisor: int, min_size: int) -> Box:
    lo, hi = [], []
    for a, c in zip(b.lo, b.hi):
        size = max(c - a, min_size)
        size = -(-size // divisor) * divisor
        extra = size - (c - a)
        lo.append(a - extra // 2)
        hi.append(a - extra // 2 + size)
    return Box(tuple(lo), tuple(hi))


def extract(arr: np.ndarray, box: Box, fill=0) -> np.ndarray:
    """Crop ``box`` out of ``arr``, zero-padding where the box leaves the array."""
    out = np.full(box.shape, fill, dtype=arr.dtype)
    src, dst = _overlap(arr.shape, box)
    out[dst] = arr[src]
    return out


def paste(arr: np.ndarray, box: Box, crop: np.ndarray, where: np.ndarray) -> None:
    """Write ``crop`` into ``arr`` at ``box`` where ``where`` (array-sized) is true."""
    src, dst = _overlap(arr.shape, box)
    region = arr[src]
    sel = where[src]
    region[sel] = crop[dst][sel]
    arr[src] = region


def _overlap(shape, box: Box):
    src, dst = [], []
    for n, a, c in zip(shape, box.lo, box.hi):
        s0, s1 = max(a, 0), min(c, n)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - a, s1 - a))
    return tuple(src), tuple(dst)
