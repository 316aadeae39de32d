"""Image input/output: validation with clear errors, atomic writes, sidecars."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")


class InputError(ValueError):
    """A user-facing problem with an input or output path; nothing was written."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def strip_suffix(path: str | os.PathLike) -> Path:
    p = Path(path)
    s = _suffix(p)
    return p.with_name(p.name[: len(p.name) - len(s)]) if s else p.with_suffix("")


def sidecar_path(path: str | os.PathLike) -> Path:
    """``out.nii.gz`` -> ``out.json`` (other files, e.g. reports: ``report.html`` -> ``report.json``)."""
    p = strip_suffix(path)
    if p == Path(path):  # not an image: its one extension
        p = p.with_suffix("")
    return p.with_name(p.name + ".json")


# The last entity of a file name (BIDS suffix; FreeSurfer's T1-weighted volumes) -> contrast.
NAME_CONTRAST = {"t1w": "t1w", "t1": "t1w", "orig": "t1w", "nu": "t1w", "norm": "t1w", "brain": "t1w",
                 "t2w": "t2w", "t2": "t2w", "flair": "flair"}
# Words in a sidecar's SeriesDescription / ProtocolName, the first found wins (FLAIR before T2: "t2_flair");
# "flair", "mprage", "spgr" anywhere in a word, "t1"/"t2" as a word or with "w" ("t2_tse", "T1w").
SIDECAR_WORDS = (("flair", "flair"), ("t2", "t2w"), ("mprage", "t1w"), ("spgr", "t1w"), ("t1", "t1w"))


def image_contrast(path: str | os.PathLike) -> str | None:
    """The contrast (t1w, t2w, flair) a file name tells (its BIDS suffix: ``sub-1_FLAIR.nii.gz``; ``T1w.nii.gz``;
    FreeSurfer's ``orig.mgz``), else its JSON sidecar's ``SeriesDescription`` or ``ProtocolName``; ``None``
    when neither does."""
    return told_contrast(path)[0]


