"""Validation set where fill settings are chosen (never the benchmark's cases).

The held-out brain otsu_head x the 3rd, 4th ... fitting held-out masks of each category (the benchmark takes the
first one), painted by ``--families``; in-mask PSNR / SSIM of the fill and of the patch filler.

    python -m benchmarks validate [--weights DIR] [--set '{"margin": 1}'] -> benchmarks/results/validation.md
    python -m benchmarks validate --sweep -> benchmarks/results/validation_sweep.md
    python -m benchmarks validate --spill 3 --voided --set '{"keep_background": false}'  # masks past the brain

``--set`` changes fill settings (:class:`usb_prep.fill.FillSettings` fields); ``--sweep`` scores every blend
on a 0.1 grid of ``patch_weight`` and ``nlm_weight`` from one run's parts (:func:`usb_prep.api.fill_parts`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .cases import ALL_CATEGORIES, CATEGORIES, FAMILIES, load_brain, make_cases, scores
from . import paths

HERE = Path(__file__).resolve().parent


def validation_set(data: Path, brains: Path, per_category: int = 2, categories=None, families=("train",), log=None):
    """The validation cases: otsu_head x the masks after the benchmark's (``skip`` 2) of each of ``categories``
    (names of ``ALL_CATEGORIES``; default the benchmark's)."""
    b = load_brain("otsu_head", Path(data), Path(brains))
    return make_cases([b], Path(data), per_category, families=tuple(families), seed0=1000, skip=2,
                      log=log or (lambda *a: None), categories={c: ALL_CATEGORIES[c] for c in categories or CATEGORIES})


def cases(args):
    data = validation_set(args.data, args.brains, args.per_category, args.categories, args.families, log=print)
    return [s for s in (spilled(c, args.spill, args.voided) for c in data) if s is not None]


def spilled(c, n: int, voided: bool):
    """``--spill n``: the case's mask grown by ``n`` voxels, past the brain where it reaches its surface (the truth
    there is background, 0), or None when that leaves fewer than 100 voxels past the brain; ``--voided``: the image
    zeroed in the whole mask (as the BraTS inpainting task gives)."""
    if n:
        grown = ndimage.binary_dilation(c.mask, iterations=n)
        if (grown & ~c.brain_mask).sum() < 100:
            return None
        c = dataclasses.replace(c, mask=grown)
    if voided:
        c = dataclasses.replace(c, image=np.where(c.mask, 0, c.image).astype(np.float32))
    return c


def main(argv=None):
    from usb_prep import api
    from usb_prep.fill.fillers import fill_patch
    from usb_prep.weights import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paths.add(p, "data")
    paths.add(p, "brains")
    p.add_argument("--weights", default=None)
    p.add_argument("--set", default="{}", help="fill settings to change, as JSON")
    p.add_argument("--out", default=None, help="default: results/validation.md (validation_sweep.md)")
    p.add_argument("--sweep", action="store_true", help="score a grid of patch / nlm blend weights")
    p.add_argument("--families", nargs="+", default=["train"], choices=FAMILIES, help="lesion painting families")
    p.add_argument("--no-patch", action="store_true", help="skip the patch filler's rows")
    p.add_argument("--per-category", type=int, default=2, help="masks per category (after the benchmark's)")
    p.add_argument("--categories", nargs="+", choices=list(ALL_CATEGORIES),
                   help="mask categories (default: the benchmark's)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--spill", type=int, default=0,
                   help="grow each mask by this many voxels past the brain's surface (only masks that then spill "
                        "out by 100 voxels or more are kept)")
    p.add_argument("--voided", action="store_true", help="zero the image in the whole mask")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = load_model(args.weights, "fill", "cpu")
    given = json.loads(args.set)
    data = cases(args)
    cmd = "python -m benchmarks validate " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.sweep:
        return sweep(model, info, data, given, Path(args.out or HERE / "results" / "validation_sweep.md"), cmd)
    rows, means = [], {}
    for c in data:
        methods = [("usb", lambda: api.fill_array(c.image, c.mask, model=model, device="cpu", affine=c.affine,
                                                  **given))]
        if not args.no_patch:
            methods.insert(0, ("patch", lambda: fill_patch(c.image, c.mask, np.random.default_rng(0),
                                                           brain=c.brain_mask)))
        for method, fn in methods:
            t0 = time.time()
            r = scores(fn(), c)
            means.setdefault(f"{method} ({c.family})", []).append((r["psnr"], r["ssim"]))
            rows.append(f"| {c.family} | {c.category} | {c.mask_name} | {method} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                        f"{time.time() - t0:.1f} |")
            print(rows[-1], flush=True)
    lines = ["# Validation set (fill settings are chosen here)", "",
             f"Command: `{cmd.strip()}`; fill weights sha256 {info['sha256'][:12]}, settings "
             f"{model.fill_settings.replace(**given).to_dict()}; {args.threads} CPU threads.", "",
             "| family | category | mask | method | PSNR in | SSIM in | time s |", "|---|---|---|---|---|---|---|", *rows,
             "",
             "| method | mean PSNR in | mean SSIM in |", "|---|---|---|"]
    lines += [f"| {k} | {np.mean([a for a, _ in v]):.2f} | {np.mean([b for _, b in v]):.3f} |" for k, v in means.items()]
    Path(args.out or HERE / "results" / "validation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-4:]))


GRID = [(p / 10, n / 10) for p in range(11) for n in range(11 - p)]  # (patch_weight, nlm_weight)


def blend_means(model, data, given, per_case: dict | None = None) -> dict:
    """Mean (PSNR, SSIM) in the mask of each blend (1 - p - n) * model + p * patch + n * nlm (guided by the
    model) of :data:`GRID`, from one run's parts per case; ``per_case`` (a dict) also gets each blend's
    per-case list, in ``data``'s order."""
    from usb_prep import api

    res = {w: [] for w in GRID}
    for c in data:
        parts = api.fill_parts(c.image, c.mask, model=model, device="cpu", affine=c.affine,
                               stages=("model", "patch", "nlm"), **given)
        for w in GRID:
            filled = c.image.copy()
            filled[c.mask] = (1 - sum(w)) * parts.model[c.mask] + w[0] * parts.patch[c.mask] + w[1] * parts.nlm[c.mask]
            r = scores(filled, c)
            res[w].append((r["psnr"], r["ssim"]))
        print(c.name, flush=True)
    if per_case is not None:
        per_case.update(res)
    return {w: tuple(np.mean(v, 0)) for w, v in res.items()}


def sweep(model, info, data, given, out, cmd):
    """Score the blends of :data:`GRID` (:func:`blend_means`); the best 15 to ``out``."""
    per_case: dict = {}
    mean = blend_means(model, data, given, per_case)
    ranked = sorted(GRID, key=lambda w: -mean[w][0])
    s = model.fill_settings
    lines = ["# Validation sweep of the blend weights", "",
             f"Command: `{cmd.strip()}`; fill weights sha256 {info['sha256'][:12]}; {len(data)} masks; the weights' "
             f"settings are patch {s.patch_weight}, nlm {s.nlm_weight}.", "",
             "| patch_weight | nlm_weight | model share | mean PSNR in | mean SSIM in |", "|---|---|---|---|---|"]
    lines += [f"| {w[0]:.1f} | {w[1]:.1f} | {1 - sum(w):.1f} | {mean[w][0]:.2f} | {mean[w][1]:.3f} |"
              for w in ranked[:15]]
    # per lesion category: is the best blend the same for small and large lesions?
    lines += ["", "Best blend per category (mean over its masks; the overall best for comparison):", "",
              "| category | masks | best patch / nlm / model | its PSNR in | overall best's PSNR in |",
              "|---|---|---|---|---|"]
    for cat in dict.fromkeys(c.category for c in data):
        idx = [i for i, c in enumerate(data) if c.category == cat]
        cat_mean = {w: float(np.mean([per_case[w][i][0] for i in idx])) for w in GRID}
        b = max(GRID, key=cat_mean.get)
        lines.append(f"| {cat} | {len(idx)} | {b[0]:.1f} / {b[1]:.1f} / {1 - sum(b):.1f} | {cat_mean[b]:.2f} | "
                     f"{cat_mean[ranked[0]]:.2f} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
