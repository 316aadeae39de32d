"""Pieces shared by the workflows: input/output nodes, the fill front end, template-space reinstatement."""

from __future__ import annotations

import shutil

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

FILL_OUTPUTS = ("out_file", "out_mask", "out_settings")


def antspy_available() -> bool:
    """Whether antspyx can be imported."""
    try:
        import ants  # noqa: F401
    except ImportError:
        return False
    return True


def ants_binary_available() -> bool:
    """Whether ``antsRegistration`` is on PATH (then nipype's ANTs interfaces are used)."""
    return shutil.which("antsRegistration") is not None


def repeat(in_file, n):
    """``[in_file] * n`` (one cost-function mask per registration stage)."""
    return [in_file] * n


def io_nodes(inputs=(), outputs=()):
    """``inputnode`` (in_file, mask_file, *inputs) and ``outputnode`` (fill outputs, *outputs)."""
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "mask_file", *inputs]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[*FILL_OUTPUTS, *outputs]), name="outputnode")
    return inputnode, outputnode


def template_nodes(wf, fill_wf, outputnode, lesion_label, interpolation):
    """Cost-function mask (lesion masked out) and the reinstate node writing ``dseg``/``template_mask``.

    Returns ``(costmask, reinstate)``; the caller connects the registration.
    """
    from usb_prep.interfaces.registration import CostFunctionMask
    from usb_prep.interfaces.reinstate import ReinstateLesion

    costmask = pe.Node(CostFunctionMask(), name="cost_function_mask")
    reinstate = pe.Node(ReinstateLesion(label=str(lesion_label), interpolation=interpolation), name="reinstate")
    wf.connect([
        (fill_wf, costmask, [("outputnode.out_mask", "in_file")]),
        (reinstate, outputnode, [("out_file", "dseg"), ("out_mask", "template_mask")]),
    ])
    return costmask, reinstate


def connect_dseg(wf, segment, warped, inputnode, reinstate):
    """Segmentation for ``reinstate``: antspyx k-means of ``warped`` (node, field), or ``template_dseg``."""
    from usb_prep.interfaces.registration import AntsPySegmentation

    if segment:
        node, field = warped
        seg = pe.Node(AntsPySegmentation(), name="segment")
        wf.connect([(node, seg, [(field, "in_file")]), (seg, reinstate, [("out_file", "in_file")])])
    else:
        wf.connect([(inputnode, reinstate, [("template_dseg", "in_file")])])
