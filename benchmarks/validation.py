"""Validation set used to choose the fill's sampling defaults (margin, samples, steps).

The held-out brain otsu_head x the 3rd and 4th held-out masks of each category (the benchmark uses the
first two), painted as in run_benchmark.py; in-mask PSNR / SSIM of the packaged fill and the patch filler.

    python benchmarks/validation.py [--weights DIR] [--kw '{"margin": 1}'] -> benchmarks/results/validation.md
    python benchmarks/validation.py --sweep -> benchmarks/results/validation_sweep.md

``--sweep`` scores every blend on a 0.1 grid of ``patch_weight`` and ``nlm_weight`` from the parts of
the fill (:func:`cache_parts`): how the blend weights were chosen. The coarse guide and the smoothing were
tried with ``fill_variants.py``, blends that vary with depth with ``blend_bounds.py``.

``--extra N`` adds the 5th, 6th, ... held-out masks of each category (never the benchmark's first two),
painted with seeds 2000 + j; the 8 masks of the default set keep their seeds.
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
PARTS = HERE / "cache" / "parts"


def main(argv=None):
    from run_benchmark import classical_patch

    from usb_prep import api
    from usb_prep import metrics as M
    from usb_prep.weights import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--brains", default="/work/cache/brains")
    p.add_argument("--weights", default=None)
    p.add_argument("--kw", default="{}", help="extra fill_array keywords as JSON (e.g. margin, samples, steps)")
    p.add_argument("--out", default=None, help="default: results/validation.md (results/validation_sweep.md)")
    p.add_argument("--sweep", action="store_true", help="score a grid of patch / nlm blend weights")
    p.add_argument("--extra", type=int, default=0, help="held-out masks per category beyond the default 2")
    args = p.parse_args(argv)
    if args.sweep:
        return sweep(args, argv)
    args.out = args.out or str(HERE / "results" / "validation.md")
    torch.set_num_threads(1)
    data, truth, brain, affine = cases(args)
    hi = float(truth[brain].max())
    model, info = load_model(args.weights, "fill", "cpu")
    kw = json.loads(args.kw)
    rows, means = [], {"patch": [], "usb": []}
    for cat, name, img, m in data:
        for method, fn in (("patch", lambda: classical_patch(img, m, brain)),
                           ("usb", lambda: api.fill_array(img, m, model=model, device="cpu", affine=affine, **kw))):
            t0 = time.time()
            out = fn()
            pr, tr = M.scale01(out, 0, hi), M.scale01(truth, 0, hi)
            r = (M.masked_psnr(pr, tr, m), M.masked_ssim(pr, tr, m))
            means[method].append(r)
            rows.append(f"| {cat} | {name} | {method} | {r[0]:.2f} | {r[1]:.3f} | {time.time() - t0:.1f} |")
            print(rows[-1], flush=True)
    lines = ["# Validation set (sampling defaults were chosen here)", "",
             f"Command: `python benchmarks/validation.py {' '.join(argv or sys.argv[1:])}`; fill weights sha256 "
             f"{info['sha256'][:12]}..., fill keywords {kw or 'model defaults'}; 1 CPU thread.", "",
             "| category | mask | method | PSNR in | SSIM in | time s |", "|---|---|---|---|---|---|", *rows, "",
             "| method | mean PSNR in | mean SSIM in |", "|---|---|---|"]
    lines += [f"| {k} | {np.mean([a for a, _ in v]):.2f} | {np.mean([b for _, b in v]):.3f} |" for k, v in means.items()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-4:]))


def cases(args):
    """(category, mask name, painted image, mask) for the validation masks, the truth, brain, affine."""
    import run_benchmark as RB

    extra = getattr(args, "extra", 0)
    truth, brain, affine, _ = RB.load_brain(Path(args.brains))
    chosen = RB.choose_masks(Path(args.data), 4 + extra, truth.shape, affine, brain, print)
    out = []
    for seed0, part in ((1000, slice(2, 4)), (2000, slice(4, None))):  # the default 8, then the extra ones
        for i, (cat, path, m) in enumerate((c, pth, m) for c, v in chosen.items() for pth, m, _ in v[part]):
            img, _ = RB.paint(truth, brain, m, np.random.default_rng(seed0 + i))
            out.append((cat, path.name.split(".nii")[0], img, m))
    return out, truth, brain, affine


def cache_parts(args, data, affine, shard="0/1", wait=False, compute=True):
    """The parts of the default fill of each case, as values over its mask: ``u`` the model's fill
    (``patch_weight=0, nlm_weight=0``), ``pf`` the classical patch fill and ``nf`` the nlm fill guided by
    the model's (``api.blend_fill`` with all weight on one of them, one pass). Cached per fill-weights sha256 and
    mirror settings under ``cache/parts/``; shard ``k/n`` computes cases k, k + n, ... (one process per core) and, with
    ``wait``, waits for the others; ``compute=False`` only reads the cache. Returns {name: parts}."""
    from usb_prep.refine_training import fill_parts
    from usb_prep.weights import load_model

    model, info = load_model(args.weights, "fill", "cpu")
    cfg = model.cfg  # nf and pf depend on the mirror settings
    folder = PARTS / (info["sha256"][:12] + ("_mirror" if cfg.default_nlm_mirror else "")
                      + ("_pmirror" if cfg.default_patch_mirror else ""))
    folder.mkdir(parents=True, exist_ok=True)
    k, n = (int(x) for x in shard.split("/"))
    # without patch_mirror's folder, its parts come from the folder without it: u and nf do not depend on it
    base = folder.with_name(folder.name.removesuffix("_pmirror")) if cfg.default_patch_mirror else None
    for i, (cat, name, img, m) in enumerate(data):
        f = folder / f"{name}.npz"
        if not compute or i % n != k or f.exists():
            continue
        t0 = time.time()
        if base is not None and (base / f.name).exists():  # only the patch fill is new
            from usb_prep import api

            with np.load(base / f.name) as z:
                u, nf = img.copy(), img.copy()
                u[m], nf[m] = z["u"], z["nf"]
            pf = api.blend_fill(u, img, m, cfg, patch_weight=1.0, nlm_weight=0.0, affine=affine, nlm_passes=1,
                                nlm_coarse=False, smooth=0.0)  # = fill_parts' pf
        else:
            u, pf, nf = fill_parts(model, img, m, affine)
        tmp = f.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, u=u[m], pf=pf[m], nf=nf[m], t=[time.time() - t0])
        tmp.rename(f)
        print(f"{cat} {name}: {m.sum() / 1000:.1f} ml, parts {time.time() - t0:.0f} s", flush=True)
    out = {}
    for cat, name, img, m in data:
        f = folder / f"{name}.npz"
        while wait and not f.exists():
            time.sleep(10)
        if f.exists():
            with np.load(f) as z:
                out[name] = {key: z[key] for key in z.files}
    return out


def sweep(args, argv):
    """Score blends (1 - p - n) * model + p * patch + n * nlm(guided by the model) on the validation masks."""
    from usb_prep import metrics as M
    from usb_prep.weights import load_model

    torch.set_num_threads(1)
    data, truth, brain, affine = cases(args)
    hi = float(truth[brain].max())
    tr = M.scale01(truth, 0, hi)
    model, info = load_model(args.weights, "fill", "cpu")
    kw = json.loads(args.kw)
    if kw:
        raise SystemExit("--sweep uses the cached parts of the default fill; --kw is not supported with it")
    parts = cache_parts(args, data, affine)
    grid = [(p / 10, n / 10) for p in range(11) for n in range(11 - p)]
    scores = {w: [] for w in grid}
    for cat, name, img, m in data:
        t0 = time.time()
        u, pf, nf = (parts[name][key] for key in ("u", "pf", "nf"))
        for w in grid:
            out = img.copy()
            out[m] = (1 - sum(w)) * u + w[0] * pf + w[1] * nf
            pr = M.scale01(out, 0, hi)
            scores[w].append((M.masked_psnr(pr, tr, m), M.masked_ssim(pr, tr, m)))
        print(f"{cat} {name}: {time.time() - t0:.0f} s", flush=True)
    mean = {w: tuple(np.mean(v, 0)) for w, v in scores.items()}
    ranked = sorted(grid, key=lambda w: -mean[w][0])
    cur = (model.cfg.default_patch_weight, model.cfg.default_nlm_weight)
    lines = ["# Validation sweep of the blend weights", "",
             f"Command: `python benchmarks/validation.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
             f"fill weights sha256 {info['sha256'][:12]}..., fill keywords {kw or 'model defaults'}; "
             f"{len(data)} masks; the model's defaults are patch {cur[0]}, nlm {cur[1]}.", "",
             "| patch_weight | nlm_weight | model share | mean PSNR in | mean SSIM in |", "|---|---|---|---|---|"]
    for w in ranked[:15] + [w for w in grid if np.allclose(w, cur) and w not in ranked[:15]]:
        lines.append(f"| {w[0]:.1f} | {w[1]:.1f} | {1 - sum(w):.1f} | {mean[w][0]:.2f} | {mean[w][1]:.3f} |")
    out = Path(args.out or HERE / "results" / "validation_sweep.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
