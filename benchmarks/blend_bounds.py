#!/usr/bin/env python
"""How much better could a blend of the fill's parts be? Scored on validation masks, not benchmark cases.

The shipped fill is 0.2 classical patch fill + 0.8 model-guided nlm fill (the model's own fill gets 0).
Two questions, answered from the cached parts of each case (``validation.cache_parts``):

1. Depth: does the model's fill help deep inside big lesions, where the patch fills copy from far away?
   fill = w(d) * model + (1 - w(d)) * shipped, w(d) = a * clip((d - d0) / s, 0, 1), d = distance (voxels)
   to the nearest known voxel; a grid of (a, d0, s).
2. Stacking: a per-voxel linear regression of the truth on the sources, their products with two depth
   ramps and the model/nlm disagreement, fitted on half the cases and scored on the other half (4 random
   splits): can a blend that adapts per voxel generalise?
3. Bound: the best linear blend of the sources *per case*, fitted on the case's own truth (an oracle no
   filler can have), over the model, patch and nlm fills, the brain mirrored across the midline and the
   MNI152 template (nilearn's; intensity matched by least squares on a 6-voxel shell around the lesion;
   the validation brain lies in MNI space). If the oracle is close to the shipped blend, no blend
   setting can add much: better fills then need better sources (a better model).

    python benchmarks/blend_bounds.py [--extra 4] [--shard 0/2 --cache-only]  -> results/blend_bounds.md
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def depth_weight(d, a, d0, s):
    return a * np.clip((d - d0) / s, 0.0, 1.0)


def psnr(x, t):
    """In-mask PSNR of values already divided by the truth's maximum (clipped to [0, 1] as scale01 does)."""
    from usb_prep.metrics import masked_psnr

    return masked_psnr(np.clip(x, 0, 1), t, None)


def stack_features(src, d):
    ramps = [np.clip(d / 4, 0, 1), np.clip((d - 4) / 8, 0, 1)]
    base = [src["model"], src["patch"], src["nlm"], src["mirror"], np.ones_like(d)]
    return np.stack(base + [x * r for x in base for r in ramps] + [np.abs(src["model"] - src["nlm"])], 1)


