"""Map a native-space lesion mask onto a downstream output and write it in.

Downstream tools (FreeSurfer, ANTs, NiftyReg) run on the *filled* image, so
their outputs know nothing about the lesion.  The functions here carry the
native-space mask (1 = lesion) to wherever the output lives and write a
lesion label into a label image:

* :func:`resample_to` -- between two grids through their vox2ras matrices
  (FreeSurfer ``rawavg.mgz`` -> conformed ``orig.mgz``, or any pair of
  images that share a world space);
* :func:`apply_ants_transforms` -- through an ANTs transform list
  (antspyx, imported lazily);
* :func:`apply_niftyreg_transform` -- through a NiftyReg affine (pure
  numpy) or control-point grid (the ``reg_resample`` executable);
* :func:`hemisphere_labels` and :func:`write_label` -- FreeSurfer
  Left/Right-Lesion (25/57) by hemisphere, or a fixed label (77 for WM
  lesions, 7 for a BIDS ``dseg``).

:func:`reinstate_lesion` chains them.  Pure numpy/nibabel/scipy: no Nipype.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nb
import numpy as np

LOGGER = logging.getLogger(__name__)

#: FreeSurferColorLUT lesion labels.
FS_LEFT_LESION = 25
FS_RIGHT_LESION = 57
FS_WM_HYPOINTENSITIES = 77
#: Generic BIDS ``dseg`` lesion label.
BIDS_DSEG_LESION = 7

_FS_LEFT = frozenset(
    {2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 17, 18, 19, 20, 25, 26, 27, 28, 30, 31, 78, 81}
)
_FS_RIGHT = frozenset(
    {41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 62, 63, 79, 82}
)

INTERPOLATIONS = ("nearest", "linear")

#: FreeSurferColorLUT names of the aseg labels (and the lesion labels) the lesion stats name.
FS_NAMES = {
    0: "Unknown", 2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent", 7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex", 10: "Left-Thalamus",
    11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum", 14: "3rd-Ventricle", 15: "4th-Ventricle",
    16: "Brain-Stem", 17: "Left-Hippocampus", 18: "Left-Amygdala", 24: "CSF", 25: "Left-Lesion",
    26: "Left-Accumbens-area", 28: "Left-VentralDC", 30: "Left-vessel", 31: "Left-choroid-plexus",
    41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex", 43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent", 46: "Right-Cerebellum-White-Matter", 47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus", 50: "Right-Caudate", 51: "Right-Putamen", 52: "Right-Pallidum", 53: "Right-Hippocampus",
    54: "Right-Amygdala", 57: "Right-Lesion", 58: "Right-Accumbens-area", 60: "Right-VentralDC",
    62: "Right-vessel", 63: "Right-choroid-plexus", 72: "5th-Ventricle", 77: "WM-hypointensities",
    78: "Left-WM-hypointensities", 79: "Right-WM-hypointensities", 80: "non-WM-hypointensities",
    85: "Optic-Chiasm", 251: "CC_Posterior", 252: "CC_Mid_Posterior", 253: "CC_Central", 254: "CC_Mid_Anterior",
    255: "CC_Anterior",
}


def _fs_name(label: int) -> str:
    if label in FS_NAMES:
        return FS_NAMES[label]
    if 1000 <= label < 3000:
        return f"ctx-{'lh' if label < 2000 else 'rh'}-{label % 1000}"
    if 3000 <= label < 5000:
        return f"wm-{'lh' if label < 4000 else 'rh'}-{label % 1000}"
    return f"Label-{label}"


def lesion_stats(before, after, *, source: str = "aseg.mgz") -> str:
    """FreeSurfer-format stats of a lesion written into a segmentation (``stats/aseg.lesion.stats``).

    ``before``: the segmentation as FreeSurfer wrote it; ``after``: the same with the lesion written in
    (:func:`write_label`). One table in the ``aseg.stats`` layout (``Index SegId NVoxels Volume_mm3
    StructName``): a row per lesion label (e.g. Left-/Right-Lesion by hemisphere), then a row per structure
    that lost voxels to the lesion, with its voxels and volume *lost* (what recon-all's own ``aseg.stats``
    counted as that structure). Voxel volume from the image header.
    """
    before, after = _load(before), _load(after)
    a = np.asanyarray(before.dataobj).astype(np.int64)
    b = np.asanyarray(after.dataobj).astype(np.int64)
    if a.shape != b.shape:
        raise ValueError(f"segmentations differ in shape: {a.shape} and {b.shape}")
    vox = float(np.prod(before.header.get_zooms()[:3]))
    changed = a != b
    rows = []
    for kind, labels in (("lesion", b[changed]), ("lost", a[changed])):
        ids, counts = np.unique(labels, return_counts=True)
        rows += [(kind, int(i), int(n)) for i, n in zip(ids, counts)]
    lesion_ml = sum(n for k, _, n in rows if k == "lesion") * vox / 1000
    lines = [
        "# Title Segmentation Statistics",
        "#",
        "# generating_program usb_prep.reinstate.lesion_stats",
        f"# SegVolFile {source} with the lesion written in",
        f"# Measure Lesion, LesionVol, Lesion volume, {lesion_ml * 1000:.6f}, mm^3",
        "# Rows with SegId of a lesion label: the lesion's voxels; the other rows: voxels each structure lost to "
        "the lesion (recon-all counted them as that structure)",
        "# NTableCols 6",
        "# ColHeaders  Index SegId NVoxels Volume_mm3 StructName Role",
    ]
    for i, (kind, label, n) in enumerate(rows, 1):
        lines.append(f"{i:3d} {label:5d} {n:8d} {n * vox:12.1f}  {_fs_name(label):<40s} {kind}")
    return "\n".join(lines) + "\n"


@dataclass
class ReinstateResult:
    """What :func:`reinstate_lesion` returns.

    Attributes
    ----------
    mask : nibabel image
        The lesion mask (uint8, 1 = lesion) on the target grid.
    label_image : nibabel image or None
        The label image with the lesion written in (None when no label
        image was given).
    messages : list of str
        Notes for the log/report (e.g. "mapped mask is empty").
    """

    mask: nb.spatialimages.SpatialImage
    label_image: nb.spatialimages.SpatialImage | None = None
    messages: list = field(default_factory=list)


def _load(img):
    """Return a nibabel image for a path or image."""
    if isinstance(img, (str, os.PathLike)):
        return nb.load(os.fspath(img))
    return img


def _binary(img) -> np.ndarray:
    data = np.asanyarray(img.dataobj)
    if data.ndim > 3:
        data = data.reshape(data.shape[:3] + (-1,))[..., 0]
    return (data > 0).astype(np.float32)


def _like(data: np.ndarray, target, dtype=np.uint8):
    """Build an image of ``target``'s class and geometry holding ``data``."""
    target = _load(target)
    header = target.header.copy()
    header.set_data_dtype(dtype)
    klass = target.__class__
    if klass not in (nb.Nifti1Image, nb.Nifti2Image, nb.MGHImage):
        klass = nb.Nifti1Image
        header = None
    out = klass(np.asarray(data, dtype=dtype), target.affine, header)
    if isinstance(out, (nb.Nifti1Image, nb.Nifti2Image)) and header is not None:
        out.header.set_data_dtype(dtype)
        out.set_qform(target.affine, int(target.header.get("qform_code", 1) or 1))
        out.set_sform(target.affine, int(target.header.get("sform_code", 1) or 1))
    return out


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")


