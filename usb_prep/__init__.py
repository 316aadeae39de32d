"""usb_prep: lesion filling for brain MRI with a paired diffusion model (USB).

The core is pure PyTorch/MONAI.  Importing this package is cheap: the API
functions load torch on first use.
"""

from ._version import __version__

_API = (
    "fill_lesion", "embed_lesion", "generate_pair", "generate_from_mask",
    "fill_array", "heal_array", "embed_array", "generate_pair_array", "generate_from_mask_array", "FillResult",
)

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'usb_prep' has no attribute {name!r}")
