"""Nipype interfaces of usb_prep (installed as ``usb_prep.interfaces``).

Thin ``SimpleInterface`` shells: each ``_run_interface`` translates inputs
and calls the core (:mod:`usb_prep.api`, :mod:`usb_prep.reinstate`,
:mod:`usb_prep.reports`, :mod:`usb_prep.bids`).
"""

import os

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no network at run time: nipype's version check stays off

from .fill import GenerateLesionPair, LesionEmbed, LesionFill
from .reinstate import ReinstateLesion
from .registration import AntsPyRegistration, AntsPySegmentation, CostFunctionMask
from .reports import LesionReport
from .bids import DerivativesSink

__all__ = [
    "AntsPyRegistration",
    "AntsPySegmentation",
    "CostFunctionMask",
    "DerivativesSink",
    "GenerateLesionPair",
    "LesionEmbed",
    "LesionFill",
    "LesionReport",
    "ReinstateLesion",
]
