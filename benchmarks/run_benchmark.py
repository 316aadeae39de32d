#!/usr/bin/env python
"""Lesion-filling benchmark: classical fillers vs usb_prep on painted and real lesions.

One command::

    python benchmarks/run_benchmark.py [--data /work/shared/data] [--brains /work/cache/brains]
                                       [--out benchmarks/results] [--quick]

Writes ``results.md``, ``results.json`` and PNG figures to ``--out``. See
``benchmarks/README.md`` for what is measured and why.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CATEGORIES = {  # name: (cohorts, min ml, max ml)
    "stroke_small": (("soop", "neglect"), 1.0, 10.0),
    "stroke_medium": (("soop", "neglect"), 10.0, 40.0),
    "stroke_large": (("soop", "neglect"), 40.0, 150.0),
    "ms": (("ms",), 0.5, 1e9),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="/work/shared/data", help="folder with lesion_masks/ and patients/")
    p.add_argument("--brains", default="/work/cache/brains", help="folder with otsu_head_T1w/_brainmask.nii.gz")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--quick", action="store_true", help="1 case per category, fewer steps (~5 min)")
    p.add_argument("--per-category", type=int, default=None, help="cases per category (default 2, quick 1)")
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="usb known-mask filling step counts (default 1 5 10, quick 1 10)")
    p.add_argument("--generation", type=int, default=None,
                   help="unconditional pairs to generate for the generation metrics (default 4, quick 2; 0 skips)")
    p.add_argument("--gen-steps", type=int, default=25, help="sampling steps for generation")
    p.add_argument("--heal-steps", type=int, default=None, help="steps for mask-free healing (default: max --steps)")
    p.add_argument("--no-heal", action="store_true", help="skip mask-free healing (minutes per case)")
    p.add_argument("--weights", default=None, help="usb_prep weights folder (default: usb_prep's resolution order)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ITK")
    p.add_argument("--no-registration", action="store_true", help="skip the SyN downstream proxy")
    p.add_argument("--reg-cases", type=int, default=None, help="registration on this many cases per category "
                   "(default 1; quick: 1 case in total)")
    p.add_argument("--skip", nargs="+", default=[], metavar="METHOD",
                   help="methods (rows) to leave out, e.g. usb_blend_s1 (the default without its refiner)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data
@dataclass
class Case:
    name: str
    category: str
    image: "object"            # lesioned input (float32, normalised)
    mask: "object"             # bool, lesion to fill
    brain: "object"            # bool
    affine: "object"
    truth: "object" = None     # healthy ground truth or None
    volume_ml: float = 0.0
    source: str = ""
    results: dict = field(default_factory=dict)


def load_brain(brains: Path):
    """Held-out healthy brain (otsu_head, MNI 1 mm) or the MNI152 template as a stand-in."""
    import nibabel as nib
    import numpy as np

    t1, bm = brains / "otsu_head_T1w.nii.gz", brains / "otsu_head_brainmask.nii.gz"
    if t1.exists() and bm.exists():
        img = nib.load(str(t1))
        data = img.get_fdata(dtype=np.float32)
        brain = np.asanyarray(nib.load(str(bm)).dataobj) > 0.5
        source = f"otsu_head (held-out healthy T1w, {t1})"
    else:
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

        img = load_mni152_template(resolution=1)
        data = img.get_fdata(dtype=np.float32)
        brain = load_mni152_brain_mask(resolution=1).get_fdata() > 0
        source = "STAND-IN: nilearn MNI152 template (otsu_head not prepared yet)"
    data = np.where(brain, data, 0).astype(np.float32)
    data /= np.float32(np.percentile(data[brain], 99.5))
    return data, brain, img.affine, source


def native_volume_ml(path: Path) -> float:
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    return float((np.asanyarray(img.dataobj) > 0.5).sum() * abs(np.linalg.det(img.affine[:3, :3])) / 1000.0)


def mask_on_grid(path: Path, shape, affine, brain):
    import nibabel as nib
    import numpy as np
    from nibabel.processing import resample_from_to

    img = nib.load(str(path))
    img = nib.Nifti1Image((np.asanyarray(img.dataobj) > 0.5).astype(np.uint8), img.affine)
    m = np.asanyarray(resample_from_to(img, (shape, affine), order=0).dataobj) > 0
    return m & brain


def choose_masks(data_dir: Path, per_cat: int, shape, affine, brain, log):
    """First ``per_cat`` held-out masks (sorted by name) per category whose in-brain volume fits."""
    import numpy as np
    from usb_prep.data.splits import list_masks

    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    held = list_masks(data_dir / "lesion_masks", split="heldout")
    log(f"{len(held)} held-out masks")
    chosen = {c: [] for c in CATEGORIES}
    for path in held:
        cohort = path.parent.name
        open_cats = [c for c, (coh, lo, hi) in CATEGORIES.items() if cohort in coh and len(chosen[c]) < per_cat]
        if not open_cats:
            continue
        v0 = native_volume_ml(path)
        # cheap pre-screen on the native volume (brain intersection only shrinks it)
        open_cats = [c for c in open_cats if CATEGORIES[c][1] * 0.9 <= v0 and v0 > 0]
        if not open_cats:
            continue
        m = mask_on_grid(path, shape, affine, brain)
        v = float(m.sum() * voxel_ml)
        for c in open_cats:
            lo, hi = CATEGORIES[c][1:]
            if lo <= v <= hi:
                chosen[c].append((path, m, v))
                break
        if all(len(x) >= per_cat for x in chosen.values()):
            break
    return chosen


def paint(image, brain, mask, rng):
    """usb_prep.data.synthesis.paint_lesion, or a stand-in with the authors' T1w formula."""
    import numpy as np

    try:
        from usb_prep.data.synthesis import paint_lesion

        out = paint_lesion(image, brain, mask, rng, contrast="T1w")
        out = out[0] if isinstance(out, tuple) else out
        # confine the lesion to its mask: the mask then covers the whole lesion, as a user's mask should,
        # and no method is handed a darkened rim outside it
        return np.where(mask, out, image).astype(np.float32), \
            "usb_prep.data.synthesis.paint_lesion(contrast='T1w'), confined to the mask"
    except (ImportError, AttributeError):
        from scipy import ndimage

        p = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 1.0) * 2, 0, 1) * mask
        i_mu = float(image[mask].mean())
        u = rng.random()
        mu, sd = -(0.75 + 0.25 * u) * i_mu, 0.25 * rng.random() * i_mu
        out = np.maximum(0, image + p * (mu + sd * rng.standard_normal(image.shape))).astype(np.float32)
        return np.where(mask, out, image), "stand-in (authors' T1w formula inside the mask)"