def stacking_gains(cases, splits=4, seed=0):
    """Mean test gain (dB over the shipped blend) per random half split; each case weighs the same."""
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(splits):
        perm = rng.permutation(len(cases))
        train, test = perm[: len(cases) // 2], perm[len(cases) // 2:]
        sw = np.concatenate([np.full(len(cases[i][2]), len(cases[i][2]) ** -0.5) for i in train])
        X = np.concatenate([cases[i][0] for i in train]) * sw[:, None]
        coef = np.linalg.lstsq(X, np.concatenate([cases[i][2] for i in train]) * sw, rcond=None)[0]
        gains.append(float(np.mean([psnr(cases[i][0] @ coef, cases[i][2]) - psnr(cases[i][1], cases[i][2])
                                    for i in test])))
    return gains


def template_on(ref_path):
    import nibabel as nib
    from nilearn import datasets
    from nilearn.image import resample_to_img

    ref = nib.load(ref_path)
    t1 = datasets.load_mni152_template(resolution=1)
    return resample_to_img(t1, ref, interpolation="continuous").get_fdata().astype(np.float32)


def main(argv=None):
    from scipy import ndimage

    import fill_variants as FV
    import validation as V
    from usb_prep.mirror import mirror_lr

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--brains", default="/work/cache/brains")
    p.add_argument("--weights", default=None)
    p.add_argument("--extra", type=int, default=4, help="held-out masks per category beyond validation's 2")
    p.add_argument("--shard", default="0/1", help="k/n: this process fills cases k, k + n, ... of the cache")
    p.add_argument("--cache-only", action="store_true", help="fill this shard's cache and stop")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data, truth, brain, affine = V.cases(args)
    parts = V.cache_parts(args, data, affine, shard=args.shard)
    if args.cache_only:
        return
    hi = float(truth[brain].max())
    tmpl = template_on(Path(args.brains) / "otsu_head_T1w.nii.gz")
    grid = [(0.0, 0, 1)] + list(itertools.product((0.2, 0.35, 0.5, 0.7, 1.0), (0, 2, 4, 6), (1, 4, 8)))
    scores = {w: [] for w in grid}
    rows, stack = [], []
    for cat, name, img, m in data:
        if name not in parts:
            continue
        z = parts[name]
        shipped = 0.2 * z["pf"] + 0.8 * z["nf"]
        d = ndimage.distance_transform_edt(m)[m]
        for w in grid:
            wm = depth_weight(d, *w)
            out = img.copy()
            out[m] = wm * z["u"] + (1 - wm) * shipped
            scores[w].append(FV.score(out, truth, m, hi))
        mir = mirror_lr(img, affine, exclude=m)[m]
        mir = np.where(np.isfinite(mir) & (mir > 0), mir, z["nf"])  # no counterpart: the nlm fill
        shell = ndimage.binary_dilation(m, iterations=6) & ~m & brain
        a, b = np.linalg.lstsq(np.stack([tmpl[shell], np.ones(int(shell.sum()))], 1), img[shell], rcond=None)[0]
        src = {"model": z["u"], "patch": z["pf"], "nlm": z["nf"], "mirror": mir, "template": a * tmpl[m] + b}
        t = np.clip(truth[m] / hi, 0, 1)
        X = np.stack([np.clip(v / hi, 0, 1) for v in src.values()], 1)
        coef = np.linalg.lstsq(X, t, rcond=None)[0]
        stack.append((stack_features({k: X[:, i] for i, k in enumerate(src)}, d), shipped / hi, t))
        rows.append({"category": cat, "mask": name, "ml": float(m.sum() / 1000), "shipped": psnr(shipped / hi, t),
                     **{k: psnr(X[:, i], t) for i, k in enumerate(src)},
                     "oracle_3": psnr(X[:, :3] @ np.linalg.lstsq(X[:, :3], t, rcond=None)[0], t),
                     "oracle_5": psnr(X @ coef, t), "coef_5": np.round(coef, 2).tolist()})
        print(rows[-1], flush=True)
    stack_gains = stacking_gains(stack)
    mean = {w: np.mean(v, 0) for w, v in scores.items()}
    ranked = sorted(grid, key=lambda w: -mean[w][0])
    cmd = f"python benchmarks/blend_bounds.py --extra {args.extra}"
    lines = ["# Bounds on blending the fill's parts (validation masks)", "",
             f"Command: `{cmd}`; {len(rows)} cases (otsu_head x held-out masks that are not benchmark cases, "
             "`validation.py --extra`); in-mask PSNR (dB) on [0, 1].", "",
             "## Per-case oracle (fitted on each case's truth: an upper bound, not a filler)", "",
             "| category | mask | ml | shipped | model | patch | nlm | mirror | template | oracle 3 | oracle 5 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = ("shipped", "model", "patch", "nlm", "mirror", "template", "oracle_3", "oracle_5")
    lines += [f"| {r['category']} | {r['mask']} | {r['ml']:.1f} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |"
              for r in rows]
    lines.append("| **mean** | | | " + " | ".join(f"**{np.mean([r[k] for r in rows]):.2f}**" for k in keys) + " |")
    lines += ["", "oracle 3: least squares over model, patch and nlm; oracle 5: also mirror and template.", "",
              "## Per-voxel stacking, cross-validated", "",
              "Test gain (dB over the shipped blend) of the per-voxel regression fitted on the other half of the "
              "cases, per random split: " + ", ".join(f"{g:+.2f}" for g in stack_gains) +
              f" (mean {np.mean(stack_gains):+.2f}).", "",
              "## Model share growing with depth", "",
              "fill = w(d) * model + (1 - w(d)) * shipped; first row a = 0 is the shipped fill; best 10 settings.",
              "", "| a | d0 | s | mean PSNR in | mean SSIM in | gain dB | cases better |",
              "|---|---|---|---|---|---|---|"]
    for w in [grid[0]] + [w for w in ranked[:10] if w != grid[0]]:
        better = sum(s[0] > r[0] + 1e-9 for s, r in zip(scores[w], scores[grid[0]]))
        lines.append(f"| {w[0]} | {w[1]} | {w[2]} | {mean[w][0]:.2f} | {mean[w][1]:.3f} | "
                     f"{mean[w][0] - mean[grid[0]][0]:+.2f} | {better}/{len(rows)} |")
    (HERE / "results" / "blend_bounds.md").write_text("\n".join(lines) + "\n")
    (HERE / "results" / "blend_bounds.json").write_text(json.dumps(
        {"command": cmd, "cases": rows, "stacking_gains": stack_gains,
         "depth": {str(w): v for w, v in scores.items()}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
