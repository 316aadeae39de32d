"""Pieces shared by the template-space workflows (ANTs, NiftyReg)."""

from __future__ import annotations

import shutil


def antspy_available() -> bool:
    """Whether antspyx can be imported."""
    try:
        import ants  # noqa: F401
    except ImportError:
        return False
    return True


def ants_binary_available() -> bool:
    """Whether ``antsRegistration`` is on PATH (then nipype's ANTs interfaces are used)."""
    return shutil.which("antsRegistration") is not None


def repeat(in_file, n):
    """``[in_file] * n`` (one cost-function mask per registration stage)."""
    return [in_file] * n
