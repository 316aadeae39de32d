"""Bundle a fill run and a generate run into one weights folder with the packaged sampling defaults.

Usage::

    python benchmarks/bundle.py OUT [--fill /work/runs/fill2/weights] [--generate /work/runs/gen2/weights]
                                    [--refiner benchmarks/cache/refiner/ref.pt]

``--fill`` / ``--generate`` take a run's ``weights/`` export or a bundled folder (e.g. the packaged
``usb_prep/weights/default``, to keep its generate model while trying a new fill run); ``--refiner`` a
state dict from ``usb-train --stage refiner`` (OUT/refine.pt) (default: the ``--fill`` folder's own refiner, if any).
"""
from __future__ import annotations

import argparse

from usb_prep.weights import bundle

# the packaged defaults (chosen on the validation masks; see the model card)
FILL_CONFIG = {}  # a run's export already sets its window (its training patch: 32 on the CPU, 48 in train_device.py)
FILL_SETTINGS = dict(steps=1, margin=0, samples=1, auto_ring=True, patch_weight=0.2, nlm_weight=0.8, nlm_search=11,
                     nlm_mirror=True, patch_mirror=True, refine=True)
GENERATE_STEPS = 25


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--fill", default="/work/runs/fill2/weights")
    p.add_argument("--generate", default="/work/runs/gen2/weights")
    p.add_argument("--refiner", default=None)
    a = p.parse_args(argv)
    print(bundle(a.out, fill=a.fill, generate=a.generate, fill_config=FILL_CONFIG,
                 fill_settings=FILL_SETTINGS, generate_steps=GENERATE_STEPS, refiner=a.refiner))


if __name__ == "__main__":
    main()
