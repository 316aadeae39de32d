"""Validation set used to choose the fill's sampling defaults (margin, samples, steps).

The held-out brain otsu_head x the 3rd and 4th held-out masks of each category (the benchmark uses the
first two), painted as in run_benchmark.py; in-mask PSNR / SSIM of the packaged fill and the patch filler.

    python benchmarks/validation.py [--weights DIR] [--kw '{"margin": 1}'] -> benchmarks/results/validation.md
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


def main(argv=None):
    import run_benchmark as RB
    from usb_prep import api
    from usb_prep import metrics as M
    from usb_prep.classical import fill_patch
    from usb_prep.weights import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--brains", default="/work/cache/brains")
    p.add_argument("--weights", default=None)
    p.add_argument("--kw", default="{}", help="extra fill_array keywords as JSON (e.g. margin, samples, steps)")
    p.add_argument("--out", default=str(HERE / "results" / "validation.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    truth, brain, affine, _ = RB.load_brain(Path(args.brains))
    hi = float(truth[brain].max())
    chosen = RB.choose_masks(Path(args.data), 4, truth.shape, affine, brain, print)
    model, info = load_model(args.weights, "fill", "cpu")
    kw = json.loads(args.kw)
    rows, means = [], {"patch": [], "usb": []}
    for i, (cat, path, m) in enumerate((c, pth, m) for c, v in chosen.items() for pth, m, _ in v[2:]):
        img, _ = RB.paint(truth, brain, m, np.random.default_rng(1000 + i))
        for name, fn in (("patch", lambda: fill_patch(img, m, np.random.default_rng(0), brain=brain)),
                         ("usb", lambda: api.fill_array(img, m, model=model, device="cpu", affine=affine, **kw))):
            t0 = time.time()
            out = fn()
            pr, tr = M.scale01(out, 0, hi), M.scale01(truth, 0, hi)
            r = (M.masked_psnr(pr, tr, m), M.masked_ssim(pr, tr, m))
            means[name].append(r)
            rows.append(f"| {cat} | {path.name.split('.nii')[0]} | {name} | {r[0]:.2f} | {r[1]:.3f} | {time.time() - t0:.1f} |")
            print(rows[-1], flush=True)
    lines = ["# Validation set (sampling defaults were chosen here)", "",
             f"Command: `python benchmarks/validation.py {' '.join(argv or sys.argv[1:])}`; fill weights sha256 "
             f"{info['sha256'][:12]}..., fill keywords {kw or 'model defaults'}; 1 CPU thread.", "",
             "| category | mask | method | PSNR in | SSIM in | time s |", "|---|---|---|---|---|---|", *rows, "",
             "| method | mean PSNR in | mean SSIM in |", "|---|---|---|"]
    lines += [f"| {k} | {np.mean([a for a, _ in v]):.2f} | {np.mean([b for _, b in v]):.3f} |" for k, v in means.items()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-4:]))


if __name__ == "__main__":
    main()
