"""The built-in demo (``usb-fill --demo OUT/``): fill a painted lesion in the MNI152 template.

Everything comes from installed packages: nilearn ships the 1 mm MNI152
template and its brain mask, the lesion shape is made here (an ellipsoid in
the right periventricular white matter, ~17 ml, smoothly deformed with a
fixed random state), and :func:`usb_prep.data.synthesis.paint_lesion` gives it
a chronic-stroke-like T1w intensity.  Since the healthy image is known, the
filled image can be scored against it inside the mask.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .io import InputError

#: Lesion geometry in MNI mm: centre and semi-axes (x, y, z) of the ellipsoid before deformation.
LESION_CENTRE_MM = (29.0, -6.0, 22.0)
LESION_SEMI_AXES_MM = (10.5, 21.0, 15.5)  # 4/3 pi a b c ~ 14 ml; ~16-17 ml once deformed and painted
LESION_SEED = 20240531  # fixed: the same lesion for every --seed (which only drives the filling)

NAMES = {
    "healthy": "demo_T1w_healthy.nii.gz",
    "lesion": "demo_T1w_lesion.nii.gz",
    "mask": "demo_lesion_mask.nii.gz",
    "filled": "demo_T1w_filled.nii.gz",
    "sidecar": "demo_T1w_filled.json",
    "png": "demo_slices.png",
}


def _template():
    """MNI152 T1 (1 mm, values in [0, 1]) masked to the brain: ``(image, brain, affine)``."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    t = load_mni152_template(resolution=1)
    b = load_mni152_brain_mask(resolution=1)
    img = np.asarray(t.get_fdata(), dtype=np.float32)
    brain = np.asarray(b.get_fdata()) > 0.5
    if img.shape != brain.shape or not np.allclose(t.affine, b.affine):
        raise RuntimeError("nilearn's MNI152 template and brain mask are on different grids")
    img = np.where(brain, img, 0).astype(np.float32)
    scale = float(np.percentile(img[brain], 99.5))
    return np.clip(img / scale, 0, None).astype(np.float32), brain, np.asarray(t.affine, float)


