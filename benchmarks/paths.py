"""Where the benchmarks find their inputs: an option, else an environment variable, else a clear error.

``--data`` / ``$USB_PREP_DATA``: the shared data folder (``healthy/``, ``lesion_masks/``, ``patients/``);
``--brains`` / ``$USB_PREP_BRAINS``: the prepared brains (``python -m benchmarks prepare --out DIR``);
``--runs`` / ``$USB_PREP_RUNS``: a folder for caches of long studies. Nothing here knows a machine's paths.
"""

from __future__ import annotations

import os

ENV = {"data": "USB_PREP_DATA", "brains": "USB_PREP_BRAINS", "runs": "USB_PREP_RUNS"}
WHAT = {"data": "the shared data folder (healthy/, lesion_masks/, patients/)",
        "brains": "the prepared brains (python -m benchmarks prepare --out DIR)",
        "runs": "a folder for the study's cache"}


def add(parser, *kinds: str) -> None:
    """``--data``, ``--brains``, ``--runs`` options: required unless their environment variable is set."""
    for kind in kinds:
        env = os.environ.get(ENV[kind])
        parser.add_argument(f"--{kind}", default=env, required=env is None,
                            help=f"{WHAT[kind]} (default: ${ENV[kind]}{', now ' + env if env else ', unset'})")
