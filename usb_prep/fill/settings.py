"""The known-mask fill's settings: one frozen dataclass, stored as its own block in the weights' ``usb.json``.

Every front end is generated from :class:`FillSettings`' fields: the ``usb-fill`` options, the
``LesionFill`` Nipype traits, the BIDS app's options and the sidecar's keys. A new setting is one
field here (with its ``help``) plus its logic in one stage. This module imports neither torch nor
numpy, so ``--help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CONTRASTS, LEGACY_KEYS  # noqa: F401 -- CONTRASTS: the front ends' choices

METHODS = ("usb", "wmstats", "patch", "nlm")  # usb: the diffusion model; the rest: classical fillers
STAGES = ("model", "patch", "nlm", "blend", "refine")  # the fill pipeline's stages, in order


def _f(kind, help, lo=None, hi=None):
    """A setting: its type, help and range. No value: values live in the weights' ``usb.json`` (and, for weights
    without that block, :data:`MODEL_ONLY`)."""
    return field(metadata={"kind": kind, "help": help, "min": lo, "max": hi})


def _kind(f) -> type:
    return f.metadata["kind"]


NULLABLE = ("t_start",)  # settings that may be unset (None)


#: The settings of weights whose ``usb.json`` has no ``fill_settings`` block (a run of ``usb-train``, converted
#: authors' weights, models not loaded from weights): the model's own fill, nothing blended. Packaged weights
#: carry a complete block of their own (the benchmark's choice), which every front end shows and runs.
MODEL_ONLY = {
    "steps": 20,
    "t_start": None,
    "margin": 2,
    "ring": 0,
    "auto_ring": False,
    "keep_background": True,
    "outline_prior": False,
    "tissue_prior": 0.0,
    "samples": 1,
    "patch_weight": 0.0,
    "nlm_weight": 0.0,
    "nlm_search": 15,
    "nlm_passes": 1,
    "nlm_coarse": False,
    "nlm_mirror": False,
    "patch_mirror": False,
    "guide_weight": 1.0,
    "smooth": 0.0,
    "refine": False,
}


@dataclass(frozen=True)
class FillSettings:
    """Settings of the default fill (model fill -> patch and nlm fills -> blend -> refiner).

    The fields hold names, types, ranges and help, no values: weights carry their values in their ``usb.json``
    (the packaged ones the benchmark's choice, :func:`packaged`), every front end's defaults; weights without
    that block fill with :data:`MODEL_ONLY` (:func:`fallback`).
    """

    steps: int = _f(int, "sampling steps of the model fill", 1, 1000)
    t_start: int | None = _f(int, "diffusion step the model fill starts from (unset: the last training step)", 0)
    margin: int = _f(int, "voxels around the mask also hidden from the model (use 1-2 for tight masks)", 0, 16)
    ring: int = _f(int, "voxels around the mask every stage treats as unknown (masks that miss a lesion's rim); "
                        "only the mask's voxels are written", 0, 4)
    auto_ring: bool = _f(bool, "also treat as unknown the first ring of each lesion whose ring looks like the lesion "
                                "(a mask that misses the partial-volume rim); only the mask's voxels are written")
    keep_background: bool = _f(bool, "mask voxels that are background (0) in the image and mirror across the midline "
                                     "onto background stay background (a mask that spills out of a skull-stripped "
                                     "brain); off: every mask voxel is filled")
    outline_prior: bool = _f(bool, "for masks known to reach past a skull-stripped brain (inpainting regions, masks "
                                    "drawn before stripping): register nilearn's MNI152 brain to the image (antspyx) "
                                    "and keep as background the mask voxels it puts outside the brain (on a mask "
                                    "inside the brain it can empty brain at its edge: off by default)")
    tissue_prior: float = _f(float, "for thick masks (30 ml or more, 6 voxels deep): register nilearn's MNI152 "
                                    "tissue maps to the image (antspyx) and mix their tissue image (the image's own "
                                    "GM/WM/CSF levels) into the fill, its weight rising from 0 at 2 voxels deep to "
                                    "this at 8 voxels and deeper; 0: off", 0.0, 1.0)
    samples: int = _f(int, "model fills averaged (each under its own flip of the axes and noise)", 1, 64)
    patch_weight: float = _f(float, "share of the classical patch fill in the blend", 0.0, 1.0)
    nlm_weight: float = _f(float, "share of the model-guided non-local-means fill in the blend", 0.0, 1.0)
    nlm_search: int = _f(int, "edge of the nlm fill's search window (voxels, odd)", 3, 31)
    nlm_passes: int = _f(int, "nlm passes, each further one guided by the previous blend", 1, 5)
    nlm_coarse: bool = _f(bool, "guide the first nlm pass with a 2x coarser nlm fill too")
    nlm_mirror: bool = _f(bool, "nlm candidates also from the brain mirrored across the midline")
    patch_mirror: bool = _f(bool, "patch-fill candidates also from the brain mirrored across the midline")
    guide_weight: float = _f(float, "weight of the guide contrast (another contrast of the head, already filled) in "
                                  "the patch and nlm fills' patch distances; used only where a guide is given",
                             0.0, 10.0)
    smooth: float = _f(float, "Gaussian sigma (voxels) smoothing the blend", 0.0, 3.0)
    refine: bool = _f(bool, "run the weights' refiner over the blend (the fill's last stage)")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.name in NULLABLE:
                continue
            kind = _kind(f)
            if kind is bool:
                if not isinstance(v, bool):
                    raise ValueError(f"fill setting {f.name} must be true or false, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
                what = "an integer" if kind is int else "a number"
                raise ValueError(f"fill setting {f.name} must be {what}, got {v!r}")
            object.__setattr__(self, f.name, kind(v))
            lo, hi = f.metadata["min"], f.metadata["max"]
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"fill setting {f.name} must be {rng}, got {v}")
        if self.nlm_search % 2 != 1:
            raise ValueError(f"fill setting nlm_search must be odd, got {self.nlm_search}")
        if self.patch_weight + self.nlm_weight > 1 + 1e-6:
            raise ValueError(f"patch_weight + nlm_weight must be <= 1, got {self.patch_weight} + {self.nlm_weight}")

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def options(cls):
        """``(name, kind, help, min, max)`` per field: what each front end (CLI, BIDS app, Nipype) makes its option
        of."""
        for f in dataclasses.fields(cls):
            yield f.name, _kind(f), f.metadata["help"], f.metadata["min"], f.metadata["max"]

    @classmethod
    def from_dict(cls, d: dict) -> "FillSettings":
        """A complete block (every setting named): an unknown or a missing name raises ``ValueError``."""
        unknown = set(d) - set(cls.names())
        if unknown:
            raise ValueError(f"unknown fill settings: {', '.join(sorted(unknown))} (known: {', '.join(cls.names())})")
        missing = [n for n in cls.names() if n not in d]
        if missing:
            raise ValueError(f"a fill settings block must give every setting; missing: {', '.join(missing)} "
                             "(weights written by bundle() have complete blocks)")
        return cls(**d)

    @classmethod
    def model_only(cls, **changes) -> "FillSettings":
        """:data:`MODEL_ONLY`, with ``changes``."""
        return cls(**{**MODEL_ONLY, **changes})

    def replace(self, **changes) -> "FillSettings":
        """A copy with the given settings changed; ``None`` values mean "keep"; unknown names raise."""
        given = {k: v for k, v in changes.items() if v is not None}
        unknown = set(given) - set(self.names())
        if unknown:
            raise ValueError(f"unknown fill settings: {', '.join(sorted(unknown))} (known: {', '.join(self.names())})")
        return dataclasses.replace(self, **given) if given else self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # --- what runs ------------------------------------------------------------------------------------
    def stages(self) -> tuple[str, ...]:
        """The stages these settings need: the model always (it guides the nlm fill and is the blend's rest);
        patch and nlm where they have weight or the refiner (which reads both) runs."""
        use_patch = self.patch_weight > 0 or self.refine
        use_nlm = self.nlm_weight > 0 or self.refine
        chosen = ["model"] + ["patch"] * use_patch + ["nlm"] * use_nlm
        if use_patch or use_nlm or self.smooth > 0:
            chosen.append("blend")
        if self.refine:
            chosen.append("refine")
        return tuple(chosen)


def fallback(has_refiner: bool) -> FillSettings:
    """The settings of weights without a ``fill_settings`` block: :data:`MODEL_ONLY`, the refiner on where the
    weights ship one."""
    return FillSettings.model_only(refine=has_refiner)


def from_manifest(manifest: dict, has_refiner: bool, contrast: str = "t1w") -> FillSettings:
    """The fill settings of a weights manifest: its ``fill_settings`` block, else (older weights) the fill
    model config's ``default_*`` keys, the refiner on where the weights ship one. Other contrasts than T1w:
    their ``contrast_settings`` block, else the T1w fill's settings without the refiner (it was trained on the
    T1w fill's parts)."""
    if contrast != "t1w":
        block = manifest.get("contrast_settings", {}).get(contrast)
        s = FillSettings.from_dict(block) if block is not None else from_manifest(manifest, True).replace(refine=False)
        if s.refine and not has_refiner:
            raise ValueError(f"the {contrast} fill settings say refine, but the weights ship no refiner")
        return s
    block = manifest.get("fill_settings")
    if block is not None:
        s = FillSettings.from_dict(block)
    else:
        cfg = manifest.get("models", {}).get("fill", {}).get("config", {})
        legacy = {new: cfg[old] for old, new in LEGACY_KEYS.items() if old in cfg}
        if "default_steps" in cfg:
            legacy["steps"] = cfg["default_steps"]
        s = fallback(has_refiner).replace(**legacy)
    if s.refine and not has_refiner:
        raise ValueError("the weights' fill settings say refine, but the weights ship no refiner")
    return s


def packaged() -> FillSettings:
    """The packaged weights' fill settings (read from their ``usb.json`` without loading any model)."""
    man = json.loads((Path(__file__).resolve().parent.parent / "weights" / "default" / "usb.json").read_text())
    return from_manifest(man, "refiner" in man)
