"""antspyx fallbacks for ANTs registration and segmentation, and mask inversion.

Used when the ``antsRegistration`` binary is not on PATH (nipype's
``ants.Registration`` is used otherwise).
"""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ._common import optional


class _AntsPyRegistrationInputSpec(BaseInterfaceInputSpec):
    fixed_image = File(exists=True, mandatory=True, desc="fixed image (template)")
    moving_image = File(exists=True, mandatory=True, desc="moving image (filled T1w)")
    moving_mask = File(exists=True, desc="cost-function mask in moving space (1 = use; 0 on the lesion)")
    fixed_mask = File(exists=True, desc="cost-function mask in fixed space (1 = use)")
    transform_type = traits.Str("SyN", usedefault=True, desc="antspyx type_of_transform (SyN, Affine, ...)")
    reg_iterations = traits.List(traits.Int, [40, 20, 0], usedefault=True, desc="SyN iterations per level")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads (not part of the hash)")


class _AntsPyRegistrationOutputSpec(TraitedSpec):
    warped_image = File(exists=True, desc="moving image in fixed space")
    forward_transforms = traits.List(File(exists=True), desc="moving -> fixed, antsApplyTransforms order")
    reverse_transforms = traits.List(File(exists=True), desc="fixed -> moving")
    reverse_invert_flags = traits.List(traits.Bool, desc="invert flags for reverse_transforms")


class AntsPyRegistration(SimpleInterface):
    """Register with antspyx ``ants.registration`` (lesion excluded from the metric; fixed random seed, so a rerun
    gives the same transform)."""

    input_spec = _AntsPyRegistrationInputSpec
    output_spec = _AntsPyRegistrationOutputSpec

    def _run_interface(self, runtime):
        import ants

        from usb_prep.data.prep import seeded_registration

        kw = {}
        if isdefined(self.inputs.moving_mask):
            kw["moving_mask"] = ants.image_read(self.inputs.moving_mask)
        if isdefined(self.inputs.fixed_mask):
            kw["mask"] = ants.image_read(self.inputs.fixed_mask)
        if kw:
            kw["mask_all_stages"] = True
        reg = seeded_registration(  # repeatable: the same inputs give the same transform
            ants,
            fixed=ants.image_read(self.inputs.fixed_image),
            moving=ants.image_read(self.inputs.moving_image),
            type_of_transform=self.inputs.transform_type,
            outprefix=os.path.join(runtime.cwd, "reg_"),
            reg_iterations=tuple(self.inputs.reg_iterations),
            **kw,
        )
        out = os.path.join(runtime.cwd, "warped.nii.gz")
        ants.image_write(reg["warpedmovout"], out)
        self._results["warped_image"] = out
        self._results["forward_transforms"] = list(reg["fwdtransforms"])
        self._results["reverse_transforms"] = list(reg["invtransforms"])
        self._results["reverse_invert_flags"] = [t.endswith(".mat") for t in reg["invtransforms"]]
        return runtime


class _AntsPySegmentationInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image to segment")
    mask_file = File(exists=True, desc="brain mask (default: ants.get_mask)")
    n_classes = traits.Int(3, usedefault=True, desc="tissue classes (CSF, GM, WM for 3)")


class _AntsPySegmentationOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="tissue segmentation (dseg, labels 1..n_classes)")


class AntsPySegmentation(SimpleInterface):
    """K-means-initialised Atropos tissue segmentation (antspyx)."""

    input_spec = _AntsPySegmentationInputSpec
    output_spec = _AntsPySegmentationOutputSpec

    def _run_interface(self, runtime):
        import ants

        img = ants.image_read(self.inputs.in_file)
        mask = ants.image_read(self.inputs.mask_file) if isdefined(self.inputs.mask_file) else ants.get_mask(img)
        seg = ants.kmeans_segmentation(img, k=self.inputs.n_classes, kmask=mask)["segmentation"]
        out = os.path.join(runtime.cwd, "dseg.nii.gz")
        ants.image_write(seg.astype("uint8") if hasattr(seg, "astype") else seg, out)
        self._results["out_file"] = out
        return runtime


class _InvertMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="lesion mask (1 = lesion)")
    brain_mask = File(exists=True, desc="brain mask on the same grid (result: brain minus lesion)")


class _InvertMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="cost-function mask (1 = evaluate the metric)")


class CostFunctionMask(SimpleInterface):
    """Lesion mask -> registration cost-function mask (the lesion masked out)."""

    input_spec = _InvertMaskInputSpec
    output_spec = _InvertMaskOutputSpec

    def _run_interface(self, runtime):
        from usb_prep.reinstate import cost_function_mask, save

        brain = optional(self.inputs.brain_mask)
        self._results["out_file"] = save(cost_function_mask(self.inputs.in_file, brain),
                                         os.path.join(runtime.cwd, "costmask.nii.gz"))
        return runtime
