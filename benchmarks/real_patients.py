"""Real patients, real lesions: does each fill look like the normal-appearing tissue around it?

Real lesions have no healthy ground truth, so this scores what can be seen: for each real patient scan with its
own mask (``../shared/data/patients``: MS patient ms07 T1w and FLAIR, two stroke T2w scans) and each filler
(NiftySeg ``seg_FillLesions``, Laplace, our patch filler, usb_prep's default fill), the filled region against the
normal-appearing white matter (NAWM) in a ring around the lesions:

* ``ratio``: mean of the fill / mean of the NAWM ring; ``z``: (mean of the fill - NAWM mean) / NAWM sd;
* ``outside``: share of filled voxels outside the NAWM ring's 1st-99th percentile range;
* ``wm``: share of filled voxels a three-class intensity segmentation labels white matter.

The segmentation is a k-means of the known voxels in a box around the lesions (the lesion box + 15 voxels), its
white-matter class chosen by the contrast (T1w: brightest; T2w: darkest; FLAIR: middle); the NAWM ring is the
voxels 2-5 voxels outside the mask that it labels white matter. Stroke lesions reach into grey matter, so ``wm``
below 1 is expected there; read it across fillers, not as an absolute. usb_prep fills each scan with the weights'
model for its contrast; on T2w and FLAIR scans the row "usb_prep (T1w model)" is the T1w fill on the same scan (what
the release before the T2w/FLAIR models did); "usb_prep (T1w guide)" on ms07's FLAIR is the fill guided by the
usb_prep fill of the same session's T1w (``--guide``, what ``usb-prep`` does for a session's T1w + FLAIR). Lesions
of these scans never trained anything; ``--trained`` names scans whose healthy-appearing tissue trained the weights'
models (the clinical stroke T2w trains the T2w/FLAIR fill model since the session of 2026-12-07, third), marked in
the table.

    python -m benchmarks real-patients [--cap 300] [--weights DIR]  # -> results/real_patients.{md,json}, .../*.png
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from . import paths
from .cases import laplace_fill, niftyseg_fill

HERE = Path(__file__).resolve().parent

# name -> (image, mask, contrast), under ../shared/data/patients
SCANS = {
    "ms07_T1w": ("ms07/T1w.nii.gz", "ms07/lesion_mask.nii.gz", "t1w"),
    "ms07_FLAIR": ("ms07/FLAIR.nii.gz", "ms07/lesion_mask.nii.gz", "flair"),
    "stroke_m2307_T2w": ("stroke_m2307/T2w_brain.nii.gz", "stroke_m2307/lesion_mask.nii.gz", "t2w"),
    "stroke_clinical_T2w": ("stroke_t2_clinical/T2w_head.nii", "stroke_t2_clinical/lesion_mask.nii", "t2w"),
}
GUIDES = {"ms07_FLAIR": "ms07_T1w"}  # scan -> the scan of the same session whose usb fill guides it (same mask)
WM_CLASS = {"t1w": 2, "t2w": 0, "flair": 1}  # index of white matter among the three sorted intensity classes
METHODS = ("niftyseg", "laplace", "patch", "usb_t1w", "usb", "usb_guided")
LABELS = {"niftyseg": "NiftySeg", "laplace": "Laplace", "patch": "patch (ours)", "usb_t1w": "usb_prep (T1w pipeline)",
          "usb": "usb_prep", "usb_guided": "usb_prep (T1w guide)"}


def neighbourhood(image, mask, contrast):
    """(sorted class centres, the WM class index, the NAWM ring) around the lesions."""
    from usb_prep import crops
    from usb_prep.tissue import kmeans_1d

    box = crops.bbox(mask, 15)
    known = np.zeros(mask.shape, bool)
    known[box] = True
    known &= ~mask & (image > 0)
    centres, _ = kmeans_1d(image[known].astype(np.float64), 3)
    centres = np.sort(centres)
    wm = WM_CLASS[contrast]
    near = ndimage.binary_dilation(mask, iterations=5) & ~ndimage.binary_dilation(mask, iterations=2) & known
    ring = near & (classify(image, centres) == wm)
    return centres, wm, ring


def classify(values, centres):
    return np.abs(np.asarray(values, np.float64)[..., None] - centres).argmin(-1)


def region_scores(filled, mask, centres, wm, ring) -> dict:
    vals, nawm = filled[mask].astype(np.float64), filled[ring].astype(np.float64)
    lo, hi = np.percentile(nawm, [1, 99])
    return {"ratio": float(vals.mean() / nawm.mean()), "z": float((vals.mean() - nawm.mean()) / nawm.std()),
            "outside": float(((vals < lo) | (vals > hi)).mean()), "wm": float((classify(vals, centres) == wm).mean())}


def fill_all(path: Path, mask_path: Path, img, mimg, data, mask, cap: float, threads: int, contrast: str = "t1w",
             weights=None, guide=None) -> dict:
    """Every filler's output (or None) and wall seconds; ``img`` / ``mimg``: the two files, loaded, ``data`` /
    ``mask`` their arrays; ``guide`` (a filled image of the same head) adds the guided usb fill."""
    import torch

    from usb_prep import api
    from usb_prep.fill.fillers import fill_image

    torch.set_num_threads(threads)
    out = {}
    t0 = time.perf_counter()
    res = api.fill_lesion(str(path), str(mask_path), seed=0, device="cpu", num_threads=threads, contrast=contrast,
                          weights=weights)
    out["usb"] = (np.asarray(res.image.dataobj, np.float32), time.perf_counter() - t0)
    if guide is not None:
        t0 = time.perf_counter()
        res = api.fill_lesion(str(path), str(mask_path), seed=0, device="cpu", num_threads=threads,
                              contrast=contrast, weights=weights, guide=guide)
        out["usb_guided"] = (np.asarray(res.image.dataobj, np.float32), time.perf_counter() - t0)
    if contrast != "t1w":
        t0 = time.perf_counter()
        res = api.fill_lesion(str(path), str(mask_path), seed=0, device="cpu", num_threads=threads, contrast="t1w",
                              weights=weights)
        out["usb_t1w"] = (np.asarray(res.image.dataobj, np.float32), time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["patch"] = (np.asarray(fill_image(img, mimg, method="patch").dataobj, np.float32), time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["laplace"] = (laplace_fill(data, mask), time.perf_counter() - t0)
    filled, info = niftyseg_fill(data, mask, img.affine, cap_s=cap, threads=threads)
    out["niftyseg"] = (filled, info["seconds"] if info["status"] == "ok" else None)
    return out


def picture(name, data, mask, fills, out_png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax(mask.sum((0, 1))))
    box = np.argwhere(data[..., z] > 0)
    (x0, y0), (x1, y1) = box.min(0), box.max(0) + 1
    vmax = float(np.percentile(data[data > 0], 99.5))
    cols = [("input (mask outline)", data)] + [(LABELS[m], fills[m][0]) for m in METHODS if m in fills]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 3.2))
    for ax, (title, vol) in zip(axes, cols):
        ax.axis("off")
        ax.set_title(title, fontsize=9)
        if vol is None:
            ax.text(0.5, 0.5, "did not finish", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.imshow(np.rot90(vol[x0:x1, y0:y1, z]), cmap="gray", vmin=0, vmax=vmax)
        if title.startswith("input"):
            ax.contour(np.rot90(mask[x0:x1, y0:y1, z]), [0.5], colors="r", linewidths=0.7)
    fig.suptitle(f"{name}: axial slice {z} (voxel axis 2)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paths.add(p, "data")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--cap", type=float, default=300, help="NiftySeg's time cap per scan (s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", default=None, help="weights folder (default: packaged)")
    p.add_argument("--trained", nargs="*", default=[],
                   help="scans whose healthy tissue trained the weights (marked in the table)")
    a = p.parse_args(argv)
    out = Path(a.out)
    (out / "real_patients").mkdir(parents=True, exist_ok=True)
    results, usb_fills = {}, {}
    for name, (img_rel, mask_rel, contrast) in SCANS.items():
        path, mask_path = Path(a.data) / "patients" / img_rel, Path(a.data) / "patients" / mask_rel
        img, mimg = nib.load(str(path)), nib.load(str(mask_path))
        data = np.asarray(img.dataobj, np.float32)
        mask = np.asarray(mimg.dataobj) > 0.5
        guide = usb_fills.get(GUIDES.get(name))
        fills = fill_all(path, mask_path, img, mimg, data, mask, a.cap, a.threads, contrast, a.weights, guide)
        usb_fills[name] = nib.Nifti1Image(fills["usb"][0], img.affine)
        centres, wm, ring = neighbourhood(data, mask, contrast)
        row = {"contrast": contrast, "mask_ml": float(mask.sum() * np.prod(img.header.get_zooms()[:3]) / 1000),
               "lesions": int(ndimage.label(mask)[1]),
               "unfilled": region_scores(data, mask, centres, wm, ring)}
        for m in (m for m in METHODS if m in fills):
            vol, sec = fills[m]
            row[m] = None if vol is None else {**region_scores(vol, mask, centres, wm, ring), "seconds": sec}
        results[name] = row
        picture(name, data, mask, fills, out / "real_patients" / f"{name}.png")
        print(name, json.dumps({k: v for k, v in row.items() if k in METHODS}), flush=True)
    (out / "real_patients.json").write_text(json.dumps(results, indent=2))
    lines = ["# Real patients: the fill against the normal-appearing white matter around it", "",
             f"Command: `python -m benchmarks real-patients --cap {a.cap:g}"
             + (f" --weights {a.weights}" if a.weights else "")
             + (f" --trained {' '.join(a.trained)}" if a.trained else "") + f"` ({a.threads} CPU threads each). "
             "No ground truth: the filled region's mean as a ratio of (and z-score against) the NAWM ring's, the "
             "share of filled voxels outside the ring's 1st-99th percentiles, and the share a local three-class "
             "segmentation labels white matter (see the script's docstring). Unfilled: the lesion as it is.", "",
             "| scan | contrast | ml | lesions | method | ratio | z | outside NAWM range | labelled WM | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        for m in ("unfilled", *(m for m in METHODS if m in row)):
            r = row[m]
            shown = name + (" (healthy tissue trained)" if name in a.trained else "")
            head = f"| {shown} | {row['contrast']} | {row['mask_ml']:.1f} | {row['lesions']} | {LABELS.get(m, m)} |"
            if r is None:
                lines.append(head + " did not finish | | | | |")
                continue
            sec = r.get("seconds")
            lines.append(head + f" {r['ratio']:.2f} | {r['z']:+.2f} | {r['outside']:.2f} | {r['wm']:.2f} | "
                         + (f"{sec:.0f} |" if sec is not None else "- |"))
    lines += ["", "Pictures: " + ", ".join(f"[{n}](real_patients/{n}.png)" for n in results)]
    (out / "real_patients.md").write_text("\n".join(lines) + "\n")
    print(out / "real_patients.md")


if __name__ == "__main__":
    main()
