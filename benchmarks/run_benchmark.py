#!/usr/bin/env python
"""Lesion-filling benchmark: usb_prep's default fill vs the real NiftySeg ``seg_FillLesions`` and simple fillers,
on brains and masks the model never saw, with two lesion-painting families, plus the BraTS inpainting case.

One command (about an hour on 2 cores; NiftySeg's outputs are cached, so reruns cost only our fills)::

    bash ../shared/tools/niftyseg/build.sh          # builds seg_FillLesions (~30 s), once
    python -m benchmarks prepare --only otsu_head   # the held-out brain to MNI 1 mm (~2 min), once
    python -m benchmarks run [--cap 600] [--per-category 1] [--threads 2]

Writes ``results.md`` (one table per brain and their mean, the BraTS case), ``results.json`` and the plots
``time_vs_volume.png`` / ``time_vs_lesions.png`` to ``--out``, and ``headline.md``, the README's table.
Cases: :mod:`cases`.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import paths
from .cases import (CATEGORIES, FAMILIES, Case, laplace_fill, load_brain, make_cases, niftyseg_fill, scores,
                   tissue_classes)

HERE = Path(__file__).resolve().parent
BRAINS = ("otsu_head", "ms07")
METHODS = ("usb", "niftyseg", "patch", "laplace", "usb_model")
LABELS = {"usb": "usb_prep (default)", "niftyseg": "NiftySeg seg_FillLesions (real)",
          "patch": "patch (ours, NiftySeg-like)", "laplace": "Laplace (harmonic)",
          "usb_model": "usb_prep model stage alone", "usb_compare": "usb_prep, --compare weights"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    paths.add(p, "data")
    paths.add(p, "brains")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--per-category", type=int, default=1, help="held-out masks per category and brain")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--cap", type=float, default=600, help="NiftySeg's time cap per case (s): 'did not finish'")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for usb_prep and NiftySeg")
    p.add_argument("--weights", default=None)
    p.add_argument("--compare", default=None, metavar="WEIGHTS",
                   help="also fill every case (and BraTS) with these weights ('packaged': the shipped ones), no "
                        "downstream: whether new --weights beat them on the same cases, in the same run")
    p.add_argument("--no-brats", action="store_true")
    p.add_argument("--brats-only", action="store_true",
                   help="only the BraTS case (to --out/brats.json and brats.md; results.json is left as it is)")
    p.add_argument("--no-downstream", action="store_true",
                   help="skip the registration / segmentation effect (downstream.py; ~25 min on 2 cores)")
    p.add_argument("--headline", action="store_true", help="only rewrite headline.md from --out/results.json")
    p.add_argument("--niftyseg-only", action="store_true",
                   help="only run (and cache) NiftySeg on every case, e.g. while the CPUs are otherwise idle")
    return p.parse_args(argv)


def headline(res: dict) -> str:
    """The README's table: per brain and painting family, usb_prep vs the real NiftySeg (from results.json)."""
    def m(xs, nd=2):
        return f"{np.mean(xs):.{nd}f}" if xs else "-"

    lines = ["| brain / lesions | where NiftySeg finished: usb_prep vs NiftySeg, PSNR dB (SSIM) | lead | "
             "where NiftySeg did not finish: usb_prep vs Laplace, PSNR dB | usb_prep s | NiftySeg s |",
             "|---|---|---|---|---|---|"]
    groups = {}
    for r in res["cases"]:
        groups.setdefault((r["brain"], r["family"]), []).append(r["results"])
    for (brain, fam), rs in groups.items():
        fin = [r for r in rs if "psnr" in r["niftyseg"]]
        dnf = [r for r in rs if "psnr" not in r["niftyseg"]]
        lead = [r["usb"]["psnr"] - r["niftyseg"]["psnr"] for r in fin]
        lines.append(
            f"| {brain} / {fam} | {m([r['usb']['psnr'] for r in fin])} ({m([r['usb']['ssim'] for r in fin], 3)}) vs "
            f"{m([r['niftyseg']['psnr'] for r in fin])} ({m([r['niftyseg']['ssim'] for r in fin], 3)}), {len(fin)} cases"
            f" | {np.mean(lead):+.2f} dB, ahead on {sum(x > 0 for x in lead)} of {len(lead)} | "
            f"{m([r['usb']['psnr'] for r in dnf])} vs {m([r['laplace']['psnr'] for r in dnf])}, {len(dnf)} cases | "
            f"{min(r['usb']['seconds'] for r in rs):.0f}-{max(r['usb']['seconds'] for r in rs):.0f} | "
            f"{min(r['niftyseg']['seconds'] for r in rs):.0f}-{max(r['niftyseg']['seconds'] for r in rs):.0f} |")
    br = res.get("brats") or {}
    if "usb" in br:
        nif = (f"{br['niftyseg']['psnr']:.2f} ({br['niftyseg']['ssim']:.3f})" if "niftyseg" in br
               else f"NiftySeg: {br.get('niftyseg_status', '-')}")
        lines.append(f"| BraTS inpainting case, challenge metric | {br['usb']['psnr']:.2f} ({br['usb']['ssim']:.3f}) vs "
                     f"{nif} | | Laplace: {br['laplace']['psnr']:.2f} ({br['laplace']['ssim']:.3f}) | "
                     f"{br['usb']['seconds']:.0f} | |")
    extra = compare_lines(res["cases"], br)
    if any("downstream" in r["results"].get("usb", {}) for r in res["cases"]):
        extra += ["", "Downstream (masks that cover the lesion; differences from the healthy image):", "",
                  *downstream_rows(res["cases"])]
    return "\n".join(lines + ["", *per_case(res), *extra]) + "\n"


