"""The fillers a user can pick without a model (``--method wmstats|patch|nlm``).

Three methods, all on plain numpy arrays (mask value 1 = lesion voxel to fill):

* :func:`fill_wmstats` -- "white-matter statistics" filling in the manner of
  FSL ``lesion_filling`` and ANTs ``LesionFilling``: every lesion voxel gets a
  random draw from the intensity distribution of the normal-appearing white
  matter that surrounds its lesion. Fast; no texture, no anatomy.
* :func:`fill_patch` -- non-local, patch-based inward filling in the manner of
  NiftySeg ``seg_FillLesions`` (Prados et al. 2016): the lesion is filled
  from its boundary inward, each voxel copying the centre of the best matching
  known patch in a local search window. :func:`fill_nlm` copies the mean of the best patches instead.
  Both are the patch engine of the fill's own stages (:mod:`usb_prep.fill.patchmatch`), run here alone.

Guarantees shared by all: voxels outside the mask are returned bit-identical
(the output dtype is ``result_type(image.dtype, float32)``, which represents
every input value exactly for the usual MRI dtypes), every mask voxel gets a
finite value, and the result depends only on the inputs and the given
``numpy.random.Generator``.

:func:`fill_image` wraps them for nibabel images.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..tissue import kmeans_1d
from .patchmatch import CONN26 as _CONN26
from .patchmatch import fill_nlm, fill_patch
from .patchmatch import prepare as _prepare

__all__ = ["FILLERS", "fill_image", "fill_nlm", "fill_patch", "fill_wmstats"]


def fill_wmstats(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    brain: np.ndarray | None = None,
    shell_mm: tuple[float, float] = (1.0, 6.0),
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
    n_classes: int = 3,
    wm_class: int = -1,
    min_voxels: int = 50,
) -> np.ndarray:
    """Fill lesions with random draws from the statistics of surrounding white matter.

    For every lesion (26-connected component of ``mask``):

    1. take the *shell* of brain voxels outside all lesions whose distance
       (mm, Euclidean) to this lesion lies in ``(shell_mm[0], shell_mm[1]]``;
       the first millimetre is skipped because of partial volume with the
       lesion. If the shell holds fewer than ``min_voxels`` voxels its outer
       radius is doubled (up to 4 times); after that all non-lesion brain
       voxels are used;
    2. split the shell intensities into ``n_classes`` tissue classes with
       1-D k-means and keep class ``wm_class`` of the classes sorted by mean
       (-1 = brightest = WM on T1w; use 1 of 3 for FLAIR/T2-like contrasts
       where WM lies between CSF and GM only if that fits your data);
    3. fill the lesion with ``N(mean, std)`` draws of that class, clipped to
       the class's observed [min, max] so no impossible values appear.

    Parameters
    ----------
    image : ndarray, 3D
        Intensities (any real dtype).
    mask : ndarray, 3D
        Lesion mask, nonzero = fill.
    rng : numpy.random.Generator
        Source of the random draws.
    brain : ndarray, optional
        Brain mask; shell voxels must lie in it. Default: ``image != 0`` or mask.
    shell_mm : (float, float)
        Inner (exclusive) and outer (inclusive) shell radius in mm.
    voxel_size : 3 floats
        Voxel spacing in mm, for the distance transform.
    n_classes : int
        k-means classes on the shell (2 or 3 are sensible).
    wm_class : int
        Which class (index into classes sorted by mean) is white matter.
    min_voxels : int
        Minimum shell size before it is grown.

    Returns
    -------
    ndarray
        Filled copy, dtype ``result_type(image.dtype, float32)``; bit-identical
        to ``image`` outside ``mask``.
    """
    out, mask = _prepare(image, mask)
    if not mask.any():
        return out
    if brain is None:
        brain = (out != 0) | mask
    brain = np.asarray(brain).astype(bool)
    vox = np.asarray(voxel_size, dtype=float)
    lo, hi = float(shell_mm[0]), float(shell_mm[1])
    labels, n = ndimage.label(mask, structure=_CONN26)
    objects = ndimage.find_objects(labels)
    source = brain & ~mask
    for lab in range(1, n + 1):
        comp_full_slice = objects[lab - 1]
        sample = None
        outer = hi
        for _ in range(5):
            margin = tuple(int(np.ceil(outer / v)) + 1 for v in vox)
            sl = tuple(
                slice(max(s.start - m, 0), min(s.stop + m, size))
                for s, m, size in zip(comp_full_slice, margin, mask.shape)
            )
            comp = labels[sl] == lab
            dist = ndimage.distance_transform_edt(~comp, sampling=vox)
            shell = (dist > lo) & (dist <= outer) & source[sl]
            if shell.sum() >= min_voxels:
                sample = out[sl][shell]
                break
            outer *= 2
        if sample is None:
            sample = out[source] if source.any() else out[~mask]
        if sample.size == 0:
            raise ValueError("no known voxels to estimate white-matter statistics from")
        centres, cls = kmeans_1d(sample, n_classes)
        k = wm_class if -centres.size <= wm_class < centres.size else -1
        wm = sample[cls == (k % centres.size)].astype(np.float64)
        mu, sd = float(wm.mean()), float(wm.std())
        # index inside the component's own box: a full-volume `labels == lab`
        # per component is what makes many-lesion (MS) masks slow
        where = labels[comp_full_slice] == lab
        draws = rng.normal(mu, sd, size=int(where.sum()))
        out[comp_full_slice][where] = np.clip(draws, wm.min(), wm.max())
    return out


FILLERS = {"wmstats": fill_wmstats, "patch": fill_patch, "nlm": fill_nlm}  # name -> filler(image, mask, rng)


def fill_image(img, mask_img, method: str = "wmstats", seed: int = 0, **kwargs):
    """Fill lesions in a nibabel image, keeping affine, header and data dtype.

    Parameters
    ----------
    img : nibabel.spatialimages.SpatialImage
        3-D image.
    mask_img : nibabel image
        Lesion mask on the same grid (values > 0.5 are filled).
    method : {"wmstats", "patch", "nlm"}
        Which filler.
    seed : int
        Seed of the ``numpy.random.default_rng`` passed to the filler.
    **kwargs
        Passed to the filler (``voxel_size`` defaults to the header zooms for
        ``wmstats``).

    Returns
    -------
    nibabel.Nifti1Image (same class as ``img``)
        Filled image, data cast back to the input's on-disk dtype (rounded and
        clipped for integer types).
    """
    data = np.asanyarray(img.dataobj)
    m = np.asanyarray(mask_img.dataobj)
    if m.shape != data.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {data.shape}")
    m = m > 0.5
    rng = np.random.default_rng(seed)
    if method not in FILLERS:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(FILLERS)}")
    if method == "wmstats":
        kwargs.setdefault("voxel_size", tuple(float(z) for z in img.header.get_zooms()[:3]))
    if method == "nlm":
        from .settings import packaged

        kwargs.setdefault("search", packaged().nlm_search)
    filled = FILLERS[method](data, m, rng, **kwargs)
    dtype = img.get_data_dtype()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        filled = np.clip(np.rint(filled), info.min, info.max)
    out = img.__class__(filled.astype(dtype), img.affine, img.header)
    out.set_data_dtype(dtype)
    return out
