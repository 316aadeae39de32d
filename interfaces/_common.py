"""Helpers shared by the interfaces."""

from __future__ import annotations

import json

from nipype.interfaces.base import isdefined


def optional(value, default=None):
    """``value`` when the trait is set, else ``default``."""
    return value if isdefined(value) else default


def read_settings(path) -> tuple[dict, list]:
    """A fill's settings JSON split into ``(settings, messages)`` (``Messages`` popped)."""
    with open(path) as fh:
        settings = json.load(fh)
    return settings, settings.pop("Messages", [])