def resample_by_matrix(
    mask,
    target,
    vox2vox: np.ndarray,
    *,
    interpolation: str = "nearest",
    threshold: float = 0.5,
):
    """Resample a binary mask onto ``target`` given a target->source voxel map.

    Parameters
    ----------
    mask : path or nibabel image
        Source mask; voxels > 0 are lesion.
    target : path or nibabel image
        Image whose grid (shape, affine, class) the result takes.
    vox2vox : (4, 4) array
        Maps target voxel indices to source voxel indices.
    interpolation : {"nearest", "linear"}
        Nearest neighbour, or trilinear followed by ``>= threshold``.
    threshold : float
        Threshold for linear interpolation.

    Returns
    -------
    nibabel image
        uint8 mask on the target grid.
    """
    from scipy import ndimage

    _check_interpolation(interpolation)
    mask, target = _load(mask), _load(target)
    src = _binary(mask)
    order = 0 if interpolation == "nearest" else 1
    out = ndimage.affine_transform(
        src,
        vox2vox[:3, :3],
        offset=vox2vox[:3, 3],
        output_shape=tuple(target.shape[:3]),
        order=order,
        mode="constant",
        cval=0.0,
    )
    out = out >= (0.5 if order == 0 else threshold)
    return _like(out, target)


def resample_to(mask, target, *, interpolation: str = "nearest", threshold: float = 0.5):
    """Resample a mask onto another grid through the two vox2ras matrices.

    Both images must share a world (scanner RAS) space, as FreeSurfer's
    ``rawavg.mgz`` and ``orig.mgz`` do.

    Parameters
    ----------
    mask, target : path or nibabel image
        Source mask and the image that defines the output grid.
    interpolation : {"nearest", "linear"}
        See :func:`resample_by_matrix`.
    threshold : float
        Threshold after linear interpolation.

    Returns
    -------
    nibabel image
        uint8 mask on the target grid.
    """
    mask, target = _load(mask), _load(target)
    vox2vox = np.linalg.inv(mask.affine) @ target.affine
    return resample_by_matrix(mask, target, vox2vox, interpolation=interpolation, threshold=threshold)


