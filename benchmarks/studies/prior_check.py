"""The outline prior on the benchmark's own cases (the second half of its shipping rule, training log of
2026-12-08): on which cases it runs (masks that reach the image's empty background), how many mask voxels it
empties, and the in-mask PSNR with and without it. A check, never a choice: nothing is tuned on these cases.

    python -m benchmarks study prior-check --data DATA --brains BRAINS > benchmarks/results/validation/prior_check.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from usb_prep import api
from usb_prep.fill import prior
from usb_prep.weights import load_model

from .. import paths
from ..cases import FAMILIES, load_brain, make_cases, scores
from ..run_benchmark import BRAINS


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks study prior-check", description=__doc__.split("\n\n")[0])
    paths.add(p, "data", "brains")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mirror", action="store_true", help="the variant that also needs the mirror to be background")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = Path(a.data)
    cases = make_cases([load_brain(b, data, Path(a.brains)) for b in BRAINS], data, 1, FAMILIES, log=lambda m: None)
    model, _ = load_model(None, "fill", "cpu")
    for c in cases:
        runs = prior.needs_prior(c.image, c.mask) and prior.skull_stripped(c.image, c.mask)
        row = {"case": c.name, "ml": round(c.volume_ml, 1), "prior_runs": bool(runs)}
        if runs:
            fill = api.fill_array(c.image, c.mask, model=model, affine=c.affine, device="cpu", seed=0,
                                  outline_prior=False)
            reg = prior.register_template(c.image, c.mask, c.affine)
            offset = prior.edge_offset(reg, c.image, c.mask) if reg.usable else 0
            mirror = prior.mirrored(c.image, c.mask, c.affine) if a.mirror else None
            out = prior.outside_brain(reg, c.mask, offset=offset, mirror=mirror)
            row.update(quality=round(reg.quality, 3), offset=offset, emptied=int(out.sum()),
                       psnr_without=round(scores(fill, c)["psnr"], 3),
                       psnr_with=round(scores(np.where(out, 0, fill), c)["psnr"], 3))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
