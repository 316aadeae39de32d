#!/usr/bin/env python
"""Variants of the guided non-local-means fill, scored on the validation masks (not the benchmark cases).

    python benchmarks/fill_variants.py --variants iter coarse mirror -> benchmarks/results/variants/NAME.json
    python benchmarks/fill_variants.py --table -> benchmarks/results/fill_variants.md

The model's own fill and the classical patch fill of each case are computed once and cached
(``validation.cache_parts``; they do not depend on the variant), the variants' fills under
``benchmarks/cache/variants/``; each variant is then one nlm fill per
case (or a chain of them, see :func:`chains`), scored alone and in the shipped blend (0.2 patch + 0.8
variant). Run two processes side by side (one thread each) to use both cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CACHE = HERE / "cache" / "variants"
RESULTS = HERE / "results" / "variants"


def chains(affine):
    """name -> f(img, mask, model fill image, patch fill image) -> {variant: nlm fill (whole image)}.

    A chain runs passes that build on each other and reports every pass: ``iter`` is the shipped nlm
    fill (``base``), then the nlm fill guided by the first pass's blend (``iter2``); ``coarse`` starts
    from a guide that averages the model's fill with the coarse-scale fill
    (:func:`usb_prep.classical.coarse_guide`).
    """
    from usb_prep import classical as C
    from usb_prep.mirror import mirror_lr

    def nlm(img, m, g, **kw):
        return C.fill_nlm(img, m, brain=img > 0, guide=g, soft=0.0, **kw)

    def passes(names, first_guide, **kw):
        def f(img, m, g, pf):
            res, guide = {}, first_guide(img, m, g)
            for name in names:
                res[name] = nlm(img, m, guide, **kw)
                guide = 0.2 * pf + 0.8 * res[name]
            return res
        return f

    def coarse(img, m, g):
        return 0.5 * g + 0.5 * C.coarse_guide(img, m, brain=img > 0)

    def mirror(img, m, g, pf):
        return {"mirror": nlm(img, m, g, extra=mirror_lr(img, affine, exclude=m))}

    return {
        "iter": passes(["base", "iter2"], lambda img, m, g: g),
        "coarse": passes(["coarse", "coarse_iter2"], coarse),
        "mirror": mirror,
    }


def cached_parts(args, only_cached=False):
    """The truth, brain, affine and an iterator over the validation cases: (category, name, image, mask,
    model fill image, patch fill values), from ``validation.cache_parts`` (computed there unless
    ``only_cached``; with ``--wait``, another process is filling that cache)."""
    import validation as V

    data, truth, brain, affine = V.cases(args)
    CACHE.mkdir(parents=True, exist_ok=True)

    def parts():
        have = V.cache_parts(args, data, affine, compute=not (only_cached or args.wait), wait=args.wait)
        for cat, name, img, m in data:
            if name not in have:
                continue
            g = img.copy()
            g[m] = have[name]["u"]
            yield cat, name, img, m, g, have[name]["pf"]

    return truth, brain, affine, parts()


def score(out, truth, m, hi):
    from usb_prep import metrics as M

    pr, tr = M.scale01(out, 0, hi), M.scale01(truth, 0, hi)
    return float(M.masked_psnr(pr, tr, m)), float(M.masked_ssim(pr, tr, m))


def run(args):
    torch.set_num_threads(args.threads)
    truth, brain, affine, parts = cached_parts(args)
    hi = float(truth[brain].max())
    table = chains(affine)
    parts = list(parts)  # every chain runs over the same cases
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.variants:  # only fill the cache
        for _ in parts:
            pass
    k, n = (int(x) for x in args.shard.split("/"))
    for cname in args.variants:
        rows = {}
        for i, (cat, name, img, m, g, pf) in enumerate(parts):
            if i % n != k:
                continue
            t0 = time.time()
            pf_img = img.copy()
            pf_img[m] = pf
            for vname, nf in table[cname](img, m, g, pf_img).items():
                np.save(CACHE / f"{name}.{vname}.npy", nf[m])  # for blend sweeps without refilling
                alone, blend = img.copy(), img.copy()
                alone[m] = nf[m]
                blend[m] = 0.2 * pf + 0.8 * nf[m]
                rows.setdefault(vname, []).append({"category": cat, "mask": name, "alone": score(alone, truth, m, hi),
                                                   "blend": score(blend, truth, m, hi),
                                                   "time_s": time.time() - t0})  # cumulative over the chain
                print(vname, rows[vname][-1], flush=True)
            for vname, r in rows.items():
                suffix = "" if n == 1 else f".{k}of{n}"  # shards: merge with --table
                (RESULTS / f"{vname}{suffix}.json").write_text(json.dumps(r, indent=1))


def write_table(args):
    runs = {}
    for f in sorted(RESULTS.glob("*.json")):  # NAME.json or its shards NAME.KofN.json
        runs.setdefault(f.name.split(".")[0], []).extend(json.loads(f.read_text()))
    common = set.intersection(*[{r["mask"] for r in rows} for rows in runs.values()]) if runs else set()
    lines = ["# Variants of the guided nlm fill (validation masks)", "",
             "Command: `python benchmarks/fill_variants.py --variants CHAIN ...` then `--table`; validation masks "
             "(benchmarks/validation.py), 1 thread. `alone`: the variant's nlm fill; `blend`: 0.2 patch + 0.8 "
             "variant (before smoothing). Means over the cases every variant has "
             f"({len(common)}: {', '.join(sorted(common))}); per-case rows below.", "",
             "| variant | alone PSNR | alone SSIM | blend PSNR | blend SSIM |", "|---|---|---|---|---|"]
    for name, rows in runs.items():
        sel = [r for r in rows if r["mask"] in common]
        a, b = np.mean([r["alone"] for r in sel], 0), np.mean([r["blend"] for r in sel], 0)
        lines.append(f"| {name} | {a[0]:.2f} | {a[1]:.3f} | {b[0]:.2f} | {b[1]:.3f} |")
    lines += ["", "| variant | category | mask | blend PSNR | blend SSIM |", "|---|---|---|---|---|"]
    for name, rows in runs.items():
        lines += [f"| {name} | {r['category']} | {r['mask']} | {r['blend'][0]:.2f} | {r['blend'][1]:.3f} |"
                  for r in rows]
    (HERE / "results" / "fill_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def sweep(args):
    """Blend settings for each variant with saved fills: (1 - p) * variant + p * patch, then smoothed by a
    Gaussian of sigma (voxels) normalised over the brain (as ``api._smooth_in`` does)."""
    from usb_prep.api import _smooth_in

    truth, brain, affine, parts = cached_parts(args, only_cached=True)
    hi = float(truth[brain].max())
    grid = [(p / 10, sig) for p in (1, 2, 3) for sig in (0.0, 0.5, 0.75)]
    names = sorted({f.name.split(".")[1] for f in CACHE.glob("*.*.npy")})
    scores, cases = {}, {}
    for cat, name, img, m, g, pf in parts:
        have = [n for n in names if (CACHE / f"{name}.{n}.npy").exists()]
        if not set(args.variants or names) <= set(have):
            continue  # every variant scored on the same cases
        for n in args.variants or names:
            nf = np.load(CACHE / f"{name}.{n}.npy")
            cases.setdefault(n, []).append(name)
            for w in grid:
                vals = (1 - w[0]) * nf + w[0] * pf
                if w[1] > 0:
                    vals = _smooth_in(img, m, vals, (img > 0) | m, w[1])
                out = img.copy()
                out[m] = vals
                scores.setdefault((n, w), []).append(score(out, truth, m, hi))
        print(f"{cat} {name}: scored", flush=True)
    lines = ["# Blend settings per nlm variant (validation masks)", "",
             f"Command: `python benchmarks/fill_variants.py --sweep {' '.join(args.variants)}`; blend = (1 - p) * "
             "variant + p * patch fill, then smoothed by a Gaussian of sigma voxels; best 4 settings per variant by "
             "mean in-mask PSNR, and the previous default (p 0.2, sigma 0). Cases: "
             f"{', '.join(next(iter(cases.values()), []))}.", "",
             "| variant | patch p | sigma | mean PSNR in | mean SSIM in |", "|---|---|---|---|---|"]
    for n in cases:
        ranked = sorted(grid, key=lambda w: -np.mean(scores[n, w], 0)[0])
        for w in ranked[:4] + [w for w in grid if w == (0.2, 0.0) and w not in ranked[:4]]:
            a = np.mean(scores[n, w], 0)
            lines.append(f"| {n} | {w[0]:.1f} | {w[1]:.2f} | {a[0]:.2f} | {a[1]:.3f} |")
    (HERE / "results" / "fill_variants_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--brains", default="/work/cache/brains")
    p.add_argument("--weights", default=None)
    p.add_argument("--variants", nargs="*", default=[])
    p.add_argument("--extra", type=int, default=4, help="held-out masks per category beyond validation's 2")
    p.add_argument("--table", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="k/n: only cases k, k + n, ... (one process per core)")
    p.add_argument("--wait", action="store_true", help="wait for another process to cache the model fills")
    p.add_argument("--sweep", action="store_true", help="score blend weights from the saved fills")
    args = p.parse_args(argv)
    if not (args.table or args.sweep):
        run(args)
    if args.table:
        write_table(args)
    if args.sweep:
        sweep(args)


if __name__ == "__main__":
    main()
