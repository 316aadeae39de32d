"""Preparation of T1-weighted brains: load, skull strip, register to MNI, normalise.

Usable on any cohort. Registration and skull stripping need the optional
``antspyx`` package (``pip install usb_prep[registration]``); the templates come
from ``nilearn`` (installed with the same extra). Loading and normalisation need
only nibabel and numpy.

All outputs lie on one fixed grid, :data:`MNI_SHAPE` / :data:`MNI_AFFINE`: the
FSL MNI152 1 mm box (182 x 218 x 182) written in RAS orientation. The lesion
masks shipped for training (SOOP, MS) are in MNI space as well, so a mask
overlays a prepared brain by affine resampling alone.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: Shape of the MNI 1 mm output grid (FSL MNI152 bounding box).
MNI_SHAPE: tuple[int, int, int] = (182, 218, 182)
#: RAS voxel-to-world affine of the output grid (FSL's LAS grid flipped to RAS).
MNI_AFFINE: np.ndarray = np.array(
    [[1.0, 0.0, 0.0, -91.0], [0.0, 1.0, 0.0, -126.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)

_REG_HINT = "pip install usb_prep[registration]"


# --------------------------------------------------------------------------- optional deps
def _import_ants():
    try:
        import ants  # noqa: PLC0415  (lazy: optional dependency)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"Registration and skull stripping need antspyx: {_REG_HINT}"
        ) from exc
    return ants


ANTS_SEED = 1  # registration samples its metric points at random: a fixed seed makes the preparation repeatable


def seeded_registration(ants, seed: int = ANTS_SEED, **kw):
    """``ants.registration(**kw)`` under a fixed random seed. antspyx reads the seed from ``ants.config`` only (a
    ``random_seed=`` keyword is silently ignored); it is restored after. Unseeded, preparing the same scan twice
    gave brains 45,000 mask voxels apart."""
    cfg = getattr(ants, "config", None)
    old = getattr(cfg, "_random_seed", None)
    if cfg is not None:
        cfg._random_seed = seed
    try:
        return ants.registration(**kw)
    finally:
        if cfg is not None:
            cfg._random_seed = old


def _import_nilearn_datasets():
    try:
        from nilearn import datasets  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover
        raise ImportError(f"The MNI templates come from nilearn: {_REG_HINT}") from exc
    return datasets


# --------------------------------------------------------------------------- I/O
def load_canonical(path: str | Path) -> nib.Nifti1Image:
    """Load a NIfTI or MGZ volume as float32, reoriented to RAS.

    Parameters
    ----------
    path : str or Path
        Any file nibabel reads (``.nii``, ``.nii.gz``, ``.mgz``...). 4D inputs keep
        their first volume.

    Returns
    -------
    nibabel.Nifti1Image
        RAS+ (closest canonical) image with float32 data.
    """
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    data = np.squeeze(data) if data.ndim > 3 else data
    img = nib.Nifti1Image(data, img.affine)
    img = nib.as_closest_canonical(img)
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)


def mni_grid_image(data: np.ndarray | None = None, dtype=np.float32) -> nib.Nifti1Image:
    """Return an image on the MNI output grid (zeros when ``data`` is None)."""
    if data is None:
        data = np.zeros(MNI_SHAPE, dtype=dtype)
    return nib.Nifti1Image(np.asarray(data, dtype=dtype), MNI_AFFINE.copy())


# --------------------------------------------------------------------------- intensities
def robust_normalise(
    data: np.ndarray, mask: np.ndarray | None = None, pct: float = 99.5, clip_max: float = 1.2
) -> np.ndarray:
    """Scale intensities so that bright brain tissue (white matter) is about 1.

    The ``pct`` percentile of the foreground is mapped to 1 (a percentile, unlike
    the maximum, ignores a few hot voxels such as vessels); values are then
    clipped to ``[0, clip_max]`` so that outliers cannot dominate.

    Parameters
    ----------
    data : ndarray
        Image intensities, any shape.
    mask : ndarray of bool, optional
        Foreground in which the percentile is taken; default ``data > 0``.
    pct : float
        Percentile mapped to 1.
    clip_max : float
        Upper clip value (the lower one is 0).

    Returns
    -------
    ndarray of float32
        Normalised copy of ``data``. Background stays 0 when it was 0.
    """
    data = np.asarray(data, dtype=np.float32)
    fg = data > 0 if mask is None else np.asarray(mask, dtype=bool)
    values = data[fg]
    if values.size == 0:
        return np.zeros_like(data)
    scale = float(np.percentile(values, pct))
    if scale <= 0:
        scale = float(values.max()) or 1.0
    return np.clip(data / scale, 0.0, clip_max).astype(np.float32)


# --------------------------------------------------------------------------- nib <-> ants
_RAS2LPS = np.diag([-1.0, -1.0, 1.0])


def nib_to_ants(img: nib.spatialimages.SpatialImage):
    """Convert a nibabel image to an ``ants.ANTsImage`` (physical space RAS -> LPS)."""
    ants = _import_ants()
    aff = img.affine
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    direction = _RAS2LPS @ (aff[:3, :3] / zooms)
    origin = _RAS2LPS @ aff[:3, 3]
    data = np.asarray(img.dataobj, dtype=np.float32)
    return ants.from_numpy(
        data, origin=origin.tolist(), spacing=zooms.tolist(), direction=direction
    )


def ants_to_nib(aimg, dtype=np.float32) -> nib.Nifti1Image:
    """Convert an ``ants.ANTsImage`` back to a nibabel image (LPS -> RAS)."""
    direction = np.asarray(aimg.direction).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = _RAS2LPS @ direction @ np.diag(aimg.spacing)
    aff[:3, 3] = _RAS2LPS @ np.asarray(aimg.origin)
    return nib.Nifti1Image(aimg.numpy().astype(dtype), aff)


# --------------------------------------------------------------------------- templates
def load_template(brain_only: bool = True) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Return nilearn's MNI152 1 mm T1 template and brain mask, on the output grid.

    Returns
    -------
    template, mask : nibabel.Nifti1Image
        Template intensities (float32, in [0, 1]) and its binary brain mask, both
        resampled to :data:`MNI_SHAPE` / :data:`MNI_AFFINE`.
    """
    from nibabel.processing import resample_from_to  # noqa: PLC0415

    datasets = _import_nilearn_datasets()
    tmpl = datasets.load_mni152_template(resolution=1)
    tmask = datasets.load_mni152_brain_mask(resolution=1)
    target = (MNI_SHAPE, MNI_AFFINE)
    tmpl_r = resample_from_to(
        nib.Nifti1Image(np.asarray(tmpl.dataobj, np.float32), tmpl.affine), target, order=1
    )
    mask_r = resample_from_to(
        nib.Nifti1Image(np.asarray(tmask.dataobj, np.float32), tmask.affine), target, order=0
    )
    mask = np.asarray(mask_r.dataobj) > 0.5
    data = np.asarray(tmpl_r.dataobj, np.float32)
    if brain_only:
        data = data * mask
    return mni_grid_image(data), mni_grid_image(mask.astype(np.uint8), np.uint8)


