"""Bundle a fill run and a generate run into one weights folder with the packaged sampling defaults.

Usage::

    python -m benchmarks bundle OUT --fill RUNS/fill2/weights --generate RUNS/gen2/weights
                                    [--refiner benchmarks/cache/refiner/ref.pt] [--set '{"nlm_weight": 0.7}']
                                    [--contrast t2w=RUNS/fill_t2/weights --contrast-set '{"t2w": {...}}']
                                    [--contrast-refiner t2w=RUNS/refiner_t2/refine.pt]

``--fill`` / ``--generate`` take a run's ``weights/`` export or a bundled folder (e.g. the packaged
``usb_prep/weights/default``, to keep its generate model while trying a new fill run); ``--refiner`` a
state dict from ``usb-train --stage refiner`` (OUT/refine.pt) or ``packaged`` (default: the ``--fill`` folder's own
refiner, if any). The fill settings are those of ``--settings-from`` (default: the packaged weights, where the
benchmark's choice lives) with ``--set`` applied: no copy of their values here. ``--contrast C=FOLDER`` adds or
replaces the fill of a contrast (t2w, flair; the ``--fill`` folder's own are kept otherwise) and
``--contrast-set`` gives their settings (JSON, contrast -> settings), ``--contrast-refiner C=FILE`` a contrast its own
refiner (a state dict as ``--refiner``; its settings must say ``"refine": true`` to use it).
"""
from __future__ import annotations

import argparse
import json

from usb_prep.weights import bundle, fill_settings_of

GENERATE_STEPS = 25  # a run's export already sets the fill's window (its training patch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--fill", required=True, help="the fill run's exported weights (RUN/weights)")
    p.add_argument("--generate", required=True, help="the generation run's exported weights")
    p.add_argument("--refiner", default=None)
    p.add_argument("--settings-from", default=None, help="weights whose fill settings to carry (default: packaged)")
    p.add_argument("--set", default="{}", help="fill settings to change, as JSON")
    p.add_argument("--contrast", action="append", default=[], metavar="C=FOLDER", help="a T2w or FLAIR fill")
    p.add_argument("--contrast-set", default="{}", help="the contrasts' fill settings, as JSON")
    p.add_argument("--contrast-refiner", action="append", default=[], metavar="C=FILE", help="a contrast's refiner")
    a = p.parse_args(argv)
    contrasts = dict(c.split("=", 1) for c in a.contrast)
    settings = fill_settings_of(a.settings_from, json.loads(a.set)).to_dict()
    print(bundle(a.out, fill=a.fill, generate=a.generate, fill_settings=settings, generate_steps=GENERATE_STEPS,
                 refiner=a.refiner, contrasts=contrasts, contrast_settings=json.loads(a.contrast_set),
                 contrast_refiners=dict(c.split("=", 1) for c in a.contrast_refiner)))


if __name__ == "__main__":
    main()
