"""Nipype workflows of usb_prep (installed as ``usb_prep.pipelines``).

* :func:`init_lesion_fill_wf` -- lesion (or artifact) filling alone.
* :func:`init_fill_freesurfer_wf` -- fill -> ``recon-all`` -> lesion back into
  ``aseg.mgz`` and ``aparc+aseg.mgz``.
* :func:`init_fill_ants_wf` -- fill -> ANTs registration to a template
  (lesion masked out of the metric) -> warp the mask -> lesion into a tissue
  segmentation.
* :func:`init_fill_niftyreg_wf` -- the same with NiftyReg
  (``reg_aladin``/``reg_f3d``/``reg_resample``).
"""

import os

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no network at run time: nipype's version check stays off

from .fill import init_lesion_fill_wf
from .freesurfer import init_fill_freesurfer_wf
from .ants import init_fill_ants_wf
from .niftyreg import init_fill_niftyreg_wf

__all__ = [
    "init_fill_ants_wf",
    "init_fill_freesurfer_wf",
    "init_fill_niftyreg_wf",
    "init_lesion_fill_wf",
]