# --------------------------------------------------------------------------- masks
def clean_mask(mask: np.ndarray, erode: int = 0) -> np.ndarray:
    """Keep the largest connected component, fill holes, optionally erode.

    Parameters
    ----------
    mask : ndarray of bool
    erode : int
        Number of binary erosion iterations (6-connectivity).

    Returns
    -------
    ndarray of bool
    """
    mask = np.asarray(mask, dtype=bool)
    if erode:
        mask = ndimage.binary_erosion(mask, iterations=erode)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    # Fill holes slice by slice as well: 3D filling misses holes open on one side
    # (e.g. ventricles touching a cut edge).
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        mask = np.stack(
            [ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)], axis=0
        )
        mask = np.moveaxis(mask, 0, axis)
    return mask


# --------------------------------------------------------------------------- registration
def register_to_mni(
    img: nib.spatialimages.SpatialImage,
    template: nib.spatialimages.SpatialImage | None = None,
    type_of_transform: str = "Affine",
    interpolator: str = "linear",
):
    """Affinely register an image (ideally skull-stripped) to the MNI template.

    Parameters
    ----------
    img : nibabel image
        Moving image (subject).
    template : nibabel image, optional
        Fixed image defining the output grid; default the brain-only MNI152
        template on :data:`MNI_SHAPE` (see :func:`load_template`).
    type_of_transform : str
        Any antspyx ``type_of_transform`` (``"Affine"``, ``"AffineFast"``...).
    interpolator : str
        antspyx interpolator used to warp ``img``.

    Returns
    -------
    warped : nibabel.Nifti1Image
        ``img`` resampled on the template grid.
    transforms : list of str
        antspyx forward transform files (subject -> template), usable with
        ``ants.apply_transforms(fixed=template, moving=..., transformlist=...)``.
    """
    ants = _import_ants()
    if template is None:
        template, _ = load_template(brain_only=True)
    fixed = nib_to_ants(template)
    moving = nib_to_ants(img)
    reg = seeded_registration(ants, fixed=fixed, moving=moving, type_of_transform=type_of_transform, verbose=False)
    warped = ants.apply_transforms(
        fixed=fixed, moving=moving, transformlist=reg["fwdtransforms"], interpolator=interpolator
    )
    return ants_to_nib(warped), list(reg["fwdtransforms"])


