"""Fill -> ANTs registration to a template -> lesion into a tissue segmentation."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ._common import ants_binary_available, repeat


def _nipype_registration(omp_nthreads: int, quick: bool):
    """nipype ``ants.Registration``: rigid + affine + SyN (3 stages)."""
    from nipype.interfaces.ants import Registration

    its = [[100, 50, 0]] * 2 + [[20, 10, 0]] if quick else [[1000, 500, 250]] * 2 + [[100, 70, 50]]
    return Registration(
        dimension=3,
        transforms=["Rigid", "Affine", "SyN"],
        transform_parameters=[(0.1,), (0.1,), (0.2, 3.0, 0.0)],
        metric=["Mattes"] * 3,
        metric_weight=[1.0] * 3,
        radius_or_number_of_bins=[32] * 3,
        sampling_strategy=["Regular", "Regular", "None"],
        sampling_percentage=[0.25, 0.25, 1.0],
        number_of_iterations=its,
        convergence_threshold=[1e-6] * 3,
        convergence_window_size=[10] * 3,
        shrink_factors=[[4, 2, 1]] * 3,
        smoothing_sigmas=[[2, 1, 0]] * 3,
        sigma_units=["vox"] * 3,
        initial_moving_transform_com=1,
        write_composite_transform=False,
        output_warped_image=True,
        interpolation="Linear",
        num_threads=omp_nthreads,
    )


def init_fill_ants_wf(
    *,
    fill_options: dict | None = None,
    use_antspy: bool | None = None,
    transform_type: str = "SyN",
    quick: bool = False,
    segment: bool = True,
    lesion_label: int = 7,
    interpolation: str = "nearest",
    omp_nthreads: int = 1,
    name: str = "fill_ants_wf",
):
    """Fill, register to a template with the lesion masked out, reinstate.

    The lesion is excluded from the similarity metric (cost-function mask =
    1 - lesion) so that registration is driven by healthy tissue only; the
    native mask is then warped to the template with nearest neighbour (or
    linear + threshold) and written into a tissue segmentation.

    Parameters
    ----------
    fill_options : dict, optional
        Keyword arguments of :func:`~usb_prep.pipelines.fill.init_lesion_fill_wf`.
    use_antspy : bool, optional
        Register with antspyx (a SimpleInterface); default: only when the
        ``antsRegistration`` binary is not on PATH (nipype's interface
        otherwise).
    transform_type : str
        antspyx ``type_of_transform`` (antspyx path only).
    quick : bool
        Few iterations (tests, previews).
    segment : bool
        Segment the registered image (antspyx k-means Atropos, labels 1-3);
        otherwise the segmentation comes from ``inputnode.template_dseg``.
    lesion_label : int
        Label written into the segmentation (BIDS ``dseg``: 7).
    interpolation : {"nearest", "linear"}
        Mask warping.
    omp_nthreads : int
        Threads for registration.
    name : str
        Workflow name.

    Inputs
    ------
    in_file
        T1w image.
    mask_file
        Native-space lesion mask (1 = lesion).
    template
        Template (fixed) image.
    template_dseg
        Tissue segmentation in template space (used when ``segment=False``).

    Outputs
    -------
    out_file, out_mask, out_settings
        As :func:`~usb_prep.pipelines.fill.init_lesion_fill_wf`.
    warped
        Filled image in template space.
    transforms
        Native -> template transforms (antsApplyTransforms order).
    template_mask
        Lesion mask in template space.
    dseg
        Template-space tissue segmentation with the lesion written in.
    """
    from usb_prep.interfaces.registration import AntsPyRegistration, AntsPySegmentation, CostFunctionMask
    from usb_prep.interfaces.reinstate import ReinstateLesion

    from .fill import init_lesion_fill_wf

    if use_antspy is None:
        use_antspy = not ants_binary_available()
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "mask_file", "template", "template_dseg"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "out_file", "out_mask", "out_settings", "warped", "transforms", "template_mask", "dseg",
    ]), name="outputnode")
    fill_wf = init_lesion_fill_wf(**(fill_options or {}))
    costmask = pe.Node(CostFunctionMask(), name="cost_function_mask")
    reinstate = pe.Node(ReinstateLesion(label=str(lesion_label), interpolation=interpolation), name="reinstate")
    wf.connect([
        (inputnode, fill_wf, [("in_file", "inputnode.in_file"), ("mask_file", "inputnode.mask_file")]),
        (fill_wf, costmask, [("outputnode.out_mask", "in_file")]),
        (fill_wf, reinstate, [("outputnode.out_mask", "mask_file")]),
        (fill_wf, outputnode, [("outputnode.out_file", "out_file"), ("outputnode.out_mask", "out_mask"),
                               ("outputnode.out_settings", "out_settings")]),
        (reinstate, outputnode, [("out_file", "dseg"), ("out_mask", "template_mask")]),
    ])
    if use_antspy:
        reg = pe.Node(AntsPyRegistration(transform_type=transform_type, num_threads=omp_nthreads),
                      name="register", n_procs=omp_nthreads)
        if quick:
            reg.inputs.reg_iterations = [20, 10, 0]
        wf.connect([
            (costmask, reg, [("out_file", "moving_mask")]),
            (reg, reinstate, [("forward_transforms", "ants_transforms")]),
            (reg, outputnode, [("forward_transforms", "transforms")]),
        ])
    else:
        reg = pe.Node(_nipype_registration(omp_nthreads, quick), name="register", n_procs=omp_nthreads)
        masks = pe.Node(niu.Function(function=repeat, input_names=["in_file", "n"], output_names=["out"]),
                        name="mask_per_stage")
        masks.inputs.n = 3
        wf.connect([
            (costmask, masks, [("out_file", "in_file")]),
            (masks, reg, [("out", "moving_image_masks")]),
            (reg, reinstate, [("reverse_forward_transforms", "ants_transforms")]),
            (reg, outputnode, [("reverse_forward_transforms", "transforms")]),
        ])
    wf.connect([
        (inputnode, reg, [("template", "fixed_image")]),
        (fill_wf, reg, [("outputnode.out_file", "moving_image")]),
        (reg, outputnode, [("warped_image", "warped")]),
    ])
    if segment:
        seg = pe.Node(AntsPySegmentation(), name="segment")
        wf.connect([(reg, seg, [("warped_image", "in_file")]), (seg, reinstate, [("out_file", "in_file")])])
    else:
        wf.connect([(inputnode, reinstate, [("template_dseg", "in_file")])])
    return wf
