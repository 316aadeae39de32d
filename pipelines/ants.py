"""Fill -> ANTs registration to a template -> lesion into a tissue segmentation."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ._common import ants_binary_available, connect_dseg, repeat, template_nodes
from .fill import init_fill_front


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
    from usb_prep.interfaces.registration import AntsPyRegistration

    if use_antspy is None:
        use_antspy = not ants_binary_available()
    wf, inputnode, outputnode, fill_wf = init_fill_front(
        name, fill_options, inputs=["template", "template_dseg"],
        outputs=["warped", "transforms", "template_mask", "dseg"])
    costmask, reinstate = template_nodes(wf, fill_wf, outputnode, lesion_label, interpolation)
    wf.connect([(fill_wf, reinstate, [("outputnode.out_mask", "mask_file")])])
    if use_antspy:
        reg = pe.Node(AntsPyRegistration(transform_type=transform_type, num_threads=omp_nthreads),
                      name="register", n_procs=omp_nthreads)
        if quick:
            reg.inputs.reg_iterations = [20, 10, 0]
        transforms = "forward_transforms"
        wf.connect([(costmask, reg, [("out_file", "moving_mask")])])
    else:
        reg = pe.Node(_nipype_registration(omp_nthreads, quick), name="register", n_procs=omp_nthreads)
        masks = pe.Node(niu.Function(function=repeat, input_names=["in_file", "n"], output_names=["out"]),
                        name="mask_per_stage")
        masks.inputs.n = 3
        transforms = "reverse_forward_transforms"
        wf.connect([(costmask, masks, [("out_file", "in_file")]), (masks, reg, [("out", "moving_image_masks")])])
    wf.connect([
        (inputnode, reg, [("template", "fixed_image")]),
        (fill_wf, reg, [("outputnode.out_file", "moving_image")]),
        (reg, reinstate, [(transforms, "ants_transforms")]),
        (reg, outputnode, [("warped_image", "warped"), (transforms, "transforms")]),
    ])
    connect_dseg(wf, segment, (reg, "warped_image"), inputnode, reinstate)
    return wf