def _head_foreground(data: np.ndarray) -> np.ndarray:
    """Rough head mask: above 10 % of the robust maximum, largest component."""
    thr = 0.1 * np.percentile(data[data > 0], 99) if np.any(data > 0) else 0.0
    return clean_mask(ndimage.binary_opening(data > thr, iterations=2))


def _rough_brain(data: np.ndarray, spacing: float, affine: np.ndarray | None = None) -> np.ndarray:
    """Morphological brain guess used only to initialise registration.

    In T1w the brain is bright tissue separated from the bright scalp by dark
    skull and CSF: threshold, erode to cut the thin bridges, keep the largest
    component, dilate back. Scalp brightness and bias fields vary too much for
    one threshold, so thresholds from 15 % to 80 % of the 99th percentile are
    scanned and the largest component that is plausible for a brain alone wins
    (eroded volume 400-1500 ml, and lying deep below the head surface, i.e. cut
    free from the scalp, and not below the head's centre, which rules out
    face and neck when ``affine`` is given); a stronger erosion is tried if
    none is.
    """
    fg = data[data > 0]
    top = np.percentile(fg, 99)
    # Depth below the head surface: a brain cut free from the scalp lies deep.
    head = data > 0.1 * top
    depth = ndimage.distance_transform_edt(head) * spacing
    up = np.zeros(3) if affine is None else np.asarray(affine)[2, :3]  # voxel -> superior mm
    head_up = float(up @ np.argwhere(head).mean(0))
    best, best_err = None, np.inf
    for erode_mm in (5.0, 7.0, 10.0):
        iters = max(1, int(round(erode_mm / spacing)))
        chosen, chosen_vol = None, 0.0
        for frac in np.arange(0.15, 0.81, 0.05):
            m = ndimage.binary_erosion(data > frac * top, iterations=iters)
            labels, n = ndimage.label(m)
            if n == 0:
                continue
            sizes = ndimage.sum_labels(m, labels, index=np.arange(1, n + 1))
            k = int(np.argmax(sizes))
            comp = labels == (k + 1)
            vol_ml = sizes[k] * spacing**3 / 1000.0
            deep = np.percentile(depth[comp], 1) >= iters * spacing + 3.0
            deep &= float(up @ np.argwhere(comp).mean(0)) >= head_up - 10.0
            if deep and 400 <= vol_ml <= 1500 and vol_ml > chosen_vol:
                chosen, chosen_vol = comp, vol_ml
            elif abs(vol_ml - 1000) < best_err:  # fallback: closest to a typical brain
                best, best_err = (comp, iters), abs(vol_ml - 1000)
        if chosen is not None:
            best = (chosen, iters)
            break
    comp, iters = best
    return clean_mask(ndimage.binary_dilation(comp, iterations=iters + 1))


def _refine_edge(data: np.ndarray, mask: np.ndarray, spacing: float, shell_mm: float = 6.0):
    """Drop bright non-brain voxels (fat, marrow, vessels) from the mask's outer shell.

    Registration leaves scraps of orbit and skull-base fat at the mask edge.
    These are brighter than white matter in T1w, whereas cortex at the surface
    is darker, so shell voxels above 1.1 x the white-matter level (90th
    percentile of the mask's core) are removed; a small opening then detaches
    the remaining thin scraps.
    """
    iters = max(1, int(round(shell_mm / spacing)))
    core = ndimage.binary_erosion(mask, iterations=iters)
    if not core.any():
        return mask
    wm = float(np.percentile(data[core], 90))
    shell = mask & ~core
    bright = ndimage.binary_dilation(shell & (data > 1.1 * wm), iterations=1) & shell
    out = mask & ~bright
    out = ndimage.binary_opening(out, iterations=1) | core
    return clean_mask(out)


def _downsample(aimg, mm: float):
    """Resample an ANTs image to ``mm`` isotropic (registration runs faster there)."""
    ants = _import_ants()
    if min(aimg.spacing) >= mm:
        return aimg
    return ants.resample_image(aimg, (mm, mm, mm), use_voxels=False, interp_type=0)


