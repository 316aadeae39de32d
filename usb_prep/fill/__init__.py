"""Known-mask lesion filling as named stages.

- :mod:`.settings`: :class:`FillSettings`, the one settings object (no torch import).
- :mod:`.context`: :class:`FillContext`, what the stages of one call share (mirror built once).
- :mod:`.model_fill`: stage "model", the diffusion model's fill crop by crop.
- :mod:`.patches`: stages "patch" and "nlm", tissue copied from the image itself.
- :mod:`.blend`: stage "blend", their weighted average.
- :mod:`.refiner`: stage "refine", a small CNN correcting the blend.
- :mod:`.pipeline`: :func:`run_fill`, the stages in order, returning every part.
"""

from .settings import METHODS, STAGES, FillSettings  # noqa: F401  (light: no torch)
