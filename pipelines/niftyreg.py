"""Fill -> NiftyReg registration -> ``reg_resample`` the mask -> reinstate."""

from __future__ import annotations

import os

from nipype.pipeline import engine as pe

from ._common import connect_dseg, template_nodes
from .fill import init_fill_front


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


def _niftyreg_node(interface, name, bindir, exe, **kwargs):
    """Node running ``exe`` from ``bindir``.

    nipype resolves the NiftyReg path at import time ($NIFTYREGDIR); it is pinned per node here.
    """
    node = pe.Node(interface, name=name, **kwargs)
    if bindir:
        node.interface._cmd = os.path.join(bindir, exe)
    return node


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

    bindir = find_niftyreg_dir(niftyreg_dir)
    wf, inputnode, outputnode, fill_wf = init_fill_front(
        name, fill_options, inputs=["template", "template_dseg"],
        outputs=["warped", "transform", "template_mask", "dseg"])
    costmask, reinstate = template_nodes(wf, fill_wf, outputnode, lesion_label, "nearest")
    aladin = _niftyreg_node(RegAladin(omp_core_val=omp_nthreads), "reg_aladin", bindir, "reg_aladin",
                            n_procs=omp_nthreads)
    resample = _niftyreg_node(RegResample(inter_val="NN" if interpolation == "nearest" else "LIN",
                                          omp_core_val=omp_nthreads), "reg_resample_mask", bindir, "reg_resample")
    wf.connect([
        (inputnode, resample, [("template", "ref_file")]),
        (fill_wf, resample, [("outputnode.out_mask", "flo_file")]),
        (resample, reinstate, [("out_file", "mask_file")]),
    ])
    regs = [aladin]
    if nonlinear:
        f3d = _niftyreg_node(RegF3D(omp_core_val=omp_nthreads), "reg_f3d", bindir, "reg_f3d", n_procs=omp_nthreads)
        if f3d_maxit:
            f3d.inputs.maxit_val = f3d_maxit
        regs.append(f3d)
        wf.connect([(aladin, f3d, [("aff_file", "aff_file")])])
    for reg in regs:
        wf.connect([
            (inputnode, reg, [("template", "ref_file")]),
            (fill_wf, reg, [("outputnode.out_file", "flo_file")]),
            (costmask, reg, [("out_file", "fmask_file")]),
        ])
    last, transform = (f3d, "cpp_file") if nonlinear else (aladin, "aff_file")
    wf.connect([
        (last, resample, [(transform, "trans_file")]),
        (last, outputnode, [(transform, "transform"), ("res_file", "warped")]),
    ])
    connect_dseg(wf, segment, (last, "res_file"), inputnode, reinstate)
    return wf