def map_to_conformed(mask, orig, rawavg=None, *, interpolation="nearest", threshold=0.5):
    """Map a native-space mask to FreeSurfer's conformed space (``orig.mgz``).

    Parameters
    ----------
    mask : path or nibabel image
        Lesion mask on the grid of the image given to ``recon-all -i``.
    orig : path or nibabel image
        ``mri/orig.mgz`` (conformed, 1 mm LIA).
    rawavg : path or nibabel image, optional
        ``mri/rawavg.mgz``; when its shape equals the mask's, its vox2ras
        replaces the mask's (FreeSurfer's own reading of the input header).
    interpolation, threshold
        See :func:`resample_by_matrix`.

    Returns
    -------
    nibabel image
        uint8 mask on the ``orig.mgz`` grid.
    """
    mask = _load(mask)
    if rawavg is not None:
        rawavg = _load(rawavg)
        if tuple(rawavg.shape[:3]) == tuple(mask.shape[:3]):
            mask = nb.Nifti1Image(_binary(mask), rawavg.affine)
        else:
            LOGGER.warning(
                "rawavg shape %s differs from mask shape %s: using the mask's own affine",
                rawavg.shape[:3],
                mask.shape[:3],
            )
    return resample_to(mask, orig, interpolation=interpolation, threshold=threshold)


def apply_ants_transforms(
    mask,
    reference,
    transforms: Sequence,
    *,
    invert: Sequence[bool] | None = None,
    interpolation: str = "nearest",
    threshold: float = 0.5,
):
    """Warp a mask with an ANTs transform list (antspyx ``apply_transforms``).

    Parameters
    ----------
    mask, reference : path or nibabel image
        Moving mask and the fixed (output-grid) image.
    transforms : sequence of paths
        ANTs transforms in ``antsApplyTransforms`` order (last applied first).
    invert : sequence of bool, optional
        Which transforms to invert (affines only).
    interpolation : {"nearest", "linear"}
        ``genericLabel``-like nearest neighbour or linear + threshold.
    threshold : float
        Threshold after linear interpolation.

    Returns
    -------
    nibabel image
        uint8 mask on the reference grid.
    """
    import ants  # lazy: antspyx is optional

    _check_interpolation(interpolation)
    reference = _load(reference)
    transforms = [os.fspath(t) for t in transforms]
    invert = list(invert) if invert else [False] * len(transforms)
    with tempfile.TemporaryDirectory(prefix="usb_prep_ants_") as tmp:
        mpath = os.path.join(tmp, "mask.nii.gz")
        rpath = os.path.join(tmp, "ref.nii.gz")
        nb.Nifti1Image(_binary(_load(mask)), _load(mask).affine).to_filename(mpath)
        nb.Nifti1Image(np.asanyarray(reference.dataobj).astype(np.float32), reference.affine).to_filename(rpath)
        warped = ants.apply_transforms(
            fixed=ants.image_read(rpath),
            moving=ants.image_read(mpath),
            transformlist=transforms,
            interpolator="nearestNeighbor" if interpolation == "nearest" else "linear",
            whichtoinvert=invert,
        )
        data = warped.numpy()
    cut = 0.5 if interpolation == "nearest" else threshold
    return _like(data >= cut, reference)