def make_lesion(brain: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A deformed ellipsoid in the right periventricular white matter (boolean, on ``brain``'s grid)."""
    from .data.synthesis import deform_mask

    inv = np.linalg.inv(affine)
    c_vox = inv[:3, :3] @ np.asarray(LESION_CENTRE_MM) + inv[:3, 3]
    vox_mm = np.sqrt((affine[:3, :3] ** 2).sum(0))
    half = np.ceil(np.asarray(LESION_SEMI_AXES_MM) / vox_mm * 1.4).astype(int) + 2  # room to grow when deformed
    lo = np.round(c_vox).astype(int) - half
    hi = np.round(c_vox).astype(int) + half + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, brain.shape)
    ijk = np.indices(tuple(hi - lo), dtype=np.float32).transpose(1, 2, 3, 0) + lo
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    r2 = (((xyz - np.asarray(LESION_CENTRE_MM)) / np.asarray(LESION_SEMI_AXES_MM)) ** 2).sum(-1)
    crop = deform_mask(r2 <= 1.0, rng, strength=0.6, p_flip=0.0, scale_range=(0.95, 1.05))
    mask = np.zeros(brain.shape, bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = crop
    return mask & brain


def _metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """In-mask PSNR (dB) and MAE of images on [0, 1]."""
    pred, ref = np.clip(pred, 0, 1), np.clip(ref, 0, 1)
    try:
        from .metrics import masked_mae, masked_psnr
    except ImportError:  # pragma: no cover - metrics ships with the package
        d = (pred[mask].astype(np.float64) - ref[mask]) ** 2
        mse = float(d.mean())
        psnr = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
        return psnr, float(np.abs(pred[mask].astype(np.float64) - ref[mask]).mean())
    return masked_psnr(pred, ref, mask), masked_mae(pred, ref, mask)


def _figure(path: Path, healthy, lesioned, filled, mask, *, psnr: float, mae: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .io import atomic_write

    z = int(np.argmax(mask.sum(axis=(0, 1))))  # the axial slice with most lesion voxels
    panels = [("healthy", healthy), ("lesioned", lesioned), (f"filled (PSNR {psnr:.1f} dB)", filled),
              ("mask outline", lesioned)]
    fig = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    for ax, (title, vol) in zip(axes, panels):
        ax.imshow(vol[:, :, z].T, cmap="gray", origin="lower", vmin=0, vmax=1, interpolation="nearest")
        if title == "mask outline":
            ax.contour(mask[:, :, z].T.astype(float), levels=[0.5], colors="red", linewidths=1.0)
        ax.set_title(title, fontsize=10)
        ax.text(0.97, 0.03, "R", color="yellow", transform=ax.transAxes, ha="right", va="bottom", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"usb-fill demo: MNI152 axial slice z={z}, in-mask MAE {mae:.4f}", fontsize=11)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def run_demo(out_dir, *, overwrite: bool = False, seed: int = 0, device="auto", weights=None,
             num_threads: int | None = None, progress: bool = True, echo: Callable[[str], None] = print,
             **settings) -> dict:
    """Make the demo case in ``out_dir``, fill it, score it, draw it; returns paths and numbers. ``settings``:
    fill settings (:class:`usb_prep.fill.FillSettings` fields; None keeps the weights' own)."""
    import nibabel as nib

    from .api import fill_lesion
    from .io import check_output, get_data, save_image, sidecar_path, write_sidecar

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in NAMES.items()}
    assert paths["sidecar"] == sidecar_path(paths["filled"])
    # fail before any work: existing outputs, unwritable folder
    for key in ("healthy", "lesion", "mask", "filled"):
        check_output(paths[key], overwrite=overwrite)
    for key in ("sidecar", "png"):
        if paths[key].exists() and not overwrite:
            raise InputError(f"output {paths[key]} exists; pass --overwrite to replace it")

    healthy, brain, affine = _template()
    rng = np.random.default_rng(LESION_SEED)
    core = make_lesion(brain, affine, rng)
    from .data.synthesis import paint_lesion

    painted, soft = paint_lesion(healthy, brain, core, rng, contrast="T1w", mode="csf", p_rim=0.0)
    mask = (soft >= 0.1) | core  # the painted region (faint partial-volume tails are left healthy)
    lesioned = np.where(mask, painted, healthy).astype(np.float32)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    lesion_ml = float(mask.sum() * voxel_ml)

    def _img(a, dtype=np.float32):
        im = nib.Nifti1Image(a.astype(dtype), affine)
        im.header.set_xyzt_units("mm", "sec")
        im.header.set_qform(affine, code=4)  # MNI152
        im.header.set_sform(affine, code=4)
        return im

    save_image(_img(healthy), paths["healthy"], overwrite=overwrite)
    save_image(_img(lesioned), paths["lesion"], overwrite=overwrite)
    save_image(_img(mask, np.uint8), paths["mask"], overwrite=overwrite)
    echo(f"demo case: MNI152 1 mm template with a {lesion_ml:.1f} ml painted lesion (right periventricular WM)")

    res = fill_lesion(str(paths["lesion"]), str(paths["mask"]), weights=weights, seed=seed, device=device,
                      progress=progress, num_threads=num_threads, **settings)
    filled = get_data(res.image).astype(np.float32)
    psnr, mae = _metrics(filled, healthy, mask)
    psnr0, mae0 = _metrics(lesioned, healthy, mask)
    save_image(res.image, paths["filled"], overwrite=overwrite)
    seconds = round(time.perf_counter() - t0, 2)
    side = {**res.settings, "demo": True, "input": str(paths["lesion"]), "mask": str(paths["mask"]),
            "reference": str(paths["healthy"]), "lesion_ml": round(lesion_ml, 2),
            "in_mask_psnr_db": round(psnr, 3), "in_mask_mae": round(mae, 5),
            "lesioned_in_mask_psnr_db": round(psnr0, 3), "lesioned_in_mask_mae": round(mae0, 5),
            "demo_seconds": seconds, "messages": res.messages}
    write_sidecar(paths["sidecar"], side, overwrite=overwrite)
    _figure(paths["png"], healthy, lesioned, filled, mask, psnr=psnr, mae=mae)
    seconds = round(time.perf_counter() - t0, 2)

    for msg in res.messages:
        echo(f"note: {msg}")
    for key in ("healthy", "lesion", "mask", "filled", "sidecar", "png"):
        echo(f"wrote {paths[key]}")
    echo(f"in-mask PSNR {psnr:.2f} dB, MAE {mae:.4f} (filled vs healthy, [0, 1] intensities); "
         f"lesioned vs healthy: PSNR {psnr0:.2f} dB, MAE {mae0:.4f}")
    echo(f"done in {seconds:.1f} s")
    return {
        "out_dir": str(out),
        **{k: str(p) for k, p in paths.items()},
        "lesion_ml": lesion_ml,
        "mask_voxels": int(mask.sum()),
        "psnr": psnr,
        "mae": mae,
        "psnr_lesioned": psnr0,
        "mae_lesioned": mae0,
        "seconds": seconds,
        "weights": res.settings.get("weights"),
        "messages": list(res.messages),
    }
