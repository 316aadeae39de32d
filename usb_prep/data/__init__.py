"""Data preparation, lesion synthesis, augmentation and splits.

``prep`` needs the optional registration extra (antspyx, nilearn) only for
registration and skull stripping; the other modules need numpy / scipy / nibabel.
"""
from . import augment, splits, synthesis  # noqa: F401
from .augment import augment_pair  # noqa: F401
from .splits import HELDOUT_BRAINS, is_heldout_mask, list_masks  # noqa: F401
from .synthesis import deform_mask, load_mask_bank, paint_lesion, sample_lesion_pair  # noqa: F401