def read_niftyreg_affine(path) -> np.ndarray:
    """Read a NiftyReg affine text file (4x4, reference world -> floating world)."""
    mat = np.loadtxt(os.fspath(path))
    if mat.shape != (4, 4):
        raise ValueError(f"{path}: not a 4x4 NiftyReg affine")
    return mat


def _is_text_affine(path) -> bool:
    try:
        read_niftyreg_affine(path)
    except (ValueError, UnicodeDecodeError, OSError):
        return False
    return True


def find_niftyreg_executable(name: str) -> str | None:
    """Locate a NiftyReg executable: ``$NIFTYREGDIR``, ``niftyreg.bin_path``, PATH."""
    candidates = []
    if os.getenv("NIFTYREGDIR"):
        candidates.append(os.path.join(os.environ["NIFTYREGDIR"], name))
    try:
        import niftyreg  # PyPI build ships the executables here

        candidates.append(os.path.join(str(niftyreg.bin_path), name))
    except Exception:  # noqa: BLE001 - optional dependency
        pass
    for cand in candidates:
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return shutil.which(name)


def apply_niftyreg_transform(
    mask,
    reference,
    transform,
    *,
    interpolation: str = "nearest",
    threshold: float = 0.5,
    reg_resample: str | None = None,
):
    """Map a (floating-space) mask into reference space with a NiftyReg transform.

    Parameters
    ----------
    mask, reference : path or nibabel image
        Floating-space mask and the reference image.
    transform : path
        ``reg_aladin`` affine (text, reference -> floating world) -- applied in
        numpy -- or a ``reg_f3d`` control-point/deformation image, applied by
        the ``reg_resample`` executable.
    interpolation, threshold
        See :func:`resample_by_matrix`.
    reg_resample : str, optional
        Path of ``reg_resample``; found by :func:`find_niftyreg_executable`
        when not given.

    Returns
    -------
    nibabel image
        uint8 mask on the reference grid.
    """
    _check_interpolation(interpolation)
    mask, reference = _load(mask), _load(reference)
    if _is_text_affine(transform):
        world = read_niftyreg_affine(transform)
        vox2vox = np.linalg.inv(mask.affine) @ world @ reference.affine
        return resample_by_matrix(mask, reference, vox2vox, interpolation=interpolation, threshold=threshold)
    exe = reg_resample or find_niftyreg_executable("reg_resample")
    if exe is None:
        raise RuntimeError(
            "reg_resample not found: set NIFTYREGDIR, install the 'niftyreg' package, or put it on PATH"
        )
    with tempfile.TemporaryDirectory(prefix="usb_prep_nr_") as tmp:
        mpath, rpath, opath = (os.path.join(tmp, n) for n in ("flo.nii.gz", "ref.nii.gz", "out.nii.gz"))
        nb.Nifti1Image(_binary(mask), mask.affine).to_filename(mpath)
        nb.Nifti1Image(np.asanyarray(reference.dataobj).astype(np.float32), reference.affine).to_filename(rpath)
        cmd = [exe, "-ref", rpath, "-flo", mpath, "-trans", os.fspath(transform), "-res", opath,
               "-inter", "0" if interpolation == "nearest" else "1"]
        subprocess.run(cmd, check=True, capture_output=True)
        data = np.asanyarray(nb.load(opath).dataobj).astype(np.float32)
    cut = 0.5 if interpolation == "nearest" else threshold
    return _like(data >= cut, reference)


