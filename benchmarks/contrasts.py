"""T2w and FLAIR fills on painted bright lesions: a validation split (settings are chosen there) and a test split
(the numbers reported).

* ``validation``: ``otsu_head`` (held out of every training) mapped to T2w and to FLAIR by
  :func:`usb_prep.data.contrast.synthesise` (one seeded map each), the validation masks (``cases.choose_masks``
  after the benchmark's), lesions painted bright by the training synthesis of that contrast.
* ``test``: real scans no training saw: MS patient ms07's FLAIR (MNI 1 mm, skull-stripped) and stroke patient
  m2307's T2w (native 1 mm, skull-stripped); the benchmark's held-out masks, painted bright, their own lesions
  (dilated by 3 voxels) kept out of every mask, so the truth is their own healthy-appearing tissue.

Rows: ``usb`` (the weights' model for the contrast with its settings), ``usb-T1w`` (the T1w fill and its settings
on the same image: what the release before T2w/FLAIR models did), ``patch`` (ours, no model), ``Laplace`` and
the real NiftySeg ``seg_FillLesions`` (test split; cached, capped at ``--cap`` s, on masks up to
``--niftyseg-max-ml``). With ``--guide W ...``: ``usb+T1w W`` rows for a multi-contrast session, where the brain
has a T1w of the same head (validation: otsu_head itself, with its own noise and blur; test: ms07's T1w; m2307 has
none): the same mask painted dark into the T1w, filled by the T1w pipeline, then the guide of the ``usb`` fill
(``guide_weight`` W).

    python -m benchmarks contrasts --split validation [--weights DIR] [--sweep]  # -> results/contrasts_validation*.md
    python -m benchmarks contrasts --split test [--weights DIR]                  # -> results/contrasts_test.{md,json}
    python -m benchmarks contrasts --split validation --guide 0.5 1 2 --methods usb usb+T1w --out F.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import paths
from .cases import (Brain, Case, choose_masks, laplace_fill, load_brain, niftyseg_fill,
                   patient_brain, scores)

HERE = Path(__file__).resolve().parent

# name -> (image, lesion mask, contrast) under ../shared/data/patients: the test split's scans
TEST_SCANS = {
    "ms07_FLAIR": ("ms07/FLAIR.nii.gz", "ms07/lesion_mask.nii.gz", "flair"),
    "stroke_m2307_T2w": ("stroke_m2307/T2w_brain.nii.gz", "stroke_m2307/lesion_mask.nii.gz", "t2w"),
}
SYNTH_SEED = {"t2w": 7, "flair": 11}  # the validation brain's contrast maps
T1W_TWINS = {"ms07_FLAIR": "ms07/T1w.nii.gz"}  # test scans with a T1w of the same session (same grid)


def t1w_twin(b: Brain, data_dir: Path, brains_dir: Path) -> Brain | None:
    """The T1w of ``b``'s head on its grid, or None. The synthetic validation contrasts are maps of otsu_head's T1w
    itself: its twin gets its own noise (2% of the brain's range) and blur (sigma 0.5 voxel), as a second scan would."""
    from scipy import ndimage

    if b.name.startswith("otsu_head_"):
        t = load_brain("otsu_head", data_dir, brains_dir)
        rng = np.random.default_rng(5)
        img = ndimage.gaussian_filter(t.image, 0.5) + 0.02 * rng.standard_normal(t.image.shape).astype(np.float32)
        return Brain(t.name, np.where(t.brain, img, 0).astype(np.float32), t.brain, t.affine, t.avoid, t.source)
    if b.name in T1W_TWINS:
        p = data_dir / "patients" / T1W_TWINS[b.name]
        t = patient_brain(b.name + "_T1w", p, data_dir / "patients" / TEST_SCANS[b.name][1], f"{p} (held-out patient)")
        if t.image.shape != b.image.shape or not np.allclose(t.affine, b.affine, atol=1e-3):
            raise SystemExit(f"{p} is not on the grid of {b.name}")
        return t
    return None


def filled_twin(twin: Brain, c: Case, model, seed: int) -> np.ndarray:
    """``c``'s mask painted as a T1w lesion into ``twin`` and filled by the T1w pipeline (``model``'s settings):
    the guide a user's session would give."""
    from usb_prep import api
    from usb_prep.train.refiner import paint_t1w

    img = paint_t1w(twin.image, twin.brain, c.mask, np.random.default_rng(seed))
    return api.fill_array(img, c.mask, model=model, device="cpu", affine=c.affine)


def real_brain(name: str, data_dir: Path) -> tuple[Brain, str]:
    img_rel, les_rel, contrast = TEST_SCANS[name]
    p = data_dir / "patients"
    return patient_brain(name, p / img_rel, p / les_rel, f"{img_rel} (held-out patient)"), contrast


def synthetic_brain(contrast: str, data_dir: Path, brains_dir: Path) -> Brain:
    from usb_prep.data.contrast import synthesise

    b = load_brain("otsu_head", data_dir, brains_dir)
    img = synthesise(b.image, b.brain, contrast, np.random.default_rng(SYNTH_SEED[contrast]))
    return Brain(f"otsu_head_{contrast}", img, b.brain, b.affine, b.avoid, f"{b.source} as synthetic {contrast}")


def make_cases(b: Brain, contrast: str, data_dir: Path, per_cat: int, skip: int, seed0: int) -> list[Case]:
    from usb_prep.data.synthesis import paint_lesion

    out = []
    chosen = choose_masks(data_dir, b, per_cat, skip)
    for i, (cat, name, m) in enumerate((c, n, m) for c, v in chosen.items() for n, m in v):
        painted, _ = paint_lesion(b.image, b.brain, m, np.random.default_rng(seed0 + i), contrast=contrast)
        img = np.where(m, painted, b.image).astype(np.float32)
        out.append(Case(b.name, cat, contrast, name, img, m, b.image, b.brain, b.affine))
    return out


def split_cases(args) -> tuple[list[Case], dict]:
    """The split's cases and the T1w twins of their brains (by brain name; with ``--guide`` only)."""
    data, brains = Path(args.data), Path(args.brains)
    out, twins = [], {}
    if args.split == "validation":
        chosen = [(synthetic_brain(contrast, data, brains), contrast, args.per_category, 2, 1000)
                  for contrast in ("t2w", "flair")]
    else:
        chosen = [(*real_brain(name, data), 1, 0, 0) for name in TEST_SCANS]
    for b, contrast, per_cat, skip, seed0 in chosen:
        out += make_cases(b, contrast, data, per_cat, skip=skip, seed0=seed0)
        if args.guide:
            twins[b.name] = t1w_twin(b, data, brains)
    return out, twins


def sweep(cases, weights, given, out_path: Path, cmd: str):
    """Blends (1 - p - n) * model + p * patch + n * nlm per contrast from one run's parts: the best 12, then the
    model alone, the patch fill alone and the guided nlm alone."""
    from .validation import GRID, blend_means

    from usb_prep.weights import fill_role, load_model

    lines = ["# T2w / FLAIR validation sweep of the blend weights", "", f"Command: `{cmd}`", ""]
    for contrast in ("t2w", "flair"):
        model, info = load_model(weights, fill_role(contrast))
        data = [c for c in cases if c.family == contrast]
        mean = blend_means(model, data, given)
        ranked = sorted(GRID, key=lambda w: -mean[w][0])
        lines += [f"## {contrast} ({len(data)} masks; fill model sha256 {info['sha256'][:12]})", "",
                  "| patch_weight | nlm_weight | model share | mean PSNR in | mean SSIM in |", "|---|---|---|---|---|"]
        shown = ranked[:12] + [w for w in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)) if w not in ranked[:12]]
        lines += [f"| {w[0]:.1f} | {w[1]:.1f} | {1 - sum(w):.1f} | {mean[w][0]:.2f} | {mean[w][1]:.3f} |"
                  for w in shown]
        lines += [""]
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    from usb_prep import api
    from usb_prep.fill.fillers import fill_patch
    from usb_prep.weights import fill_role, load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=["validation", "test"], required=True)
    paths.add(p, "data")
    paths.add(p, "brains")
    p.add_argument("--weights", default=None)
    p.add_argument("--set", default="{}", help="fill settings to change (both contrasts), as JSON")
    p.add_argument("--sweep", action="store_true", help="validation: score a grid of patch / nlm blend weights")
    p.add_argument("--per-category", type=int, default=2, help="validation masks per category")
    p.add_argument("--cap", type=float, default=300, help="NiftySeg's time cap per case (s)")
    p.add_argument("--niftyseg-max-ml", type=float, default=1e9,
                   help="run NiftySeg on masks up to this volume only (it takes many minutes on larger ones)")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=None,
                   help="only these rows (usb, usb-T1w, usb+T1w, patch, Laplace, NiftySeg)")
    p.add_argument("--guide", nargs="+", type=float, default=None,
                   help="guide_weight values: usb rows guided by the filled T1w of the same head, where there is one")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    given = json.loads(args.set)
    cmd = "python -m benchmarks contrasts " + " ".join(argv if argv is not None else sys.argv[1:])
    cases, twins = split_cases(args)
    if args.sweep:
        return sweep(cases, args.weights, given, Path(args.out or HERE / "results" / "contrasts_validation_sweep.md"),
                     cmd)
    t1_model, t1_info = load_model(args.weights, "fill")
    models = {c: load_model(args.weights, fill_role(c)) for c in ("t2w", "flair")}
    rows, records = [], []
    for c in cases:
        model, info = models[c.family]
        methods = {
            "usb": lambda: api.fill_array(c.image, c.mask, model=model, device="cpu", affine=c.affine, **given),
            "usb-T1w": lambda: api.fill_array(c.image, c.mask, model=t1_model, device="cpu", affine=c.affine),
            "patch": lambda: fill_patch(c.image, c.mask, np.random.default_rng(0), brain=c.brain_mask),
            "Laplace": lambda: laplace_fill(c.image, c.mask),
        }
        if args.split == "test" and c.volume_ml <= args.niftyseg_max_ml:
            methods["NiftySeg"] = lambda: niftyseg_fill(c.image, c.mask, c.affine, cap_s=args.cap)[0]
        if twins.get(c.brain) is not None and (not args.methods or "usb+T1w" in args.methods):
            t0 = time.time()
            g = filled_twin(twins[c.brain], c, t1_model, seed=2000 + cases.index(c))
            print(f"  T1w twin filled in {time.time() - t0:.0f} s", flush=True)
            for w in args.guide:
                methods[f"usb+T1w {w:g}"] = lambda w=w: api.fill_array(c.image, c.mask, model=model, device="cpu",
                                                                      affine=c.affine, guide=g,
                                                                      **{**given, "guide_weight": w})
        if args.methods:
            methods = {k: v for k, v in methods.items() if k.split(" ")[0] in args.methods}
        for method, fn in methods.items():
            t0 = time.time()
            out = fn()
            sec = time.time() - t0
            r = scores(out, c) if out is not None else {"psnr": float("nan"), "ssim": float("nan")}
            records.append({"case": c.name, "contrast": c.family, "category": c.category, "mask": c.mask_name,
                            "ml": round(c.volume_ml, 1), "method": method, "psnr": r["psnr"], "ssim": r["ssim"],
                            "seconds": round(sec, 1)})
            rows.append(f"| {c.brain} | {c.family} | {c.category} | {c.mask_name} | {c.volume_ml:.1f} | {method} | "
                        + (f"{r['psnr']:.2f} | {r['ssim']:.3f} |" if out is not None else "did not finish | |"))
            print(rows[-1], flush=True)
    means = {}
    for r in records:
        means.setdefault((r["contrast"], r["method"]), []).append((r["psnr"], r["ssim"]))
    s = {c: models[c][0].fill_settings.replace(**given).to_dict() for c in models}
    lines = [f"# T2w / FLAIR fills, {args.split} split", "",
             f"Command: `{cmd.strip()}` ({args.threads} CPU threads). Weights: "
             + ", ".join(f"{c} fill sha256 {models[c][1]['sha256'][:12]}" for c in models)
             + f", T1w fill {t1_info['sha256'][:12]}. Settings: {json.dumps(s)}.", "",
             "| brain | contrast | category | mask | ml | method | PSNR in | SSIM in |", "|---|---|---|---|---|---|---|---|",
             *rows, "", "| contrast | method | cases | mean PSNR in | mean SSIM in |", "|---|---|---|---|---|"]
    for (contrast, method), v in means.items():
        a = np.array(v, float)
        ok = ~np.isnan(a[:, 0])
        lines.append(f"| {contrast} | {method} | {ok.sum()}/{len(a)} | {a[ok, 0].mean():.2f} | {a[ok, 1].mean():.3f} |")
    out = Path(args.out or HERE / "results" / f"contrasts_{args.split}.md")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    print("\n".join(lines[-(len(means) + 2):]))


if __name__ == "__main__":
    main()
