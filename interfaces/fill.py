"""Interfaces over :mod:`usb_prep.api`: fill, embed, generate."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from usb_prep.fill.settings import CONTRASTS, METHODS, FillSettings

from ._common import optional


def _model_kwargs(inputs) -> dict:
    """Keyword arguments of the :mod:`usb_prep.api` model calls shared by every interface here."""
    return dict(weights=optional(inputs.weights), seed=inputs.seed,
                device="cuda" if inputs.use_gpu else "cpu", num_threads=optional(inputs.num_threads))


def _save(img, name: str, cwd: str) -> str:
    from usb_prep.io import save_image

    path = os.path.join(cwd, name)
    save_image(img, path, overwrite=True)
    return path


def _settings(settings: dict, messages, cwd: str, name: str = "settings.json") -> str:
    from usb_prep.io import write_sidecar

    path = os.path.join(cwd, name)
    write_sidecar(path, {**dict(settings or {}), "Messages": list(messages or [])})
    return path


class _ModelInputSpec(BaseInterfaceInputSpec):
    weights = traits.Either(Directory(exists=True), File(exists=True),
                            desc="weights folder (default: $USB_PREP_WEIGHTS, then packaged weights)")
    seed = traits.Int(0, usedefault=True, desc="random seed")
    use_gpu = traits.Bool(False, usedefault=True, nohash=True, desc="run on CUDA (else CPU)")
    num_threads = traits.Int(nohash=True, desc="CPU threads for torch")


def _setting_traits() -> dict:
    """One optional trait per :class:`usb_prep.fill.FillSettings` field (unset = the weights' default)."""
    kinds = {bool: traits.Bool, float: traits.Float, int: traits.Int}
    return {name: kinds[kind](desc=text + " (default: the weights')")
            for name, kind, text, _, _ in FillSettings.options()}


class _LesionFillBaseSpec(_ModelInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1w, T2w or FLAIR image to fill")
    mask_file = File(exists=True, desc="mask, 1 = lesion/artifact to fill (omit: mask-free healing, T1w only)")
    contrast = traits.Enum("auto", *CONTRASTS, usedefault=True,
                           desc="in_file's contrast; auto: from its BIDS suffix, its JSON sidecar, else its tissue "
                                "levels (an error when none tells)")
    guide_file = File(exists=True, desc="another contrast of the subject, its lesion already filled (e.g. the filled "
                                        "T1w for a FLAIR), aligned with in_file: the patch fills match it too (usb "
                                        "only)")
    method = traits.Enum(*METHODS, usedefault=True, desc="usb (diffusion) or a patch/statistics filler without a model")
    mask_kind = traits.Enum("lesion", "artifact", usedefault=True, desc="what the mask marks")
    resample_mask = traits.Bool(False, usedefault=True, desc="resample a mask on another grid to the image")


# the fill settings (usb_prep.fill.FillSettings) as optional inputs
_LesionFillInputSpec = type("_LesionFillInputSpec", (_LesionFillBaseSpec,),
                            {"__module__": __name__, **_setting_traits()})


class _LesionFillOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="filled image (input grid, header, dtype)")
    out_mask = File(exists=True, desc="mask actually used (input grid)")
    out_settings = File(exists=True, desc="JSON of all settings and notes")
    settings = traits.Dict(desc="settings (incl. weights sha256)")
    messages = traits.List(traits.Str, desc="notes from the core")


class LesionFill(SimpleInterface):
    """Fill a lesion (or artifact) with :func:`usb_prep.api.fill_lesion`.

    Mask polarity: 1 = lesion, the voxels replaced. Voxels outside the mask
    are kept bit for bit.
    """

    input_spec = _LesionFillInputSpec
    output_spec = _LesionFillOutputSpec

    def _run_interface(self, runtime):
        from usb_prep.api import fill_lesion

        kw = _model_kwargs(self.inputs)
        res = fill_lesion(
            self.inputs.in_file,
            optional(self.inputs.mask_file),
            method=self.inputs.method,
            resample_mask=self.inputs.resample_mask,
            mask_kind=self.inputs.mask_kind,
            contrast=self.inputs.contrast,
            guide=optional(self.inputs.guide_file),
            **{k: optional(getattr(self.inputs, k)) for k in FillSettings.names()},
            **kw,
        )
        self._results["out_file"] = _save(res.image, "filled.nii.gz", runtime.cwd)
        self._results["out_mask"] = _save(res.mask, "mask.nii.gz", runtime.cwd)
        self._results["settings"] = dict(res.settings)
        self._results["messages"] = [str(m) for m in res.messages]
        self._results["out_settings"] = _settings(res.settings, res.messages, runtime.cwd)
        return runtime


class _LesionEmbedInputSpec(_ModelInputSpec):
    in_file = File(exists=True, mandatory=True, desc="healthy image")
    mask_file = File(exists=True, mandatory=True, desc="mask, 1 = where to synthesise a lesion")
    steps = traits.Int(desc="number of sampling steps (default: the model's)")
    t_start = traits.Int(desc="diffusion start step (default: the model's)")


class _ImageOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="output image")
    out_settings = File(exists=True, desc="JSON of all settings and notes")


class LesionEmbed(SimpleInterface):
    """Synthesise a lesion inside a mask of a healthy image (:func:`usb_prep.api.embed_lesion`).

    Only the mask and a thin rim around it (two voxels) change.
    """

    input_spec = _LesionEmbedInputSpec
    output_spec = _ImageOutputSpec

    def _run_interface(self, runtime):
        from usb_prep.api import embed_lesion

        res = embed_lesion(
            self.inputs.in_file,
            self.inputs.mask_file,
            steps=optional(self.inputs.steps),
            t_start=optional(self.inputs.t_start),
            **_model_kwargs(self.inputs),
        )
        self._results["out_file"] = _save(res.image, "embedded.nii.gz", runtime.cwd)
        self._results["out_settings"] = _settings(getattr(res, "settings", {}), getattr(res, "messages", []),
                                                  runtime.cwd)
        return runtime


class _GenerateInputSpec(_ModelInputSpec):
    mask_file = File(exists=True, desc="lesion mask to condition on (omit: generate image and mask)")
    steps = traits.Int(desc="number of sampling steps (default: the model's)")


class _GenerateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="generated brain image")
    out_mask = File(desc="generated (or given) lesion mask")


class GenerateLesionPair(SimpleInterface):
    """Generate a brain/lesion-mask pair, or a brain for a given mask.

    Without ``mask_file``: :func:`usb_prep.api.generate_pair`; with it:
    :func:`usb_prep.api.generate_from_mask`.
    """

    input_spec = _GenerateInputSpec
    output_spec = _GenerateOutputSpec

    def _run_interface(self, runtime):
        from usb_prep import api

        kw = {**_model_kwargs(self.inputs), "steps": optional(self.inputs.steps)}
        if isdefined(self.inputs.mask_file):
            brain = api.generate_from_mask(self.inputs.mask_file, **kw)
            self._results["out_mask"] = os.path.abspath(self.inputs.mask_file)
        else:
            brain, mask = api.generate_pair(**kw)
            self._results["out_mask"] = _save(mask, "generated_mask.nii.gz", runtime.cwd)
        self._results["out_file"] = _save(brain, "generated.nii.gz", runtime.cwd)
        return runtime
