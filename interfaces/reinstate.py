"""``ReinstateLesion``: carry the native lesion mask to a downstream output."""

from __future__ import annotations

import logging
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ._common import optional

LOGGER = logging.getLogger("nipype.interface")


def _out_name(path: str, suffix: str, cwd: str) -> str:
    name = os.path.basename(path)
    for ext in (".nii.gz", ".nii", ".mgz"):
        if name.endswith(ext):
            return os.path.join(cwd, name[: -len(ext)] + suffix + ext)
    return os.path.join(cwd, name + suffix + ".nii.gz")


class _ReinstateLesionInputSpec(BaseInterfaceInputSpec):
    mask_file = File(exists=True, mandatory=True, desc="native-space lesion mask (1 = lesion)")
    in_file = File(exists=True, desc="label image to write the lesion into (aseg, aparc+aseg, dseg)")
    reference = File(exists=True, desc="output grid when there is no label image")
    orig_file = File(exists=True, desc="FreeSurfer mri/orig.mgz (conformed geometry)")
    rawavg_file = File(exists=True, desc="FreeSurfer mri/rawavg.mgz (native geometry as FreeSurfer read it)")
    ants_transforms = InputMultiObject(File(exists=True), desc="ANTs transforms, antsApplyTransforms order")
    ants_invert = traits.List(traits.Bool, desc="invert flags for ants_transforms")
    niftyreg_transform = File(exists=True, desc="NiftyReg affine (text) or control-point image")
    interpolation = traits.Enum("nearest", "linear", usedefault=True,
                                desc="nearest neighbour, or linear followed by threshold")
    threshold = traits.Range(0.0, 1.0, 0.5, usedefault=True, desc="threshold after linear interpolation")
    label = traits.Str("7", usedefault=True,
                       desc="label to write: an integer (7 BIDS dseg, 77 FreeSurfer WM lesion) or "
                            "'hemi' for FreeSurfer 25/57 Left/Right-Lesion")
    out_suffix = traits.Str("_lesion", usedefault=True, desc="suffix of the output label image name")


class _ReinstateLesionOutputSpec(TraitedSpec):
    out_file = File(desc="label image with the lesion written in (when in_file was given)")
    out_mask = File(exists=True, desc="lesion mask on the output grid")
    out_stats = File(desc="FreeSurfer-format stats of the lesion and what each structure lost to it (when in_file "
                          "was given): <in_file name>.lesion.stats, e.g. aseg.lesion.stats")


class ReinstateLesion(SimpleInterface):
    """Map the native-space lesion mask to a downstream output and write it in.

    Calls :func:`usb_prep.reinstate.reinstate_lesion`: FreeSurfer conformed
    geometry (``orig_file``/``rawavg_file``), ANTs transforms, a NiftyReg
    transform, or plain vox2ras, in that order of precedence.
    """

    input_spec = _ReinstateLesionInputSpec
    output_spec = _ReinstateLesionOutputSpec

    def _run_interface(self, runtime):
        from usb_prep import reinstate as core

        label = self.inputs.label.strip()
        label = label if label == "hemi" else int(label)
        res = core.reinstate_lesion(
            self.inputs.mask_file,
            optional(self.inputs.in_file),
            reference=optional(self.inputs.reference),
            orig=optional(self.inputs.orig_file),
            rawavg=optional(self.inputs.rawavg_file),
            ants_transforms=optional(self.inputs.ants_transforms),
            ants_invert=optional(self.inputs.ants_invert),
            niftyreg_transform=optional(self.inputs.niftyreg_transform),
            interpolation=self.inputs.interpolation,
            threshold=self.inputs.threshold,
            label=label,
        )
        grid = next(v for v in map(optional, (self.inputs.in_file, self.inputs.reference, self.inputs.orig_file))
                    if v is not None)
        self._results["out_mask"] = core.save(res.mask, _out_name(grid, "_lesionmask", runtime.cwd))
        if res.label_image is not None:
            self._results["out_file"] = core.save(
                res.label_image, _out_name(self.inputs.in_file, self.inputs.out_suffix, runtime.cwd))
            from usb_prep.io import strip_suffix

            stem = strip_suffix(os.path.basename(self.inputs.in_file)).name
            stats = os.path.join(runtime.cwd, stem + ".lesion.stats")
            with open(stats, "w") as f:
                f.write(core.lesion_stats(self.inputs.in_file, res.label_image,
                                          source=os.path.basename(self.inputs.in_file)))
            self._results["out_stats"] = stats
        for msg in res.messages:
            LOGGER.info("ReinstateLesion: %s", msg)
        return runtime
