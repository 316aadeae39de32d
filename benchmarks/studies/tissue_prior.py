"""Validation of the tissue prior (usb_prep.fill.prior.tissue_image) on brains other than the benchmark's.

Train-split SOOP strokes placed on colin27_brain and fsA_norm (as the outline study places them), painted with the
training synthesis: "thick" (35 ml or more) and "medium" (10-35 ml) cases. For each, usb_prep's packaged fill and
the variants that use the registered template's tissue image: as the guide channel of the patch and nlm searches
(``aux05``, ``aux1``: ``guide_weight`` 0.5, 1.0) or blended into the fill by depth (``blend06``). In-mask PSNR
against the healthy brain. Decides whether the prior ships (rule in benchmarks/results/training_log.md, written
before the first run); never run on benchmark cases.

    python -m benchmarks study tissue-prior --data ../shared/data --out benchmarks/results/validation/tissue
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from nibabel.affines import voxel_sizes

from usb_prep import api
from usb_prep.fill import prior
from usb_prep.fill.context import FillContext
from usb_prep.fill.pipeline import run_fill, settings_for
from usb_prep.weights import load_model

from ..cases import paint
from .prior_outline import psnr, strokes

VARIANTS = ("aux05", "aux1", "blend06", "start400", "start700")
FIRST = ("aux05", "aux1", "blend06")  # the first rule's variants; start*: the model stage starts from the tissue
#                                        image noised to that step (SDEdit), the amendment's
GROUPS = {"thick": (35, 400), "medium": (10, 35)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks study tissue-prior", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="the shared data folder (healthy/, lesion_masks/)")
    p.add_argument("--out", type=Path, help="results folder")
    p.add_argument("--per-brain", type=int, default=3, help="thick cases per brain")
    p.add_argument("--medium-per-brain", type=int, default=2)
    p.add_argument("--cache", type=Path, default=None, help="folder keeping each case's packaged fill")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(FIRST))
    p.add_argument("--table", type=Path, default=None,
                   help="only write the table of this jsonl (a run stopped early) next to it")
    a = p.parse_args(argv)
    variants = tuple(a.variants)
    if a.table is not None:
        rows = [json.loads(line) for line in a.table.read_text().splitlines() if line.strip()]
        return write_table(rows, variants, a.table.with_suffix(".md"), " A run stopped after its thick cases.")
    if a.data is None or a.out is None:
        p.error("--data and --out are required (without --table)")
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    model, _ = load_model(None, "fill", "cpu")
    rows = []
    tag = "" if variants == FIRST else "_" + "_".join(variants)
    log = (a.out / f"tissue_prior{tag}.jsonl").open("w")
    for group, n in (("thick", a.per_brain), ("medium", a.medium_per_brain)):
        def make(x, brain, lesion, i):
            return lesion, paint("train", x, brain, lesion, np.random.default_rng(i))

        for name, mname, x, mask, aff, painted in strokes(a.data, n, make, GROUPS[group]):
            zooms = voxel_sizes(aff)
            row = {"group": group, "brain": name, "mask": mname, "ml": float(mask.sum() * zooms.prod() / 1000),
                   "gate": prior.thick(mask, zooms)}
            cached = a.cache / f"tissue_{name}_{mname}.npy" if a.cache else None
            t0 = time.perf_counter()
            if cached is not None and cached.exists():
                base = np.load(cached)
            else:
                base = api.fill_array(painted, mask, model=model, affine=aff, device="cpu", seed=0)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.save(cached, base)
            row["psnr_base"] = psnr(base, x, mask)
            reg = prior.register_template(painted, mask, aff, tissues=True)
            tissue = prior.tissue_image(reg, painted, mask)
            row.update(quality=reg.quality, reg_seconds=reg.seconds, psnr_tissue=psnr(
                np.where(mask, tissue, painted), x, mask) if tissue is not None else None)
            if tissue is not None:
                for v in variants:
                    if v == "blend06":
                        out = prior.depth_blend(base, tissue, mask)
                    elif v.startswith("start"):
                        ctx = FillContext(painted, mask, affine=aff, voxel_size=tuple(zooms), seed=0, start=tissue)
                        out = run_fill(model, ctx, settings_for(model, t_start=int(v[5:])), device="cpu").final
                    else:
                        out = api.fill_array(painted, mask, model=model, affine=aff, device="cpu", seed=0,
                                             guide=tissue, guide_weight=0.5 if v == "aux05" else 1.0)
                    row[v] = psnr(out, x, mask)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
    write_table(rows, variants, a.out / f"tissue_prior{tag}.md")


def write_table(rows, variants, path: Path, note: str = ""):
    """The study's table (``rows`` as its jsonl holds them) at ``path``."""
    lines = ["# Tissue prior on validation strokes (colin27_brain, fsA_norm; training painting)", "",
             "Command: `python -m benchmarks study tissue-prior --data ../shared/data --out "
             "benchmarks/results/validation/tissue`. Cells: in-mask PSNR (dB); `tissue`: the tissue image alone; "
             "gate: the prior would run (30 ml or more, 6 voxels deep)." + note, "",
             "| group | case | ml | gate | quality | packaged | tissue | " + " | ".join(variants) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(variants)]
    for r in rows:
        cells = " | ".join(f"{r[v]:.2f}" if v in r else "-" for v in variants)
        tis = f"{r['psnr_tissue']:.2f}" if r["psnr_tissue"] is not None else "-"
        lines.append(f"| {r['group']} | {r['brain']}/{r['mask']} | {r['ml']:.0f} | {r['gate']} | {r['quality']:.2f} | "
                     f"{r['psnr_base']:.2f} | {tis} | {cells} |")
    for g in GROUPS:
        sel = [r for r in rows if r["group"] == g and all(v in r for v in variants)]
        if sel:
            base = np.mean([r["psnr_base"] for r in sel])
            lines.append(f"| **{g} mean (variants: change)** | | | | | {base:.2f} | | "
                         + " | ".join(f"**{np.mean([r[v] - r['psnr_base'] for r in sel]):+.2f}**" for v in variants)
                         + " |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