def skull_strip(
    img_head: nib.spatialimages.SpatialImage,
    erode: int = 2,
    quick: bool = True,
    reg_mm: float = 2.0,
) -> nib.Nifti1Image:
    """Brain mask of a T1w head image by template registration.

    The MNI152 *brain* template has no skull, so it is not matched to the whole
    head directly (the affine would inflate it to the scalp). Instead:
    (1) a morphological brain guess (threshold, erode, largest component,
    dilate) masks the head; (2) the template is affinely registered to that;
    (3) its brain mask, dilated by about 1 cm, crops the head and the template
    is registered again, affine + SyN. The template brain mask is warped back
    (linear, thresholded at 0.5), lightly eroded and cleaned (largest
    component, holes filled). Registrations run at ``reg_mm`` resolution.

    Parameters
    ----------
    img_head : nibabel image
        T1-weighted head (with skull), any orientation and resolution.
    erode : int
        Erosion iterations applied to the warped mask (removes the rim of CSF /
        dura that registration errors leave behind).
    quick : bool
        Use ``antsRegistrationSyNQuick[s]`` (fast) rather than ``SyN``.
    reg_mm : float
        Isotropic resolution at which the registrations run.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 mask on the grid of ``img_head``.
    """
    ants = _import_ants()
    template, tmask = load_template(brain_only=True)
    head = nib_to_ants(img_head)
    head_np = head.numpy()
    spacing = float(np.mean(head.spacing))
    tmpl_a = _downsample(nib_to_ants(template), reg_mm)
    tmask_a = nib_to_ants(nib.Nifti1Image(np.asarray(tmask.dataobj, np.float32), tmask.affine))

    def _reg(fixed_np, transform, init=None):
        fixed = _downsample(head.new_image_like(fixed_np.astype(np.float32)), reg_mm)
        kw = {} if init is None else {"initial_transform": init}
        return seeded_registration(ants, fixed=fixed, moving=tmpl_a, type_of_transform=transform, verbose=False, **kw)

    def _warp_mask(reg):
        return ants.apply_transforms(
            fixed=head, moving=tmask_a, transformlist=reg["fwdtransforms"], interpolator="linear"
        ).numpy() > 0.5

    fg = _head_foreground(head_np)
    rough = _rough_brain(head_np * fg, spacing, img_head.affine)
    reg1 = _reg(head_np * rough, "Affine")
    crop = ndimage.binary_dilation(_warp_mask(reg1), iterations=max(1, int(round(8.0 / spacing))))
    reg2 = _reg(
        head_np * crop,
        "antsRegistrationSyNQuick[s]" if quick else "SyN",
        init=reg1["fwdtransforms"][0],
    )
    mask = clean_mask(_warp_mask(reg2) & fg, erode=erode)
    mask = _refine_edge(head_np, mask, spacing)
    return nib.Nifti1Image(mask.astype(np.uint8), img_head.affine)


