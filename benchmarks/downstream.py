"""Downstream proxies for lesion filling: tissue segmentation and registration (antspyx).

Why: a filled image is only useful if the tools run after it (segmentation,
registration) behave as on a healthy brain. These functions measure that
against the healthy ground truth.

* :func:`segment3` -- 3-class k-means-initialised Atropos (``ants.kmeans_segmentation``,
  no MRF term) on a crop around the lesion (a whole 1 mm brain takes ~40 s per image on one
  core; the crop takes ~1-2 s and the class means are still set by the
  surrounding tissue).
* :func:`seg_agreement` -- per-region label agreement and mean per-class Dice.
* :func:`register_syn` / :func:`warp_difference` -- SyN registration to the
  MNI152 template at 2 mm and the distance (mm) between where the filled
  image's and the healthy image's registrations send each template voxel.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from scipy import ndimage

from usb_prep.metrics import dice

_CONN = ndimage.generate_binary_structure(3, 1)


def _ants():
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import ants

    # fixed sampling seed (antsRegistration --random-seed): SyN's random metric sampling otherwise
    # makes repeated runs differ (one run's disp max of 86 mm did not come back on a rerun: 0.97 mm)
    if getattr(ants, "config", None) is not None and ants.config._random_seed is None:
        ants.config._random_seed = 1
    return ants


def to_ants(arr: np.ndarray, affine: np.ndarray):
    """numpy + affine -> ANTsImage, through a temporary NIfTI so orientation is exact."""
    import nibabel as nib

    ants = _ants()
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(arr, dtype=np.float32), affine), p)
        return ants.image_read(p)


def shell(mask: np.ndarray, mm: float = 3.0, voxel_size=(1.0, 1.0, 1.0), brain: np.ndarray | None = None) -> np.ndarray:
    """Voxels outside ``mask`` within ``mm`` (Euclidean) of it, restricted to ``brain``."""
    dist = ndimage.distance_transform_edt(~mask, sampling=voxel_size)
    out = (dist > 0) & (dist <= mm)
    return out & brain if brain is not None else out


def crop_box(mask: np.ndarray, margin: int = 20) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
                 for i, n in zip(idx, mask.shape))


def segment3(image: np.ndarray, brain: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """3-class tissue labels (1 = darkest ... 3 = brightest; 0 outside brain) on ``box``.

    Returns a full-size int8 array (zeros outside the box).
    """
    ants = _ants()
    crop = np.ascontiguousarray(image[box], dtype=np.float32)
    kmask = np.ascontiguousarray(brain[box], dtype=np.float32)
    # mrf=0: no Markov smoothing -- about half the cost (measured), and every
    # image of a case is segmented the same way, so the comparison stays fair
    seg = ants.kmeans_segmentation(ants.from_numpy(crop), 3, kmask=ants.from_numpy(kmask), mrf=0.0)
    seg = seg["segmentation"].numpy()
    out = np.zeros(image.shape, np.int8)
    out[box] = seg.astype(np.int8)
    return out


def seg_agreement(seg: np.ndarray, seg_ref: np.ndarray, region: np.ndarray) -> dict:
    """Label agreement (fraction of equal labels) and mean Dice of classes 1-3 inside ``region``."""
    if not region.any():
        return {"agree": float("nan"), "dice": float("nan")}
    a, b = seg[region], seg_ref[region]
    dices = [dice(a == k, b == k) for k in (1, 2, 3) if (a == k).any() or (b == k).any()]
    return {"agree": float(np.mean(a == b)), "dice": float(np.mean(dices)) if dices else float("nan")}


def class_fractions(seg: np.ndarray, region: np.ndarray) -> dict:
    """Fraction of ``region`` voxels in each of the 3 classes (for cases without ground truth)."""
    if not region.any():
        return {}
    v = seg[region]
    return {f"class{k}": float(np.mean(v == k)) for k in (1, 2, 3)}


def mni_fixed(spacing: float = 2.0):
    """Brain-masked MNI152 (nilearn, 2009c 1 mm) resampled to ``spacing`` mm."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    ants = _ants()
    t = load_mni152_template(resolution=1)
    b = load_mni152_brain_mask(resolution=1).get_fdata() > 0
    arr = t.get_fdata() * b
    img = to_ants(arr / np.percentile(arr[b], 99.5), t.affine)
    return ants.resample_image(img, (spacing,) * 3, False, 0)


def register_syn(fixed, image: np.ndarray, affine: np.ndarray, spacing: float = 2.0) -> dict:
    """SyN (antspyx defaults: affine then SyN 40x20x0) of ``image`` to ``fixed``, at ``spacing`` mm.

    Returns the antspyx result dict (``fwdtransforms`` map fixed points to moving points).
    """
    ants = _ants()
    mov = ants.resample_image(to_ants(image, affine), (spacing,) * 3, False, 0)
    return ants.registration(fixed, mov, type_of_transform="SyN", aff_iterations=(200, 100, 50, 0))


def mapped_points(fixed, reg, moving_like) -> np.ndarray:
    """Physical point in moving space that each fixed voxel maps to, shape fixed.shape + (3,).

    Computed by warping the moving image's coordinate images (x, y, z) into
    fixed space with the forward transforms (linear interpolation).
    """
    ants = _ants()
    shape = moving_like.shape
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    direc = np.asarray(moving_like.direction)
    phys = (direc @ (idx * np.asarray(moving_like.spacing)[:, None])) + np.asarray(moving_like.origin)[:, None]
    out = []
    for c in range(3):
        ci = ants.from_numpy(phys[c].reshape(shape).astype(np.float32), origin=moving_like.origin,
                             spacing=moving_like.spacing, direction=moving_like.direction)
        out.append(ants.apply_transforms(fixed, ci, reg["fwdtransforms"], interpolator="linear").numpy())
    return np.stack(out, -1)


def warp_difference(fixed, reg, reg_ref, moving_like, lesion_fixed: np.ndarray, brain_fixed: np.ndarray) -> dict:
    """Mean / max distance (mm) between two registrations' mappings, inside and outside the lesion.

    ``lesion_fixed`` and ``brain_fixed`` are boolean arrays on the fixed grid.
    """
    d = np.linalg.norm(mapped_points(fixed, reg, moving_like) - mapped_points(fixed, reg_ref, moving_like), axis=-1)
    inside = lesion_fixed & brain_fixed
    outside = brain_fixed & ~lesion_fixed
    return {
        "disp_in_mm": float(d[inside].mean()) if inside.any() else float("nan"),
        "disp_out_mm": float(d[outside].mean()) if outside.any() else float("nan"),
        "disp_max_mm": float(d[brain_fixed].max()) if brain_fixed.any() else float("nan"),
    }


def to_fixed_mask(fixed, mask: np.ndarray, affine: np.ndarray, reg=None) -> np.ndarray:
    """Bring a moving-space mask onto the fixed grid (through ``reg`` if given, else by affine only)."""
    ants = _ants()
    m = to_ants(mask.astype(np.float32), affine)
    if reg is None:
        w = ants.resample_image_to_target(m, fixed, interp_type="linear")
    else:
        w = ants.apply_transforms(fixed, m, reg["fwdtransforms"], interpolator="linear")
    return w.numpy() >= 0.5
