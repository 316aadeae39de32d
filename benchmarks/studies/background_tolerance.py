"""The ``keep_background`` tolerance (:mod:`usb_prep.fill.background`), chosen on the validation masks.

Every validation mask (``validation.py``'s: otsu_head, never a benchmark case) as it is (inside the brain: the rule
can only cost) and grown by 3 voxels (past the brain where it reaches the surface: truth 0 there), the image painted
(``train``) or voided (zero in the whole mask, as the BraTS inpainting task gives it). One fill per mask with
``keep_background`` off (kept in ``--fills``), then the rule at each tolerance, post hoc; one JSON line per mask.

    python -m benchmarks study background-tolerance > results/validation/background_tolerance.jsonl
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..cases import scores
from ..validation import spilled, validation_set
from .. import paths

T = (0, 1, 2, 3, 4)


def main(argv=None):
    from usb_prep import api
    from usb_prep.fill.background import outside_head

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paths.add(p, "data", "brains")
    p.add_argument("--fills", default="/tmp/usb_background_fills", help="folder for the fills (reused)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.fills)
    out.mkdir(parents=True, exist_ok=True)
    data = validation_set(args.data, args.brains)
    for grow in (0, 3):
        for c in data:
            c = spilled(c, grow, voided=False)
            if c is None:
                continue
            f_path = out / f"{c.mask_name}_g{grow}.npy"
            if f_path.exists():
                f = c.image.copy()
                f[c.mask] = np.load(f_path)
            else:
                f = api.fill_array(c.image, c.mask, device="cpu", affine=c.affine, seed=0, keep_background=False)
                np.save(f_path, f[c.mask])
            row = {"case": c.mask_name, "cat": c.category, "grow": grow,
                   "bg_vox": int((c.mask & ~c.brain_mask).sum()), "off": round(scores(f, c)["psnr"], 3)}
            for kind, src in (("painted", c.image), ("voided", np.where(c.mask, 0, c.image))):
                for t in T:
                    o = outside_head(src, c.mask, c.affine, t)
                    row[f"{kind}_t{t}"] = round(scores(np.where(o, 0, f), c)["psnr"], 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