def hemisphere_labels(
    mask: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    *,
    left: int = FS_LEFT_LESION,
    right: int = FS_RIGHT_LESION,
) -> np.ndarray:
    """Choose Left/Right lesion labels for every mask voxel.

    Each lesion voxel takes the hemisphere of the nearest voxel carrying a
    lateralised FreeSurfer label (aseg left/right structures, ``ctx-lh``
    1000s / ``ctx-rh`` 2000s, ``wm-lh`` 3000s / ``wm-rh`` 4000s).  Without
    any lateralised label, the RAS x coordinate relative to the centre of
    the labelled brain (or of the volume) decides: x < centre is left.

    Parameters
    ----------
    mask : 3D bool array
        Lesion voxels.
    labels : 3D int array
        FreeSurfer segmentation on the same grid.
    affine : (4, 4) array
        vox2ras of that grid.
    left, right : int
        Labels to write for each hemisphere.

    Returns
    -------
    3D int array
        ``left``/``right`` in lesion voxels, 0 elsewhere.
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    labels = np.asarray(labels).astype(np.int64)
    is_left = np.isin(labels, list(_FS_LEFT)) | ((labels >= 1000) & (labels < 2000)) | (
        (labels >= 3000) & (labels < 4000)
    )
    is_right = np.isin(labels, list(_FS_RIGHT)) | ((labels >= 2000) & (labels < 3000)) | (
        (labels >= 4000) & (labels < 5000)
    )
    out = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return out
    lateral = (is_left | is_right) & ~mask
    if lateral.any():
        _, idx = ndimage.distance_transform_edt(~lateral, return_indices=True)
        nearest_left = is_left[tuple(idx)]
        out[mask] = np.where(nearest_left[mask], left, right)
        return out
    ijk = np.argwhere(labels > 0) if (labels > 0).any() else np.argwhere(np.ones(mask.shape, bool))
    centre = (affine[:3, :3] @ ijk.mean(0) + affine[:3, 3])[0]
    xs = (np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3])[:, 0]
    out[mask] = np.where(xs < centre, left, right)
    return out


def write_label(label_image, mask, label="hemi", *, left=FS_LEFT_LESION, right=FS_RIGHT_LESION):
    """Write a lesion label into a label image.

    Parameters
    ----------
    label_image : path or nibabel image
        Segmentation (aseg, aparc+aseg, BIDS dseg) to write into.
    mask : path or nibabel image
        Lesion mask on the same grid.
    label : int or "hemi"
        Fixed label (e.g. 77 FreeSurfer WM hypointensities, 7 BIDS dseg
        lesion), or ``"hemi"`` for FreeSurfer Left/Right-Lesion (25/57).
    left, right : int
        Labels used by ``"hemi"``.

    Returns
    -------
    nibabel image
        Same class, grid and dtype as ``label_image``.
    """
    label_image, mask = _load(label_image), _load(mask)
    if tuple(label_image.shape[:3]) != tuple(mask.shape[:3]):
        raise ValueError(f"mask shape {mask.shape[:3]} != label image shape {label_image.shape[:3]}")
    data = np.asanyarray(label_image.dataobj).copy()
    lesion = _binary(mask) > 0
    if label == "hemi":
        values = hemisphere_labels(lesion, data, label_image.affine, left=left, right=right)
        data[lesion] = values[lesion].astype(data.dtype)
    else:
        label = int(label)
        if np.issubdtype(data.dtype, np.integer) and np.iinfo(data.dtype).max < label:
            data = data.astype(np.int32)
        data[lesion] = label
    return _like(data, label_image, dtype=data.dtype)


def reinstate_lesion(
    mask,
    label_image=None,
    *,
    reference=None,
    orig=None,
    rawavg=None,
    ants_transforms: Sequence | None = None,
    ants_invert: Sequence[bool] | None = None,
    niftyreg_transform=None,
    interpolation: str = "nearest",
    threshold: float = 0.5,
    label="hemi",
) -> ReinstateResult:
    """Map a native-space lesion mask to a downstream output and write it in.

    The target grid is ``label_image`` when given, else ``reference``, else
    ``orig``.  Exactly one way of getting there is used, in this order:
    FreeSurfer conformed geometry (``orig``, optional ``rawavg``), an ANTs
    transform list, a NiftyReg transform, or the two images' vox2ras.

    Parameters
    ----------
    mask : path or nibabel image
        Native-space lesion mask (1 = lesion).
    label_image : path or nibabel image, optional
        Label image to write the lesion into.
    reference : path or nibabel image, optional
        Output grid when there is no label image.
    orig, rawavg : path or nibabel image, optional
        FreeSurfer ``mri/orig.mgz`` and ``mri/rawavg.mgz``.
    ants_transforms : sequence of paths, optional
        ANTs transforms taking the mask to the label image's space.
    ants_invert : sequence of bool, optional
        Inversion flags for ``ants_transforms``.
    niftyreg_transform : path, optional
        NiftyReg affine or control-point file (reference = label image).
    interpolation : {"nearest", "linear"}
        Nearest neighbour, or linear + ``threshold``.
    threshold : float
        Threshold after linear interpolation.
    label : int or "hemi"
        Label written into ``label_image`` (see :func:`write_label`).

    Returns
    -------
    ReinstateResult
    """
    target = label_image if label_image is not None else (reference if reference is not None else orig)
    if target is None:
        raise ValueError("give a label_image, a reference or an orig.mgz to define the output grid")
    target = _load(target)
    messages = []
    if orig is not None:
        mapped = map_to_conformed(mask, orig, rawavg, interpolation=interpolation, threshold=threshold)
        if tuple(mapped.shape[:3]) != tuple(target.shape[:3]):
            mapped = resample_to(mapped, target, interpolation="nearest")
        how = "FreeSurfer conformed geometry"
    elif ants_transforms:
        mapped = apply_ants_transforms(
            mask, target, ants_transforms, invert=ants_invert, interpolation=interpolation, threshold=threshold
        )
        how = "ANTs transforms"
    elif niftyreg_transform is not None:
        mapped = apply_niftyreg_transform(
            mask, target, niftyreg_transform, interpolation=interpolation, threshold=threshold
        )
        how = "NiftyReg transform"
    else:
        mapped = resample_to(mask, target, interpolation=interpolation, threshold=threshold)
        how = "vox2ras"
    n_in = int((_binary(_load(mask)) > 0).sum())
    n_out = int(np.asanyarray(mapped.dataobj).sum())
    messages.append(f"mask mapped by {how} ({interpolation}): {n_in} -> {n_out} voxels")
    if n_in and not n_out:
        messages.append("mapped mask is empty")
        LOGGER.warning("lesion mask is empty after mapping by %s", how)
    out_labels = write_label(label_image, mapped, label) if label_image is not None else None
    return ReinstateResult(mask=mapped, label_image=out_labels, messages=messages)


def save(img, path) -> str:
    """Save an image (NIfTI or ``.mgz`` by extension); return the absolute path."""
    path = Path(path).absolute()
    if path.suffix == ".mgz" and not isinstance(img, nb.MGHImage):
        img = nb.MGHImage(np.asanyarray(img.dataobj), img.affine)
    elif path.suffix != ".mgz" and isinstance(img, nb.MGHImage):
        img = nb.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    nb.save(img, str(path))
    return str(path)


def cost_function_mask(mask, brain=None):
    """Registration cost-function mask from a lesion mask: 1 outside the lesion.

    Parameters
    ----------
    mask : path or nibabel image
        Lesion mask (1 = lesion).
    brain : path or nibabel image, optional
        Brain mask on the same grid; when given, the result is brain minus lesion.

    Returns
    -------
    nibabel image
        uint8 mask, 1 where the similarity metric is evaluated.
    """
    mask = _load(mask)
    keep = _binary(mask) == 0
    if brain is not None:
        keep &= _binary(_load(brain)) > 0
    return _like(keep, mask)