# --------------------------------------------------------------------------- pipeline
def prepare_brain(
    path: str | Path,
    *,
    skull_stripped: bool,
    n4: bool = True,
    pct: float = 99.5,
    lesion: str | Path | None = None,
) -> dict:
    """Load a T1w image (or a T2w / FLAIR one) and bring it to the normalised MNI 1 mm form used for training.

    Steps: load (RAS, float32) -> N4 bias correction within the head (or
    brain) foreground (optional) -> skull strip (unless ``skull_stripped``) ->
    affine registration of
    the brain to the MNI152 brain template -> mask -> :func:`robust_normalise`.

    Parameters
    ----------
    path : str or Path
        NIfTI or MGZ file.
    skull_stripped : bool
        True when the input already has zero background outside the brain.
    n4 : bool
        Apply ``ants.n4_bias_field_correction`` within the head foreground
        (brain mask for stripped inputs), before skull stripping.
    pct : float
        Percentile mapped to 1 by :func:`robust_normalise`.
    lesion : str or Path, optional
        Lesion mask on the image's grid (patients): carried to MNI with the
        same transforms and excluded from the intensity normalisation.

    Returns
    -------
    dict
        ``image`` (float32, :data:`MNI_SHAPE`, zero outside the brain),
        ``brain`` (bool, same shape), ``affine`` (:data:`MNI_AFFINE`) and
        ``transforms`` (antspyx transform files, subject -> MNI); with
        ``lesion``, also ``lesion`` (bool, same shape).
    """
    ants = _import_ants()
    img = load_canonical(path)
    data = np.asarray(img.dataobj, np.float32)
    data = np.clip(data, 0, None)  # negative values are interpolation artefacts
    img = nib.Nifti1Image(data, img.affine)
    if skull_stripped:
        # Stripped inputs often keep a faint halo (e.g. FreeSurfer norm.mgz: values
        # 1-5 around the brain): threshold at 5 % of the robust maximum, not at 0.
        thr = 0.05 * float(np.percentile(data[data > 0], 99)) if np.any(data > 0) else 0.0
        brain = clean_mask(ndimage.binary_opening(data > thr, iterations=1))
        region = brain
    else:
        region = _head_foreground(data)
    if n4:
        # Before skull stripping: strong bias fields (dark vertex, bright neck)
        # defeat the intensity-based initialisation of :func:`skull_strip`.
        a = nib_to_ants(img)
        a = ants.n4_bias_field_correction(
            a, mask=a.new_image_like(region.astype(np.float32)), shrink_factor=4
        )
        data = a.numpy().astype(np.float32) * region
        img = nib.Nifti1Image(data, img.affine)
    if not skull_stripped:
        brain = np.asarray(skull_strip(img).dataobj) > 0
    brain_img = nib.Nifti1Image(data * brain, img.affine)

    warped, transforms = register_to_mni(brain_img)
    fixed = nib_to_ants(mni_grid_image())
    mask_w = ants.apply_transforms(
        fixed=fixed,
        moving=nib_to_ants(nib.Nifti1Image(brain.astype(np.float32), img.affine)),
        transformlist=transforms,
        interpolator="linear",
    ).numpy() > 0.5
    mask_w = clean_mask(mask_w)
    les_w = np.zeros_like(mask_w)
    if lesion is not None:
        les = load_canonical(lesion)
        les01 = nib.Nifti1Image((np.asarray(les.dataobj) > 0).astype(np.float32), les.affine)
        les_w = ants.apply_transforms(
            fixed=fixed, moving=nib_to_ants(les01), transformlist=transforms, interpolator="linear",
        ).numpy() > 0.25
        les_w &= mask_w
    image = np.clip(np.asarray(warped.dataobj, np.float32), 0, None) * mask_w
    image = robust_normalise(image, mask_w & (image > 0) & ~les_w, pct=pct) * mask_w
    out = {
        "image": image.astype(np.float32),
        "brain": mask_w,
        "affine": MNI_AFFINE.copy(),
        "transforms": transforms,
    }
    if lesion is not None:
        out["lesion"] = les_w
    return out


def prepare_cohort(
    entries: Iterable[Sequence], out_dir: str | Path, *, n4: bool = True
) -> list[Path]:
    """Prepare many brains; writes ``{name}_T1w.nii.gz`` (or its contrast) and ``{name}_brainmask.nii.gz``.

    Parameters
    ----------
    entries : iterable of (name, path, skull_stripped[, lesion_path[, contrast]])
        One tuple per brain; patients add their lesion mask (or None), written
        as ``{name}_lesionmask.nii.gz`` (training keeps synthetic lesions and
        the loss away from it); ``contrast`` (``T1w`` unless given: ``T2w``,
        ``FLAIR``) names the image ``{name}_{contrast}.nii.gz``.
    out_dir : str or Path
        Output folder (created). Brains whose two outputs exist are skipped.
    n4 : bool
        Passed to :func:`prepare_brain`.

    Returns
    -------
    list of Path
        The image files (``_T1w.nii.gz`` unless a contrast is given), one per entry, in order.
    """
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):  # type: ignore[no-redef]
            return x

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = list(entries)
    outputs = []
    for name, path, skull_stripped, *rest in tqdm(entries, desc="prepare", unit="brain"):
        lesion = rest[0] if rest else None
        suffix = rest[1] if len(rest) > 1 else "T1w"
        img_out = out_dir / f"{name}_{suffix}.nii.gz"
        mask_out = out_dir / f"{name}_brainmask.nii.gz"
        outputs.append(img_out)
        if img_out.exists() and mask_out.exists():
            log.info("skip %s (outputs exist)", name)
            continue
        log.info("prepare %s from %s (skull_stripped=%s)", name, path, skull_stripped)
        res = prepare_brain(path, skull_stripped=bool(skull_stripped), n4=n4, lesion=lesion)
        nib.save(nib.Nifti1Image(res["image"], res["affine"]), str(img_out))
        nib.save(nib.Nifti1Image(res["brain"].astype(np.uint8), res["affine"]), str(mask_out))
        if lesion is not None:
            nib.save(nib.Nifti1Image(res["lesion"].astype(np.uint8), res["affine"]),
                     str(out_dir / f"{name}_lesionmask.nii.gz"))
    return outputs