def per_case(res: dict) -> list[str]:
    """One row per case: in-mask PSNR of usb_prep and NiftySeg, the lead, seconds."""
    lines = [("| case (brain / painting / mask) | ml | lesions | usb_prep dB | NiftySeg dB | usb_prep - NiftySeg | "
              "usb_prep s | NiftySeg s |"), "|---|---|---|---|---|---|---|---|"]
    for r in res["cases"]:
        u, n = r["results"]["usb"], r["results"]["niftyseg"]
        head = f"| {r['brain']} / {r['family']} / {r['category']} | {r['ml']:.1f} | {r['lesions']} | {u['psnr']:.2f} | "
        if "psnr" in n:
            lead = u["psnr"] - n["psnr"]
            lines.append(head + f"{n['psnr']:.2f} | {lead:+.2f} | {u['seconds']:.0f} | {n['seconds']:.0f} |")
        else:
            lines.append(head + f"- | NiftySeg did not finish | {u['seconds']:.0f} | > {n['seconds']:.0f} |")
    return lines


def compare_lines(rows, br=None) -> list[str]:
    """With ``--compare``: per case, the in-mask PSNR of these weights against the compared ones (``rows``:
    results.json's cases)."""
    rows = [r for r in rows if "usb_compare" in r["results"]]
    if not rows:
        return []
    d = [r["results"]["usb"]["psnr"] - r["results"]["usb_compare"]["psnr"] for r in rows]
    lines = ["", f"These weights against the `--compare` weights: {np.mean(d):+.2f} dB in-mask PSNR on average, ahead "
             f"on {sum(x > 0 for x in d)} of {len(d)} cases (worst {min(d):+.2f} dB).", "",
             "| case | ml | these weights dB (SSIM) | --compare weights dB (SSIM) | difference | seconds (these, "
             "compare) |",
             "|---|---|---|---|---|---|"]
    for r, x in zip(rows, d):
        u, c = r["results"]["usb"], r["results"]["usb_compare"]
        lines.append(f"| {r['case']} | {r['ml']:.1f} | {u['psnr']:.2f} ({u['ssim']:.3f}) | {c['psnr']:.2f} "
                     f"({c['ssim']:.3f}) | {x:+.2f} | {u['seconds']:.0f}, {c['seconds']:.0f} |")
    if br and "usb_compare" in br:
        lines.append(f"| BraTS (challenge metric) | | {br['usb']['psnr']:.2f} ({br['usb']['ssim']:.3f}) | "
                     f"{br['usb_compare']['psnr']:.2f} ({br['usb_compare']['ssim']:.3f}) | "
                     f"{br['usb']['psnr'] - br['usb_compare']['psnr']:+.2f} | {br['usb']['seconds']:.0f}, "
                     f"{br['usb_compare']['seconds']:.0f} |")
    return lines