def load_patient(pdir: Path):
    import nibabel as nib
    import numpy as np
    from nibabel.processing import resample_from_to

    img = nib.load(str(pdir / "T1w.nii.gz"))
    data = img.get_fdata(dtype=np.float32)
    mimg = nib.load(str(pdir / "lesion_mask.nii.gz"))
    if mimg.shape != img.shape or not np.allclose(mimg.affine, img.affine):
        mimg = resample_from_to(mimg, img, order=0)
    mask = np.asanyarray(mimg.dataobj) > 0.5
    brain = (data > 0) | mask
    data = np.where(brain, data, 0).astype(np.float32)
    data /= np.float32(np.percentile(data[brain & ~mask], 99.5))
    return data, mask & brain, brain, img.affine


# ----------------------------------------------------------------------------- methods
def classical_patch(image, mask, brain):
    """The benchmark's classical patch filler (NiftySeg-like), as every benchmark script calls it."""
    import numpy as np

    from usb_prep.classical import fill_patch

    return fill_patch(image, mask, np.random.default_rng(0), brain=brain)


def build_methods(args, log):
    """Return ({name: callable(case) -> array or (array, extra)}, {name: reason not available})."""
    import numpy as np
    from usb_prep.classical import fill_nlm, fill_wmstats

    methods = {
        "unfilled": lambda c: c.image.copy(),
        "wmstats": lambda c: fill_wmstats(c.image, c.mask, np.random.default_rng(0), brain=c.brain,
                                          voxel_size=_vox(c.affine)),
        "patch": lambda c: classical_patch(c.image, c.mask, c.brain),
        # ours, not a published tool: the non-local-means patch fill that the usb default averages in
        "nlm": lambda c: fill_nlm(c.image, c.mask, brain=c.brain),
    }
    missing = {}
    usb_names = ([f"usb_model_s{min(args.steps)}"] + [f"usb_fill_s{s}" for s in args.steps]
                 + [f"usb_blend_s{min(args.steps)}", f"usb_nopmirror_s{min(args.steps)}"]
                 + ([] if args.no_heal else [f"usb_heal_s{args.heal_steps}"]))
    try:
        from usb_prep import api
        from usb_prep.weights import load_model

        model, _ = load_model(args.weights, "fill", api.resolve_device("cpu"))
    except Exception as e:  # noqa: BLE001 -- any failure means "not available", reported in the table
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        log(f"usb_prep model not available: {reason}")
        return methods, {n: reason for n in usb_names}

    memo = {}  # (case, steps) -> (the model's own fill, its seconds): the default fill reuses it

    def model_only(c, s):
        """The model's own fill and the seconds of earlier work reused (0 when computed now)."""
        if (c.name, s) in memo:
            return memo[c.name, s]
        t0 = time.perf_counter()
        out = api.fill_array(c.image, c.mask, model=model, steps=s, seed=0, voxel_size=_vox(c.affine),
                             device="cpu", affine=c.affine, patch_weight=0.0, nlm_weight=0.0)
        memo[c.name, s] = (out, time.perf_counter() - t0)
        return out, 0.0

    def usb_fill(s, **kw):  # = api.fill_array with the shipped defaults (or kw), its model part shared
        def f(c):
            u, reused = model_only(c, s)
            out = api.blend_fill(u, c.image, c.mask, model.cfg, steps=s, seed=0, affine=c.affine,
                                 refiner=model.refiner, **kw)
            return out, None, reused
        return f

    # the model alone first, without the shares of the patch fills that the shipped default averages in
    s0 = min(args.steps)
    methods[f"usb_model_s{s0}"] = lambda c: (lambda u, reused: (u, None, reused))(*model_only(c, s0))
    for s in args.steps:
        methods[f"usb_fill_s{s}"] = usb_fill(s)
    # the default without its refiner (where the weights ship one): the blend the refiner corrects
    methods[f"usb_blend_s{s0}"] = usb_fill(s0, refine=False)
    # the default with the other patch_mirror setting, named for that setting: the patch fill's candidates
    # not / also from the mirrored brain (earlier runs compared nlm_mirror this way: usb_mirror_s1)
    other = "pmirror" if not model.cfg.default_patch_mirror else "nopmirror"
    methods[f"usb_{other}_s{s0}"] = usb_fill(s0, patch_mirror=not model.cfg.default_patch_mirror)

    def heal(c, s=args.heal_steps):
        out = api.heal_array(c.image, model=model, steps=s, seed=0, brain=c.brain, device="cpu",
                             voxel_size=_vox(c.affine), affine=c.affine)
        return out if isinstance(out, tuple) else (out, None)

    if not args.no_heal:
        methods[f"usb_heal_s{args.heal_steps}"] = heal
    return methods, missing


