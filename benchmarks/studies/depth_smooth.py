#!/usr/bin/env python
"""Does smoothing the deep inside of a fill raise its PSNR? (validation masks only)

PSNR rewards the posterior mean. Deep inside a large lesion no part of the fill knows the truth's texture
(``xl_parts.py``: model, blend and refined fill are equally wrong there), so the fill's texture there is a guess
that costs; a Gaussian-smoothed fill is closer to the mean. This blends the fill with its Gaussian smoothing by
a weight rising with the distance from the mask's edge, over a grid, on the validation masks.

Usage::

    python -m benchmarks study depth-smooth --data DATA --brains BRAINS --runs RUNS [--weights DIR] [--refiner FILE]

The fills' parts are cached per case (``--cache``): a later call with ``--refiner FILE`` reruns only the refiner
stage on them (another refiner on the same model, patch and nlm parts). Prints one JSON line per case and grid
point and a table of the grid's means (to ``--out``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..validation import validation_set
from .. import paths

PARTS = ("model", "patch", "nlm", "blend", "refine", "final")
SIGMAS = (1.0, 1.5, 2.0, 3.0)
STARTS = (0, 2, 4)  # depth (voxels from the mask's edge) where smoothing starts
RAMPS = (2, 6)  # voxels over which its weight rises to 1


def cached_parts(cache: Path, weights, data, brains, categories, per_category):
    """Per validation case a dict of crops (mask's box + 24 voxels): image, truth, mask, the fill's parts, and
    ``hi`` (the brain's maximum, the PSNR's range); computed once per case."""
    from usb_prep import api
    from usb_prep.weights import load_model

    model, _ = load_model(weights, "fill", "cpu")
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for c in validation_set(data, brains, per_category, categories):
        f = cache / (c.name.replace("/", "__") + ".npz")
        if not f.exists():
            parts = api.fill_parts(c.image, c.mask, model=model, device="cpu", affine=c.affine, seed=0)
            sl = ndimage.find_objects(c.mask.astype(np.uint8))[0]
            sl = tuple(slice(max(s.start - 24, 0), min(s.stop + 24, n)) for s, n in zip(sl, c.mask.shape))
            arrs = {k: np.asarray(getattr(parts, k), np.float32)[sl] for k in PARTS}
            np.savez_compressed(f, image=c.image[sl], truth=c.truth[sl], mask=c.mask[sl],
                                hi=float(c.truth[c.brain_mask].max()), ml=c.volume_ml, **arrs)
        with np.load(f) as z:
            out.append({"name": c.name, **{k: z[k] for k in z.files}})
    return out


def score(out, case) -> tuple[float, float]:
    from usb_prep import metrics as M

    hi = float(case["hi"])
    p, r = M.scale01(out, 0, hi), M.scale01(case["truth"], 0, hi)
    return M.masked_psnr(p, r, case["mask"]), M.masked_ssim(p, r, case["mask"])


def smoothed(fill, mask, depth, sigma, start, ramp) -> np.ndarray:
    """``fill`` with its mask voxels blended towards ``fill`` Gaussian-smoothed (sigma voxels), weight
    ``clip((depth - start) / ramp, 0, 1)`` (depth: distance from the mask's edge)."""
    w = np.clip((depth - start) / ramp, 0, 1)
    s = ndimage.gaussian_filter(fill, sigma)
    out = fill.copy()
    out[mask] = ((1 - w) * fill + w * s)[mask]
    return out


def rerefine(case, refiner_file):
    """The case's fill with another refiner over the same model / patch / nlm / blend parts."""
    from usb_prep.fill.refiner import refine_fill
    from usb_prep.weights import load_refiner_state

    net = load_refiner_state(refiner_file)
    m = case["mask"].astype(bool)
    out = case["final"].copy()
    vals = refine_fill(net, case["image"], m, case["model"], case["patch"], case["nlm"], case["blend"])
    keep = case["final"][m] == case["refine"][m]  # keep_background's voxels stay as the fill wrote them
    out[m] = np.where(keep, vals, case["final"][m])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paths.add(p, "data")
    paths.add(p, "brains")
    p.add_argument("--weights", default=None)
    paths.add(p, "runs")
    p.add_argument("--refiner", default=None, help="rerun the refiner stage with this refiner (cached parts)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="markdown table of the grid's means")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cases = (cached_parts(Path(a.runs) / "depth_smooth", a.weights, a.data, a.brains, None, 2)
             + cached_parts(Path(a.runs) / "depth_smooth", a.weights, a.data, a.brains, ["stroke_xl"], 4))
    grid = [(s, st, r) for s in SIGMAS for st in STARTS for r in RAMPS]
    rows = []
    for c in cases:
        m = c["mask"].astype(bool)
        fill = rerefine(c, a.refiner) if a.refiner else c["final"]
        depth = ndimage.distance_transform_edt(m)
        base = score(fill, c)
        row = {"case": c["name"], "ml": round(float(c["ml"]), 1), "none": [round(v, 3) for v in base]}
        for s, st, r in grid:
            row[f"s{s}_d{st}_r{r}"] = [round(v, 3) for v in score(smoothed(fill, m, depth, s, st, r), c)]
        print(json.dumps(row), flush=True)
        rows.append(row)
    keys = ["none"] + [f"s{s}_d{st}_r{r}" for s, st, r in grid]
    std = [r for r in rows if "stroke_xl" not in r["case"]]
    xl = [r for r in rows if "stroke_xl" in r["case"]]
    cmd = " ".join(["python -m benchmarks study depth-smooth", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"Command: `{cmd}`; in-mask PSNR dB / SSIM; cases: `--cache` (otsu_head x the validation masks).",
             "", "| variant | mean, 8 standard masks | worst change vs none | mean, 4 XL masks | worst change vs "
             "none |",
             "|---|---|---|---|---|"]
    for k in keys:
        cells = []
        for rs in (std, xl):
            if not rs:
                cells += ["-", "-"]
                continue
            d = [r[k][0] - r["none"][0] for r in rs]
            cells += [f"{np.mean([r[k][0] for r in rs]):.3f} / {np.mean([r[k][1] for r in rs]):.4f}", f"{min(d):+.3f}"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