def run_usb(model, c: Case, threads):
    from usb_prep import api

    t0, c0 = time.perf_counter(), time.process_time()
    parts = api.fill_parts(c.image, c.mask, model=model, affine=c.affine, device="cpu", seed=0)
    return parts, time.perf_counter() - t0, time.process_time() - c0


DOWNSTREAM = ("unfilled", "laplace", "niftyseg", "patch", "usb")  # the downstream table's rows


def fill_case(model, c: Case, args, thresholds, log, downstream=None, compare=None):
    """Fill one case by every method and score it; ``downstream``: a callable image -> effect dict, run on each
    method's output (and the unfilled input), or None; ``compare``: a second fill model (``--compare``), scored
    only."""
    from usb_prep.fill.fillers import fill_patch

    res, outs = {}, {"unfilled": c.image}
    parts, sec, cpu = run_usb(model, c, args.threads)
    outs["usb"] = parts.final
    res["usb"] = {**scores(parts.final, c, thresholds), "seconds": sec, "cpu_s": cpu,
                  "stages_s": {k: round(v, 2) for k, v in parts.seconds.items()}}
    res["usb_model"] = {**scores(parts.model, c, thresholds), "seconds": parts.seconds.get("model")}
    if compare is not None:
        other, sec2, _ = run_usb(compare, c, args.threads)
        res["usb_compare"] = {**scores(other.final, c, thresholds), "seconds": sec2}
    out, info = niftyseg_fill(c.image, c.mask, c.affine, cap_s=args.cap, threads=args.threads)
    res["niftyseg"] = {**(scores(out, c, thresholds) if out is not None else {}), **info}
    if out is not None:
        outs["niftyseg"] = out
    t0 = time.perf_counter()
    out = outs["patch"] = fill_patch(c.image, c.mask, np.random.default_rng(0), brain=c.brain_mask)
    res["patch"] = {**scores(out, c, thresholds), "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    out = outs["laplace"] = laplace_fill(c.image, c.mask)
    res["laplace"] = {**scores(out, c, thresholds), "seconds": time.perf_counter() - t0}
    if downstream is not None:
        res["unfilled"] = {}
        for name in DOWNSTREAM:
            if name in outs:
                res[name]["downstream"] = downstream(outs[name])
        log(f"{c.name}: downstream " + ", ".join(
            f"{k} {res[k]['downstream']['vol_err_ml']:.1f} ml / {res[k]['downstream']['reg_lesion_mm']:.2f} mm"
            for k in DOWNSTREAM if "downstream" in res.get(k, {})))
    c.results = res
    ns = res["niftyseg"]
    log(f"{c.name}: {c.volume_ml:.1f} ml, {c.lesions} lesions | usb {res['usb']['psnr']:.2f} dB {sec:.0f} s | "
        f"niftyseg {ns.get('psnr', float('nan')):.2f} dB {ns['seconds'] or 0:.0f} s ({ns['status']})")


def brats_input(data: Path):
    """The BraTS case's voided T1 divided by its known 99.5th percentile, the inpainting mask, the affine and
    that scale."""
    import nibabel as nib

    d = data / "patients" / "brats_gli_00001"
    mask = np.asanyarray(nib.load(str(d / "inpainting_mask.nii.gz")).dataobj) > 0.5
    voided = nib.load(str(d / "t1n_voided.nii.gz"))
    v = voided.get_fdata(dtype=np.float32)
    scale = float(np.percentile(v[(v > 0) & ~mask], 99.5))
    return v / scale, mask, voided.affine, scale


def largest_piece(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest connected component of ``mask`` and the number of components."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    return (lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))) if n else lab > 0, n


def brats_healthy(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The BraTS case's scored region, the inpainting mask's components other than the largest one (the dilated
    tumour), and the number of components."""
    big, n = largest_piece(mask)
    return (mask & ~big if n > 1 else mask), n


def brats_score(fill: np.ndarray, scale: float, affine, healthy_path: Path, data: Path, path: Path) -> dict:
    """The challenge's metrics (``inpainting`` 0.0.12) of a normalised ``fill`` of the BraTS case, written to
    ``path`` in the scan's units."""
    import nibabel as nib
    from inpainting.challenge_metrics_2023 import compute_image_quality_metrics

    d = data / "patients" / "brats_gli_00001"
    nib.save(nib.Nifti1Image((fill * scale).astype(np.float32), affine), str(path))
    m = compute_image_quality_metrics(str(path), str(healthy_path), str(d / "t1n.nii.gz"),
                                      str(d / "t1n_voided.nii.gz"))
    return {"psnr": m["psnr"], "ssim": m["ssim"], "mae": m["mae"]}


def brats(model, data: Path, out_dir: Path, args, log, compare=None):
    """The BraTS 2023 inpainting case, scored with the challenge's own code (``inpainting`` 0.0.12) in the
    healthy region: the inpainting mask's components other than the largest one (the dilated tumour)."""
    import nibabel as nib

    from usb_prep import api

    try:
        import inpainting.challenge_metrics_2023  # noqa: F401 -- brats_score's metric code
    except ImportError:
        return {"skipped": "pip install inpainting==0.0.12"}
    x, mask, affine, scale = brats_input(data)
    healthy, n = brats_healthy(mask)
    tmp = out_dir / "brats"
    tmp.mkdir(parents=True, exist_ok=True)
    hp = tmp / "healthy_mask.nii.gz"
    nib.save(nib.Nifti1Image(healthy.astype(np.uint8), affine), str(hp))
    fills = {}
    for name, m in (("usb", model), ("usb_compare", compare)):
        if m is not None:
            t0 = time.perf_counter()
            fills[name] = (api.fill_array(x, mask, model=m, affine=affine, device="cpu", seed=0),
                           time.perf_counter() - t0)
    out, info = niftyseg_fill(x, mask, affine, cap_s=args.cap, threads=args.threads)
    if out is not None:
        fills["niftyseg"] = (out, info["seconds"])
    t0 = time.perf_counter()
    fills["laplace"] = (laplace_fill(x, mask), time.perf_counter() - t0)
    res = {"healthy_voxels": int(healthy.sum()), "mask_voxels": int(mask.sum()), "components": int(n),
           "niftyseg_status": info["status"]}
    for name, (arr, sec) in fills.items():
        res[name] = {**brats_score(arr, scale, affine, hp, data, tmp / f"{name}.nii.gz"), "seconds": sec}
        log(f"brats {name}: {res[name]['psnr']:.2f} dB / SSIM {res[name]['ssim']:.3f} ({sec:.0f} s)")
    return res


def _f(x, nd=2):
    return "-" if x is None or (isinstance(x, float) and x != x) else (f"{x:.{nd}f}" if not isinstance(x, str) else x)


def cell(r):
    if "psnr" not in r:
        return f"{r.get('status')} ({_f(r.get('seconds'), 0)} s)"
    return f"{_f(r['psnr'])} / {_f(r['ssim'], 3)} / {_f(r['mae'], 4)} / {_f(r.get('tissue'), 2)} / {_f(r.get('seconds'), 1)}"


def table(cases, title):
    methods = METHODS + (("usb_compare",) if cases and "usb_compare" in cases[0].results else ())
    lines = [f"### {title}", "", "Cell: PSNR dB / SSIM / MAE in the mask / tissue agreement / seconds.", "",
             "| case | ml | lesions | " + " | ".join(LABELS[m] for m in methods) + " | usb - NiftySeg dB |",
             "|---|---|---|" + "---|" * len(methods) + "---|"]
    for c in cases:
        r = c.results
        lead = r["usb"]["psnr"] - r["niftyseg"]["psnr"] if "psnr" in r["niftyseg"] else None
        lines.append(f"| {c.family}/{c.category}/{c.mask_name} | {c.volume_ml:.1f} | {c.lesions} | "
                     + " | ".join(cell(r[m]) for m in methods)
                     + f" | {_f(lead) if lead is not None else 'NiftySeg DNF'} |")
    lines.append("| **mean** | | | " + " | ".join(mean_cell(cases, m) for m in methods) + f" | {mean_lead(cases)} |")
    return lines + [""]


def downstream_rows(rows) -> list[str]:
    """Per brain and method, the mean downstream differences from the healthy image (``downstream.py``);
    ``rows``: results.json's cases."""
    lines = ["| brain | method | cases | tissue volume error ml | tissue Dice near the lesion | registration "
             "difference in the lesion mm | in a 5 mm ring mm |", "|---|---|---|---|---|---|---|"]
    for b in dict.fromkeys(r["brain"] for r in rows):
        bc = [r["results"] for r in rows if r["brain"] == b and "downstream" in r["results"].get("usb", {})]
        for m in DOWNSTREAM:
            ds = [r[m]["downstream"] for r in bc if "downstream" in r.get(m, {})]
            if not ds:
                continue
            lines.append(f"| {b} | {m if m == 'unfilled' else LABELS[m]} | {len(ds)} of {len(bc)} | "
                         + " | ".join(f"{np.nanmean([d[k] for d in ds]):.{nd}f}" for k, nd in
                                      (("vol_err_ml", 1), ("dice", 3), ("reg_lesion_mm", 2), ("reg_ring_mm", 2)))
                         + " |")
    return lines


def downstream_table(cases) -> list[str]:
    lines = ["### Downstream: registration and tissue segmentation against the healthy image", "",
             "ANTs SyN to MNI152 (2 mm) and ANTs Atropos (3 classes) run on each filler's output and on the healthy "
             "brain (`downstream.py`), `train` painting (masks that cover the lesion); lower is better except Dice. "
             "NiftySeg only where it finished (its rows average fewer cases).", "",
             *downstream_rows([{"brain": c.brain, "results": c.results} for c in cases]), "",
             "| case | method | volume error ml | Dice | registration lesion mm | ring mm |", "|---|---|---|---|---|---|"]
    for c in cases:
        for m in DOWNSTREAM:
            d = c.results.get(m, {}).get("downstream")
            if d:
                lines.append(f"| {c.name} | {m} | {d['vol_err_ml']:.1f} | {d['dice']:.3f} | {d['reg_lesion_mm']:.2f} | "
                             f"{d['reg_ring_mm']:.2f} |")
    return lines + [""]


def mean_cell(cases, m):
    rs = [c.results[m] for c in cases if "psnr" in c.results[m]]
    if not rs:
        return "-"
    k = len(rs)
    note = "" if k == len(cases) else f" ({k} of {len(cases)} finished)"
    return (f"{np.mean([r['psnr'] for r in rs]):.2f} / {np.mean([r['ssim'] for r in rs]):.3f} / "
            f"{np.mean([r['mae'] for r in rs]):.4f} / {np.mean([r.get('tissue', np.nan) for r in rs]):.2f} / "
            f"{np.mean([r.get('seconds') or 0 for r in rs]):.1f}{note}")


def mean_lead(cases):
    d = [c.results["usb"]["psnr"] - c.results["niftyseg"]["psnr"] for c in cases if "psnr" in c.results["niftyseg"]]
    if not d:
        return "-"
    return f"{np.mean(d):+.2f} (ahead on {sum(x > 0 for x in d)} of {len(d)} NiftySeg finished)"


def plots(cases, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, xlabel, fname in (("volume_ml", "lesion volume (ml)", "time_vs_volume.png"),
                               ("lesions", "connected lesions", "time_vs_lesions.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for m, mk in (("usb", "o"), ("niftyseg", "s"), ("patch", "^")):
            xs = [getattr(c, key) for c in cases]
            ys = [c.results[m].get("seconds") or np.nan for c in cases]
            dnf = [c.results[m].get("status") == "did not finish" for c in cases]
            ax.scatter(xs, ys, marker=mk, label=LABELS[m])
            if any(dnf):
                ax.scatter([x for x, d in zip(xs, dnf) if d], [y for y, d in zip(ys, dnf) if d], marker="x",
                           c="red", label="NiftySeg did not finish (cap)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("wall seconds (2 threads)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=100)
        plt.close(fig)


def brats_table(br: dict) -> list[str]:
    """The BraTS case's rows (results.md, brats.md)."""
    if not br or "usb" not in br:
        return []
    lines = ["### BraTS 2023 inpainting case (brats_gli_00001), the challenge's metric code", "",
             f"Healthy region: {br['healthy_voxels']} voxels ({br['components'] - 1} of the mask's "
             f"{br['components']} components; the largest, the dilated tumour, is not scored). "
             "The 2024 challenge winner: 23.26 dB / SSIM 0.841 (validation set).", "",
             "| method | PSNR | SSIM | MAE | seconds |", "|---|---|---|---|---|"]
    for m in ("usb", "usb_compare", "niftyseg", "laplace"):
        if m == "usb_compare" and m not in br:
            continue
        if m in br:
            r = br[m]
            lines.append(f"| {LABELS[m]} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['mae']:.4f} | {r['seconds']:.0f} |")
        else:
            lines.append(f"| {LABELS[m]} | {br.get('niftyseg_status')} | | | |")
    return lines + [""]


def brats_alone(model, info, data: Path, out_dir: Path, args, log, t0: float, argv, compare=None) -> dict:
    """``--brats-only``: the BraTS case alone (and ``--compare``'s weights on it, in the same run), to
    ``brats.json`` / ``brats.md`` (the other cases' results stay)."""
    from usb_prep import __version__

    br = brats(model, data, out_dir, args, log, compare)
    if "skipped" in br:
        raise SystemExit(f"BraTS case skipped: {br['skipped']}")
    br.update(weights_sha256=info["sha256"], settings=model.fill_settings.to_dict(), usb_prep_version=__version__)
    cmd = "python -m benchmarks run " + " ".join(argv if argv is not None else sys.argv[1:])
    (out_dir / "brats.json").write_text(json.dumps(br, indent=1, default=float))
    head = f"Command: `{cmd.strip()}`; fill weights sha256 {info['sha256'][:12]}; {args.threads} CPU threads."
    (out_dir / "brats.md").write_text("\n".join([head, "", *brats_table(br)]) + "\n")
    log(f"wrote {out_dir / 'brats.md'}")
    return br


def main(argv=None):
    import torch

    from usb_prep import __version__
    from usb_prep.weights import load_model

    args = parse_args(argv)
    out_dir = Path(args.out)
    if args.headline:
        (out_dir / "headline.md").write_text(headline(json.loads((out_dir / "results.json").read_text())))
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    model, info = load_model(args.weights, "fill", "cpu")
    compare, compare_info = None, None
    if args.compare:
        compare, compare_info = load_model(None if args.compare == "packaged" else args.compare, "fill", "cpu")
    data = Path(args.data)
    if args.brats_only:
        return brats_alone(model, info, data, out_dir, args, log, time.time() - t_start, argv, compare)
    brains = [load_brain(b, data, Path(args.brains)) for b in BRAINS]
    cases = make_cases(brains, data, args.per_category, args.families, log=log)
    if args.niftyseg_only:
        for c in cases:
            _, info = niftyseg_fill(c.image, c.mask, c.affine, cap_s=args.cap, threads=args.threads)
            log(f"{c.name}: NiftySeg {info['status']} ({info['seconds'] or 0:.0f} s)")
        if not args.no_brats:
            x, mask, affine, _ = brats_input(data)
            _, info = niftyseg_fill(x, mask, affine, cap_s=args.cap, threads=args.threads)
            log(f"brats: NiftySeg {info['status']} ({info['seconds'] or 0:.0f} s)")
        return
    thresholds = {b.name: tissue_classes(b.image, b.brain) for b in brains}
    refs, template = {}, None
    if not args.no_downstream:
        from . import downstream as ds

        template = ds.Template()
    for c in cases:
        effect = None
        if template is not None and c.family == "train":  # masks that cover the lesion: what users fill
            b = next(b for b in brains if b.name == c.brain)
            if b.name not in refs:
                refs[b.name] = ds.reference(template, b.image, b.brain, b.affine)

            def effect(img, c=c, b=b):
                return ds.effect(template, refs[b.name], img, c.mask, b.brain, b.affine)
        fill_case(model, c, args, thresholds[c.brain], log, effect, compare)
    br = {} if args.no_brats else brats(model, data, out_dir, args, log, compare)
    plots(cases, out_dir)
    cmd = "python -m benchmarks run " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Lesion-filling benchmark", "",
             f"Command: `{cmd.strip()}` (total {time.time() - t_start:.0f} s). usb_prep {__version__}, fill weights "
             f"sha256 {info['sha256'][:12]}; {args.threads} CPU threads for every method ({platform.processor() or platform.machine()}); "
             f"NiftySeg capped at {args.cap:.0f} s per case.", "",
             "Held out of all training: brains `otsu_head` (healthy) and `ms07` (an MS patient; its own lesions, dilated "
             "by 3 voxels, are kept out of every painted mask), and every mask (the held-out split of "
             "`usb_prep.data.splits`). Painting families: `train` (the training synthesis, inside the mask) and `rim` "
             "(never trained on: a CSF-like core and a partial-volume rim one voxel beyond the mask).", ""]
    for b in BRAINS:
        lines += table([c for c in cases if c.brain == b], f"Brain {b}")
    lines += table(cases, "All cases")
    if any("downstream" in c.results.get("usb", {}) for c in cases):
        lines += downstream_table(cases)
    for fam in args.families:
        lines.append(f"- family `{fam}`: lead over NiftySeg {mean_lead([c for c in cases if c.family == fam])}")
    rows = [{"case": c.name, "brain": c.brain, "family": c.family, "category": c.category, "ml": c.volume_ml,
             "lesions": c.lesions, "results": c.results} for c in cases]
    if compare is not None:
        lines += [f"- `--compare` weights: sha256 {compare_info['sha256'][:12]}", *compare_lines(rows, br)]
    lines.append("")
    lines += brats_table(br)
    lines += ["Plots: `time_vs_volume.png`, `time_vs_lesions.png`. Categories: "
              + ", ".join(f"{k} {v[1]:g}-{v[2]:g} ml" for k, v in CATEGORIES.items()) + "."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    res = {"command": cmd, "weights_sha256": info["sha256"], "settings": model.fill_settings.to_dict(),
           "cases": rows, "brats": br}
    if compare is not None:
        res["compare_weights_sha256"] = compare_info["sha256"]
    (out_dir / "results.json").write_text(json.dumps(res, indent=1, default=float))
    (out_dir / "headline.md").write_text(headline(json.loads(json.dumps(res, default=float))))
    log(f"wrote {out_dir / 'results.md'}")


if __name__ == "__main__":
    main()
