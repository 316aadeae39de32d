"""Fill -> NiftyReg registration -> ``reg_resample`` the mask -> reinstate."""

from __future__ import annotations

import os

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe


def find_niftyreg_dir(niftyreg_dir: str | None = None) -> str | None:
    """Folder of the NiftyReg executables.

    Looked up in order: the argument, ``$NIFTYREGDIR``, the PyPI
    ``niftyreg`` package's ``bin_path``, the folder of ``reg_aladin`` on PATH.
    """
    import shutil

    if niftyreg_dir:
        return str(niftyreg_dir)
    if os.getenv("NIFTYREGDIR"):
        return os.environ["NIFTYREGDIR"]
    try:
        import niftyreg

        if os.path.isfile(os.path.join(str(niftyreg.bin_path), "reg_aladin")):
            return str(niftyreg.bin_path)
    except Exception:  # noqa: BLE001 - optional dependency
        pass
    exe = shutil.which("reg_aladin")
    return os.path.dirname(exe) if exe else None


def _set_cmd(node, bindir, exe):
    # nipype resolves the NiftyReg path at import time ($NIFTYREGDIR); pin it per node
    if bindir:
        node.interface._cmd = os.path.join(bindir, exe)


def init_fill_niftyreg_wf(
    *,
    fill_options: dict | None = None,
    nonlinear: bool = True,
    niftyreg_dir: str | None = None,
    segment: bool = False,
    lesion_label: int = 7,
    interpolation: str = "nearest",
    f3d_maxit: int | None = None,
    omp_nthreads: int = 1,
    name: str = "fill_niftyreg_wf",
):
    """Fill, register with NiftyReg (lesion masked out), resample the mask, reinstate.

    Parameters
    ----------
    fill_options : dict, optional
        Keyword arguments of :func:`~usb_prep.pipelines.fill.init_lesion_fill_wf`.
    nonlinear : bool
        ``reg_f3d`` after ``reg_aladin`` (else affine only).
    niftyreg_dir : str, optional
        Folder of the executables (see :func:`find_niftyreg_dir`).
    segment : bool
        Segment the registered image with antspyx k-means Atropos; otherwise
        the segmentation comes from ``inputnode.template_dseg``.
    lesion_label : int
        Label written into the segmentation (BIDS ``dseg``: 7).
    interpolation : {"nearest", "linear"}
        ``reg_resample -inter 0`` or ``-inter 1`` (then a 0.5 threshold).
    f3d_maxit : int, optional
        ``reg_f3d -maxit``.
    omp_nthreads : int
        ``-omp`` threads.
    name : str
        Workflow name.

    Inputs
    ------
    in_file
        T1w image.
    mask_file
        Native-space lesion mask (1 = lesion).
    template
        Reference image.
    template_dseg
        Reference-space segmentation (used when ``segment=False``).

    Outputs
    -------
    out_file, out_mask, out_settings
        As :func:`~usb_prep.pipelines.fill.init_lesion_fill_wf`.
    warped
        Filled image in reference space.
    transform
        ``reg_aladin`` affine or ``reg_f3d`` control-point grid.
    template_mask
        Lesion mask in reference space.
    dseg
        Reference-space segmentation with the lesion written in.
    """
    from nipype.interfaces.niftyreg import RegAladin, RegF3D, RegResample

    from usb_prep.interfaces.registration import AntsPySegmentation, CostFunctionMask
    from usb_prep.interfaces.reinstate import ReinstateLesion

    from .fill import init_lesion_fill_wf

    bindir = find_niftyreg_dir(niftyreg_dir)
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "mask_file", "template", "template_dseg"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "out_file", "out_mask", "out_settings", "warped", "transform", "template_mask", "dseg",
    ]), name="outputnode")
    fill_wf = init_lesion_fill_wf(**(fill_options or {}))
    costmask = pe.Node(CostFunctionMask(), name="cost_function_mask")
    aladin = pe.Node(RegAladin(omp_core_val=omp_nthreads), name="reg_aladin", n_procs=omp_nthreads)
    _set_cmd(aladin, bindir, "reg_aladin")
    resample = pe.Node(RegResample(inter_val="NN" if interpolation == "nearest" else "LIN",
                                   omp_core_val=omp_nthreads), name="reg_resample_mask")
    _set_cmd(resample, bindir, "reg_resample")
    reinstate = pe.Node(ReinstateLesion(label=str(lesion_label), interpolation="nearest"), name="reinstate")
    wf.connect([
        (inputnode, fill_wf, [("in_file", "inputnode.in_file"), ("mask_file", "inputnode.mask_file")]),
        (fill_wf, costmask, [("outputnode.out_mask", "in_file")]),
        (inputnode, aladin, [("template", "ref_file")]),
        (fill_wf, aladin, [("outputnode.out_file", "flo_file")]),
        (costmask, aladin, [("out_file", "fmask_file")]),
        (inputnode, resample, [("template", "ref_file")]),
        (fill_wf, resample, [("outputnode.out_mask", "flo_file")]),
        (resample, reinstate, [("out_file", "mask_file")]),
        (fill_wf, outputnode, [("outputnode.out_file", "out_file"), ("outputnode.out_mask", "out_mask"),
                               ("outputnode.out_settings", "out_settings")]),
        (reinstate, outputnode, [("out_file", "dseg"), ("out_mask", "template_mask")]),
    ])
    if nonlinear:
        f3d = pe.Node(RegF3D(omp_core_val=omp_nthreads), name="reg_f3d", n_procs=omp_nthreads)
        if f3d_maxit:
            f3d.inputs.maxit_val = f3d_maxit
        _set_cmd(f3d, bindir, "reg_f3d")
        wf.connect([
            (inputnode, f3d, [("template", "ref_file")]),
            (fill_wf, f3d, [("outputnode.out_file", "flo_file")]),
            (costmask, f3d, [("out_file", "fmask_file")]),
            (aladin, f3d, [("aff_file", "aff_file")]),
            (f3d, resample, [("cpp_file", "trans_file")]),
            (f3d, outputnode, [("cpp_file", "transform"), ("res_file", "warped")]),
        ])
        warped = (f3d, "res_file")
    else:
        wf.connect([
            (aladin, resample, [("aff_file", "trans_file")]),
            (aladin, outputnode, [("aff_file", "transform"), ("res_file", "warped")]),
        ])
        warped = (aladin, "res_file")
    if segment:
        seg = pe.Node(AntsPySegmentation(), name="segment")
        wf.connect([(warped[0], seg, [(warped[1], "in_file")]), (seg, reinstate, [("out_file", "in_file")])])
    else:
        wf.connect([(inputnode, reinstate, [("template_dseg", "in_file")])])
    return wf