def _vox(affine):
    import numpy as np

    return tuple(float(x) for x in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)))


def run_method(fn, case):
    import torch

    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn(case)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    detected, reused = None, 0.0
    if isinstance(out, tuple):  # (out, detected mask[, seconds of shared work done by another row])
        out, detected, reused = (*out, 0.0)[:3]
    info = {
        "time_s": dt + reused,
        "threads": torch.get_num_threads(),
        "py_peak_mb": peak / 2**20,
        "rss_max_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    return out, detected, info


# ----------------------------------------------------------------------------- metrics
def image_metrics(out, case, hi):
    import numpy as np
    from usb_prep import metrics as M

    p, r = M.scale01(out, 0.0, hi), M.scale01(case.truth, 0.0, hi)
    res = {
        "mae_in": M.masked_mae(p, r, case.mask), "psnr_in": M.masked_psnr(p, r, case.mask),
        "ssim_in": M.masked_ssim(p, r, case.mask),
        "l1": M.l1(p, r), "psnr": M.psnr(p, r), "ssim": M.ssim(p, r),
    }
    res["outside_identical"] = bool(np.array_equal(out[~case.mask], case.image[~case.mask]))
    return res


def fmt(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if x != x:  # nan
        return "-"
    if x == float("inf"):
        return "inf"
    return f"{x:.{nd}f}"


# ----------------------------------------------------------------------------- figures
def slice_figure(path, case, outputs, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy import ndimage

    lab, _ = ndimage.label(case.mask)
    sizes = np.bincount(lab.ravel())[1:]
    big = lab == (np.argmax(sizes) + 1)
    cz = int(np.argmax(big.sum((0, 1))))
    cy = int(np.argmax(big.sum((0, 2))))
    panels = ([("truth", case.truth)] if case.truth is not None else []) + [("input", case.image)]
    panels += [(k, v) for k, v in outputs.items() if k != "unfilled"]
    bx = ndimage.find_objects(case.brain.astype(np.int8))[0]
    fig, axes = plt.subplots(2, len(panels), figsize=(2.2 * len(panels), 4.6), squeeze=False)
    for j, (name, vol) in enumerate(panels):
        for i, (sl, msl) in enumerate([
            (vol[bx[0], bx[1], cz], case.mask[bx[0], bx[1], cz]),
            (vol[bx[0], cy, bx[2]], case.mask[bx[0], cy, bx[2]]),
        ]):
            ax = axes[i, j]
            ax.imshow(np.rot90(sl), cmap="gray", vmin=0, vmax=1.1, interpolation="nearest")
            if name == "input" and msl.any():
                ax.contour(np.rot90(msl.astype(float)), levels=[0.5], colors="r", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_figure(path, cases, methods):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        if m == "unfilled":
            continue
        pts = [(c.volume_ml, c.results[m]["time_s"]) for c in cases if "time_s" in c.results.get(m, {})]
        if pts:
            x, y = zip(*sorted(pts))
            ax.plot(x, y, "o-", label=m, ms=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("lesion volume (ml)")
    ax.set_ylabel("wall time (s, 1 thread)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def versions():
    import importlib

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod, key in [("torch", "torch"), ("monai", "monai"), ("numpy", "numpy"), ("scipy", "scipy"),
                     ("nibabel", "nibabel"), ("ants", "antspyx"), ("usb_prep", "usb_prep")]:
        try:
            out[key] = getattr(importlib.import_module(mod), "__version__", "?")
        except Exception as e:  # noqa: BLE001
            out[key] = f"not importable ({type(e).__name__})"
    try:
        out["git_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or "none"
    except Exception:  # noqa: BLE001
        out["git_commit"] = "none"
    return out


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(REPO))  # run from a checkout without installing
    sys.path.insert(0, str(HERE))
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    args.per_category = args.per_category or (1 if args.quick else 2)
    args.steps = args.steps or ([1, 10] if args.quick else [1, 5, 10])
    args.heal_steps = args.heal_steps or min(args.steps)
    if args.generation is None:
        args.generation = 2 if args.quick else 4
    if args.reg_cases is None:
        args.reg_cases = 1
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    import downstream as D

    command = " ".join([Path(sys.executable).name, *[str(a) for a in sys.argv]]) if argv is None else \
        "python benchmarks/run_benchmark.py " + " ".join(argv)
    data_dir, brains = Path(args.data), Path(args.brains)
    truth, brain, affine, brain_source = load_brain(brains)
    log(f"brain: {brain_source}, grid {truth.shape}")
    hi = float(truth[brain].max())  # common [0, 1] scale: min-max of the healthy truth (paper style)

    chosen = choose_masks(data_dir, args.per_category, truth.shape, affine, brain, log)
    cases: list[Case] = []
    i = 0
    paint_how = ""
    for cat, items in chosen.items():
        for path, m, v in items:
            img, paint_how = paint(truth, brain, m, np.random.default_rng(1000 + i))
            name = f"{cat}:{path.name.split('.nii')[0]}"
            cases.append(Case(name, cat, img, m, brain, affine, truth, v, str(path)))
            i += 1
        log(f"{cat}: {[(p.name, round(v, 1)) for p, _, v in items]}")

    methods, missing = build_methods(args, log)
    unknown = set(args.skip) - set(methods) - set(missing)
    if unknown:
        raise SystemExit(f"--skip: no such method {sorted(unknown)}; methods: {list(methods)}")
    methods = {k: v for k, v in methods.items() if k not in args.skip}
    missing = {k: v for k, v in missing.items() if k not in args.skip}
    mnames = list(methods) + [m for m in missing if m not in methods]

    # registration set-up (subset)
    reg_subset = set()
    if not args.no_registration:
        if args.quick:
            pick = [c for c in cases if c.category == "stroke_medium"] or cases
            reg_subset = {pick[0].name} if pick else set()
        else:
            for cat in CATEGORIES:
                reg_subset |= set([c.name for c in cases if c.category == cat][: args.reg_cases])
        fixed = D.mni_fixed(2.0)
        brain_fixed = fixed.numpy() > 0.05
    reg_methods = [m for m in methods if m in ("unfilled", "wmstats", "patch")
                   or m == f"usb_fill_s{max(args.steps)}" or m.startswith("usb_heal")]

    from usb_prep import metrics as M

    for case in cases:
        log(f"case {case.name} ({case.volume_ml:.1f} ml)")
        box = D.crop_box(case.mask, 12)
        shell = D.shell(case.mask, 3.0, _vox(affine), brain)
        seg_truth = D.segment3(case.truth, brain, box)
        outputs = {}
        reg_ref = None
        if case.name in reg_subset:
            t0 = time.perf_counter()
            reg_ref = D.register_syn(fixed, case.truth, affine)
            moving_like = D.to_ants(case.truth, affine)
            lesion_fixed = D.to_fixed_mask(fixed, case.mask, affine, reg_ref)
            log(f"  registration of the healthy truth: {time.perf_counter() - t0:.1f}s")
        for mname, fn in methods.items():
            try:
                out, detected, info = run_method(fn, case)
            except Exception as e:  # noqa: BLE001
                case.results[mname] = {"error": f"{type(e).__name__}: {e}"[:300]}
                log(f"  {mname}: FAILED {e}")
                continue
            res = {**info, **image_metrics(out, case, hi)}
            seg = D.segment3(out, brain, box)
            a_in, a_sh = D.seg_agreement(seg, seg_truth, case.mask), D.seg_agreement(seg, seg_truth, shell)
            res.update({"seg_agree_in": a_in["agree"], "seg_dice_in": a_in["dice"],
                        "seg_agree_shell": a_sh["agree"], "seg_dice_shell": a_sh["dice"]})
            if detected is not None:
                res["detect_dice"] = M.dice(detected, case.mask)
            if reg_ref is not None and mname in reg_methods:
                t0 = time.perf_counter()
                reg = D.register_syn(fixed, out, affine)
                res.update(D.warp_difference(fixed, reg, reg_ref, moving_like, lesion_fixed, brain_fixed))
                res["reg_time_s"] = time.perf_counter() - t0
            case.results[mname] = res
            outputs[mname] = out
            log(f"  {mname}: {info['time_s']:.1f}s  in-mask PSNR {res['psnr_in']:.2f}  SSIM {res['ssim_in']:.3f}"
                f"  seg agree in/shell {res['seg_agree_in']:.2f}/{res['seg_agree_shell']:.2f}")
        for mname, reason in missing.items():
            case.results[mname] = {"error": f"not available: {reason}"}
        slice_figure(out_dir / f"fig_{case.name.replace(':', '_')}.png", case, outputs,
                     f"{case.name}  {case.volume_ml:.1f} ml  (painted on "
                     f"{'MNI152 stand-in' if brain_source.startswith('STAND-IN') else 'otsu_head'})")

    # real patient(s): no ground truth
    patients = []
    pdir = data_dir / "patients" / "ms07"
    if (pdir / "T1w.nii.gz").exists():
        data, pmask, pbrain, paff = load_patient(pdir)
        pc = Case("patient:ms07", "patient", data, pmask, pbrain, paff, None,
                  float(pmask.sum() * abs(np.linalg.det(paff[:3, :3])) / 1000), str(pdir))
        log(f"patient ms07 ({pc.volume_ml:.1f} ml)")
        box = D.crop_box(pmask, 12)
        shell = D.shell(pmask, 3.0, _vox(paff), pbrain)
        outputs = {}
        for mname, fn in methods.items():
            try:
                out, detected, info = run_method(fn, pc)
            except Exception as e:  # noqa: BLE001
                pc.results[mname] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            seg = D.segment3(out, pbrain, box)
            res = {**info, "outside_identical": bool(np.array_equal(out[~pmask], data[~pmask]))}
            res.update({f"in_{k}": v for k, v in D.class_fractions(seg, pmask).items()})
            res.update({f"shell_{k}": v for k, v in D.class_fractions(seg, shell).items()})
            if detected is not None:
                res["detect_dice"] = M.dice(detected, pmask)
            pc.results[mname] = res
            outputs[mname] = out
        for mname, reason in missing.items():
            pc.results[mname] = {"error": f"not available: {reason}"}
        slice_figure(out_dir / "fig_patient_ms07.png", pc, outputs, f"MS patient 07 (real lesions, {pc.volume_ml:.1f} ml)")
        patients.append(pc)

    time_figure(out_dir / "time_vs_volume.png", cases + patients, mnames)
    total = time.perf_counter() - t_start
    report = write_reports(out_dir, args, command, versions(), brain_source, paint_how, cases, patients, mnames,
                           missing, reg_subset, total)
    if args.generation:
        import generation as G

        log("generation tasks")
        gen = G.run_generation(out_dir, brains, weights=args.weights, n=args.generation, steps=args.gen_steps, log=log)
        with open(out_dir / "results.md", "a") as f:
            f.write(G.markdown(gen))
        rj = json.loads((out_dir / "results.json").read_text())
        rj["generation"] = gen
        (out_dir / "results.json").write_text(json.dumps(rj, indent=2, default=str))
        total = time.perf_counter() - t_start
    log(f"done in {total:.0f}s -> {out_dir / 'results.md'}")
    return report


def _mean(vals):
    vals = [v for v in vals if v is not None and v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def write_reports(out_dir, args, command, vers, brain_source, paint_how, cases, patients, mnames, missing,
                  reg_subset, total):
    keys_img = ["mae_in", "psnr_in", "ssim_in", "l1", "psnr", "ssim"]
    keys_seg = ["seg_agree_in", "seg_agree_shell", "seg_dice_in", "seg_dice_shell"]
    summary = {}
    for m in mnames:
        for cat in [*CATEGORIES, "all"]:
            rows = [c.results.get(m, {}) for c in cases if cat in ("all", c.category)]
            rows = [r for r in rows if "error" not in r]
            if rows:
                summary.setdefault(m, {})[cat] = {k: _mean([r.get(k) for r in rows])
                                                  for k in keys_img + keys_seg + ["time_s", "detect_dice"]}
                summary[m][cat]["n"] = len(rows)
    settings = {k: v for k, v in vars(args).items()}
    js = {
        "command": command, "versions": vers, "settings": settings, "brain": brain_source, "painting": paint_how,
        "total_time_s": total, "registration_cases": sorted(reg_subset),
        "cases": [{"name": c.name, "category": c.category, "mask_file": c.source, "volume_ml": c.volume_ml,
                   "methods": c.results} for c in cases],
        "patients": [{"name": p.name, "folder": p.source, "volume_ml": p.volume_ml, "methods": p.results}
                     for p in patients],
        "summary": summary, "not_available": missing,
    }
    (out_dir / "results.json").write_text(json.dumps(js, indent=1, default=float))

    L = ["# Lesion-filling benchmark", ""]
    L += [f"Command: `{command}`  ", f"Total wall time: {total / 60:.1f} min, {args.threads} CPU thread(s).  ",
          "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + "  ",
          f"Healthy brain: {brain_source}.  ", f"Lesion painting: {paint_how}, seed 1000 + case index.  ",
          "Intensities for metrics: both images mapped to [0, 1] by the healthy truth's in-brain min-max "
          "(0 .. max), clipped.", ""]
    if missing:
        L += ["**Not available in this run:** " + "; ".join(f"`{k}` ({v})" for k, v in missing.items()), ""]
    L += ["## Summary (mean over cases)", "",
          "In-mask: MAE / PSNR (dB) / SSIM over lesion voxels (BraTS-inpainting style). Whole: L1 / PSNR / SSIM "
          "over the whole volume (paper Table 2 style; background counts). Seg: 3-class Atropos label agreement "
          "with the healthy truth's segmentation inside the lesion / in a 3 mm shell. Time: filler wall time.", "",
          "| method | category | n | MAE in | PSNR in | SSIM in | L1 | PSNR | SSIM | seg in | seg shell | time s |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in mnames:
        if m not in summary:
            L.append(f"| {m} | all | 0 | not available | | | | | | | | |")
            continue
        for cat, s in summary[m].items():
            L.append(f"| {m} | {cat} | {s['n']} | {fmt(s['mae_in'], 4)} | {fmt(s['psnr_in'], 2)} | "
                     f"{fmt(s['ssim_in'])} | {fmt(s['l1'], 5)} | {fmt(s['psnr'], 2)} | {fmt(s['ssim'], 4)} | "
                     f"{fmt(s['seg_agree_in'])} | {fmt(s['seg_agree_shell'])} | {fmt(s['time_s'], 1)} |")
    L += ["", "## Per case", "",
          "| case | ml | method | MAE in | PSNR in | SSIM in | PSNR | SSIM | seg in | seg shell | time s | "
          "peak py MB | outside identical |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        for m in mnames:
            r = c.results.get(m, {})
            if "error" in r:
                L.append(f"| {c.name} | {c.volume_ml:.1f} | {m} | {r['error'][:60]} | | | | | | | | | |")
                continue
            L.append(f"| {c.name} | {c.volume_ml:.1f} | {m} | {fmt(r['mae_in'], 4)} | {fmt(r['psnr_in'], 2)} | "
                     f"{fmt(r['ssim_in'])} | {fmt(r['psnr'], 2)} | {fmt(r['ssim'], 4)} | {fmt(r['seg_agree_in'])} | "
                     f"{fmt(r['seg_agree_shell'])} | {fmt(r['time_s'], 2)} | {fmt(r['py_peak_mb'], 0)} | "
                     f"{r['outside_identical']} |")
    if reg_subset:
        L += ["", "## Registration proxy (subset: " + ", ".join(sorted(reg_subset)) + ")", "",
              "SyN (antspyx, 2 mm) to the MNI152 template; mean distance (mm) between where this image's and the "
              "healthy truth's registrations map each template voxel, inside the (warped) lesion and in the rest "
              "of the brain; max over the brain.", "",
              "| case | method | disp in mm | disp out mm | disp max mm | reg time s |", "|---|---|---|---|---|---|"]
        for c in cases:
            for m in mnames:
                r = c.results.get(m, {})
                if "disp_in_mm" in r:
                    L.append(f"| {c.name} | {m} | {fmt(r['disp_in_mm'])} | {fmt(r['disp_out_mm'])} | "
                             f"{fmt(r['disp_max_mm'])} | {fmt(r['reg_time_s'], 1)} |")
    if patients:
        L += ["", "## Real patient (no ground truth)", "",
              "Fraction of lesion / 3 mm-shell voxels per Atropos class (1 dark = CSF-like, 2 = GM-like, "
              "3 bright = WM-like) after filling; MS lesions sit in white matter, so a good fill makes the "
              "lesion mostly class 3.", "",
              "| patient | ml | method | in c1 | in c2 | in c3 | shell c3 | time s | outside identical |",
              "|---|---|---|---|---|---|---|---|---|"]
        for p in patients:
            for m in mnames:
                r = p.results.get(m, {})
                if "error" in r:
                    L.append(f"| {p.name} | {p.volume_ml:.1f} | {m} | {r['error'][:60]} | | | | | |")
                    continue
                L.append(f"| {p.name} | {p.volume_ml:.1f} | {m} | {fmt(r.get('in_class1'))} | "
                         f"{fmt(r.get('in_class2'))} | {fmt(r.get('in_class3'))} | {fmt(r.get('shell_class3'))} | "
                         f"{fmt(r['time_s'], 2)} | {r['outside_identical']} |")
    L += ["", "## Figures", ""]
    for f in sorted(out_dir.glob("*.png")):
        L.append(f"![{f.stem}]({f.name})")
    L.append("")
    (out_dir / "results.md").write_text("\n".join(L))
    return js


if __name__ == "__main__":
    main()