def told_contrast(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """:func:`image_contrast` and what told it: ``"name"``, ``"sidecar"`` or None."""
    import re

    stem = strip_suffix(path).name.lower()
    found = NAME_CONTRAST.get(stem.rsplit("_", 1)[-1])
    if found:
        return found, "name"
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            return None, None
        for key in ("SeriesDescription", "ProtocolName"):
            words = re.split(r"[^a-z0-9]+", str(meta.get(key, "")).lower())
            for word, contrast in SIDECAR_WORDS:
                if any(w in (word, word + "w") or len(word) > 2 and word in w for w in words):
                    return contrast, "sidecar"
    return None, None


def decide_contrast(told: str | None, source: str | None, data: np.ndarray, mask: np.ndarray | None, zooms,
                    name: str, messages: list) -> tuple[str | None, str | None, dict]:
    """The contrast a fill uses, what decided it (``option``, ``name``, ``sidecar``, ``image``) and the image's
    evidence. A told contrast stands (a warning in ``messages`` when the image clearly says another); else the
    image's tissue order (:func:`usb_prep.tissue.guess_contrast`) decides, with a note; None when nothing tells."""
    from .tissue import guess_contrast

    x = np.asarray(data, np.float32)
    m = None if mask is None else np.asarray(mask, bool)
    step = 2 if x.size > 4_000_000 else 1  # every other voxel is plenty for three levels
    if step > 1:
        x, m = x[::2, ::2, ::2], None if m is None else m[::2, ::2, ::2]
    x = x - min(float(np.percentile(x, 1)), 0.0)  # z-scored / shifted images: background to 0
    guess, evidence = guess_contrast(x, m, tuple(float(z) * step for z in zooms))
    if told is None:
        if guess is not None:
            messages.append(f"contrast {guess} told by the image ({evidence['reason']}); the file name and sidecar "
                            f"do not say (--contrast to set it)")
        return guess, ("image" if guess else None), evidence
    if guess is not None and guess != told:
        messages.append(f"warning: {name} looks like {guess} ({evidence['reason']}), but its {source} says {told}: "
                        f"filled as {told} (check --contrast)")
    return told, source, evidence


def load_image(image, *, what: str = "image") -> nib.spatialimages.SpatialImage:
    """Load and validate a 3D NIfTI/MGZ (a path or an already loaded image).

    Rejects other formats, truncated files, 4D data (a trailing axis of 1 is
    accepted), and NaN/Inf voxels, each with a message naming the file.
    """
    if isinstance(image, nib.spatialimages.SpatialImage):
        img, name = image, f"{what} (in memory)"
    else:
        path = Path(image)
        name = f"{what} {path}"
        if path.is_dir():
            raise InputError(f"{name}: is a folder, not a NIfTI/MGZ file")
        if not path.is_file():
            raise InputError(f"{name}: no such file")
        if not _suffix(path):
            raise InputError(f"{name}: not a NIfTI or MGZ file (expected one of {', '.join(SUFFIXES)})")
        try:
            img = nib.load(str(path))
        except Exception as e:  # nibabel raises several types for bad headers
            raise InputError(f"{name}: cannot be read as NIfTI/MGZ ({first_line(e)})") from e
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        pass
    elif len(shape) != 3:
        raise InputError(f"{name}: expected a 3D volume, got shape {shape}")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # truncated gzip / short file
        raise InputError(f"{name}: data cannot be read (truncated or corrupt file?): {first_line(e)}") from e
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise InputError(f"{name}: contains NaN or Inf voxels")
    return img


def first_line(e: Exception) -> str:
    """An exception's message as one line (its first), or its type's name when it has none."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def get_data(img) -> np.ndarray:
    """3D float64 voxel values (scaling applied)."""
    data = np.asanyarray(img.dataobj, dtype=np.float64)
    return data.reshape(data.shape[:3])


def same_grid(a, b, atol: float = 1e-3) -> bool:
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, atol=atol)


def resample_like(moving, reference, order: int = 0):
    """Resample ``moving`` onto ``reference``'s grid (world coordinates; nearest by default)."""
    from nibabel.processing import resample_from_to

    mov = moving
    if len(moving.shape) == 4:
        mov = moving.slicer[..., 0]
    ref = (reference.shape[:3], reference.affine)
    return resample_from_to(mov, ref, order=order, mode="constant", cval=0)


def mask_array(mask_img, image_img, *, resample_mask: bool = False, messages: list | None = None) -> np.ndarray:
    """Boolean lesion mask (1 = lesion) on the image grid, with the checks users need."""
    messages = messages if messages is not None else []
    if not same_grid(mask_img, image_img):
        if not resample_mask:
            if tuple(image_img.shape[:3]) != tuple(mask_img.shape[:3]):
                what = f"shapes differ: image {image_img.shape[:3]}, mask {mask_img.shape[:3]}"
            else:
                diff = float(np.abs(np.asarray(image_img.affine) - np.asarray(mask_img.affine)).max())
                what = f"same shape {image_img.shape[:3]} but the affines differ (largest entry difference {diff:.3g})"
            raise InputError(f"image and mask are on different grids ({what}); "
                             "pass --resample-mask to resample the mask onto the image")
        mask_img = resample_like(mask_img, image_img, order=1)
        messages.append("mask resampled onto the image grid (linear, threshold 0.5)")
    m = get_data(mask_img)
    values = np.unique(m)
    if values.size == 2 and values[0] == 0 and values[1] > 0:  # a label mask (0/255, 0/2): binary all the same
        mask = m > 0
        if values[1] != 1:
            messages.append(f"mask values are 0 and {values[1]:g}: the non-zero voxels are the lesion")
    else:
        if not np.all(np.isin(values, (0.0, 1.0))):
            messages.append(f"mask is not binary ({values.size} distinct values): thresholded at 0.5")
        mask = m >= 0.5
    if not mask.any():
        messages.append("mask is empty: input copied unchanged")
    return mask


def guide_array(guide_img, image_img, messages: list | None = None) -> np.ndarray:
    """A guide contrast's voxels on the image's grid (resampled by world coordinates, linearly, where its grid
    differs: the two scans must be aligned, as a session's scans are or a co-registration makes them)."""
    messages = messages if messages is not None else []  # load_image refused 4-D and non-finite guides already
    if not same_grid(guide_img, image_img):
        had_signal = bool(np.any(np.asanyarray(guide_img.dataobj) > 0))
        guide_img = resample_like(guide_img, image_img, order=1)
        if had_signal and not np.any(np.asanyarray(guide_img.dataobj) > 0):
            raise InputError("the guide image does not overlap the image (nothing of it lies on the image's grid in "
                             "world coordinates): are the two scans aligned (same subject, same space)?")
        messages.append("guide resampled onto the image's grid (world coordinates, linear)")
    return np.asarray(get_data(guide_img), np.float32).reshape(image_img.shape[:3])


GUIDE_MIN_OVERLAP = 0.5  # share of the image's head where the guide must have signal
GUIDE_SHIFT = 3  # voxels: a guide that matches the image better shifted by this much is not aligned
GUIDE_LESION = 0.3  # the guide's mask-vs-ring difference (in its brain's robust spread) that looks like a lesion


def check_guide(guide: np.ndarray, image: np.ndarray, mask: np.ndarray) -> str | None:
    """A guide's sanity, before any work; both normalised (background 0) on one grid.

    Raises :class:`InputError` for a guide that is empty or does not overlap the image (a wrong file, scans in
    different spaces). Returns why the guide should not be used, or None: its anatomy matches the image's better
    when shifted by :data:`GUIDE_SHIFT` voxels (misaligned; the match is a correlation ratio, so any pair of
    contrasts), or its mask region still differs from the ring around it as the image's lesion does (the unfilled
    scan given as the guide)."""
    from scipy import ndimage

    if not np.isfinite(guide).all() or not (guide > 0).any() or float(np.ptp(guide)) == 0:
        raise InputError("the guide image is empty (no signal): give the filled scan of another contrast")
    head = (image > 0) & ~mask
    overlap = float((guide[head] > 0).mean()) if head.any() else 0.0
    if overlap < GUIDE_MIN_OVERLAP:
        raise InputError(f"the guide image does not overlap the image ({overlap:.0%} of the head has guide signal): "
                         "are the two scans aligned (same subject, same space)?")
    known = head & ~ndimage.binary_dilation(mask, iterations=GUIDE_SHIFT + 1)
    known[::2] = False  # every other slice is plenty
    here = correlation_ratio(image[known], guide[known])
    best = max(correlation_ratio(image[known], np.roll(guide, d, axis)[known])
               for axis in range(3) for d in (-GUIDE_SHIFT, GUIDE_SHIFT))
    if best > here + 0.02:
        return (f"the guide is not aligned with the image (its anatomy matches better shifted by {GUIDE_SHIFT} "
                f"voxels: correlation ratio {best:.2f} vs {here:.2f}): filled without it")
    ring = ndimage.binary_dilation(mask, iterations=3) & head & (guide > 0)
    if mask.any() and ring.sum() >= 10:
        d_guide, d_image = _lesion_contrast(guide, mask, ring), _lesion_contrast(image, mask, ring)
        if abs(d_guide) > GUIDE_LESION and abs(d_guide) > 0.5 * abs(d_image):
            return (f"the guide still looks lesioned in the mask (it differs from the ring around by {d_guide:+.1f} of "
                    f"its spread, the image by {d_image:+.1f}): filled without it (give the filled scan)")
    return None


def _lesion_contrast(x: np.ndarray, mask: np.ndarray, ring: np.ndarray) -> float:
    """(median in the mask - median in the ring) / the brain's robust spread."""
    brain = x[x > 0]
    spread = float(np.subtract(*np.percentile(brain, [75, 25]))) / 1.349 or 1.0
    return (float(np.median(x[mask])) - float(np.median(x[ring]))) / spread


def correlation_ratio(y: np.ndarray, x: np.ndarray, bins: int = 32) -> float:
    """How much of ``y``'s variance ``x`` explains, through any function (``x`` in ``bins`` quantile bins): 1
    when ``y`` is a function of ``x``, 0 when unrelated."""
    if y.size < bins * 4 or float(np.var(y)) == 0:
        return 0.0
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
    idx = np.digitize(x, edges)
    counts = np.bincount(idx)
    means = np.bincount(idx, weights=y) / np.maximum(counts, 1)
    return float(np.sum(counts * (means - y.mean()) ** 2) / (y.size * np.var(y)))


def check_output(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail early (before any work) if ``path`` exists or its folder is not writable."""
    return check_outputs([_image_name(path)], overwrite=overwrite)[0]


def _image_name(path) -> Path:
    p = Path(path)
    if not _suffix(p):
        raise InputError(f"output {p}: name must end in one of {', '.join(SUFFIXES)}")
    return p


def check_outputs(outputs, inputs=(), *, overwrite: bool = False, overwrite_input: bool = False) -> list[Path]:
    """:func:`check_output` for every file a command writes (image, sidecar ...), before any work.

    An output that is one of the ``inputs`` or an input image's JSON sidecar is refused unless
    ``overwrite_input``: ``-o sub-01_T1w.nii`` beside ``sub-01_T1w.nii.gz`` would replace its sidecar.
    """
    protected = {}
    for i in inputs:
        if i is not None:
            protected[Path(i).resolve()] = str(i)
            if _suffix(Path(i)):
                protected[sidecar_path(i).resolve()] = f"the sidecar of {i}"
    out = []
    for o in outputs:
        p = Path(o)
        hit = protected.get(p.resolve())
        if hit is not None and not overwrite_input:
            raise InputError(f"output {p} would replace {hit}; choose another output name "
                             "(or pass --overwrite-input to replace an input on purpose)")
        if p.exists() and not (overwrite or (hit is not None and overwrite_input)):
            raise InputError(f"output {p} exists; pass --overwrite to replace it")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"output folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise InputError(f"output folder {parent} is not writable")
        out.append(p)
    return out


def check_image_output(path, inputs=(), *, overwrite: bool = False, overwrite_input: bool = False) -> Path:
    """An output image's name (a NIfTI/MGZ suffix), then :func:`check_outputs` for it and its JSON sidecar."""
    p = _image_name(path)
    check_outputs([p, sidecar_path(p)], inputs, overwrite=overwrite, overwrite_input=overwrite_input)
    return p


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file beside ``path``, then rename: never a partial file at ``path``.

    The file gets the usual mode (0666 less the umask), not mkstemp's 0600, so colleagues sharing a lab
    folder can read it. Temporaries a killed run left behind (``.NAME.*.tmp*``) are removed first.
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + _suffix(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_image(img, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write an image atomically (temporary file, then rename).

    MGH/MGZ stores float32 at most: float64 data is converted with a warning (nothing is lost silently)."""
    p = check_output(path, overwrite=overwrite)
    if _suffix(p) in (".mgz", ".mgh") and img.get_data_dtype() == np.float64:
        import warnings

        warnings.warn(f"{p}: MGZ stores float32 at most; the float64 data is written as float32", stacklevel=2)
        img = nib.MGHImage(np.asanyarray(img.dataobj).astype(np.float32), img.affine)
    atomic_write(p, lambda tmp: nib.save(img, tmp))
    return p


def write_sidecar(path: str | os.PathLike, data: dict, *, overwrite: bool = True) -> Path:
    p = Path(path)
    if p.exists() and not overwrite:
        raise InputError(f"{p} exists")
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    atomic_write(p, lambda tmp: Path(tmp).write_text(text))
    return p


def like_input(values: np.ndarray, ref, where: np.ndarray | None = None):
    """An image with ``ref``'s header, affine, shape and on-disk dtype.

    Only voxels in ``where`` take ``values``; all others keep ``ref``'s stored
    (unscaled) values bit for bit, scaling slope/intercept included.
    """
    unscaled = getattr(ref.dataobj, "get_unscaled", None)
    raw = np.asanyarray(unscaled() if unscaled is not None else ref.dataobj)
    out = np.array(raw, copy=True)
    shape3 = out.shape[:3]
    out3 = out.reshape(shape3)
    slope, inter = 1.0, 0.0
    if hasattr(ref.dataobj, "slope"):
        slope, inter = float(ref.dataobj.slope), float(ref.dataobj.inter)
    where = np.ones(shape3, bool) if where is None else where
    new = (values[where] - inter) / slope
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        new = np.clip(np.rint(new), info.min, info.max)
    out3[where] = new.astype(out.dtype)
    hdr = ref.header.copy()
    img = ref.__class__(out, ref.affine, hdr)
    if hasattr(img.header, "set_slope_inter") and hasattr(ref.dataobj, "slope"):
        img.header.set_slope_inter(ref.dataobj.slope, ref.dataobj.inter)
    return img
