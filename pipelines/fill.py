"""Lesion filling alone."""

from __future__ import annotations

from nipype.pipeline import engine as pe

from ._common import FILL_OUTPUTS, io_nodes


def init_lesion_fill_wf(
    *,
    method: str = "usb",
    weights: str | None = None,
    seed: int = 0,
    use_gpu: bool = False,
    omp_nthreads: int = 1,
    mask_kind: str = "lesion",
    resample_mask: bool = False,
    fill_settings: dict | None = None,
    contrast: str = "auto",
    name: str = "lesion_fill_wf",
):
    """Fill a lesion (or an artifact) in a T1w, T2w or FLAIR image.

    Parameters
    ----------
    method : {"usb", "wmstats", "patch", "nlm"}
        Diffusion model (``usb``) or a filler without a model.
    weights : str, optional
        Model weights (default: environment variable, then packaged weights).
    seed : int
        Random seed.
    use_gpu : bool
        Run the model on CUDA.
    omp_nthreads : int
        CPU threads for the fill node.
    mask_kind : {"lesion", "artifact"}
        What the mask marks (recorded in the settings).
    resample_mask : bool
        Resample a mask on another grid onto the image (else such a mask is an error).
    fill_settings : dict, optional
        Known-mask fill settings (fields of :class:`usb_prep.fill.FillSettings`, e.g.
        ``{"steps": 2, "refine": False}``); the rest keep the weights' defaults.
    contrast : {"auto", "t1w", "t2w", "flair"}
        The image's contrast (``auto``: from its BIDS suffix or sidecar).
    name : str
        Workflow name.

    Inputs
    ------
    in_file
        T1w, T2w or FLAIR image.
    mask_file
        Mask, 1 = lesion/artifact to fill.  Leave undefined for mask-free
        healing.
    guide_file
        Optional: another contrast of the subject, already filled (e.g. the
        filled T1w for a FLAIR), aligned with in_file; the patch fills match
        its anatomy too.

    Outputs
    -------
    out_file
        Filled image (input grid, header and dtype).
    out_mask
        Mask actually used.
    out_settings
        JSON with all settings (weights sha256 included) and notes.
    """
    from usb_prep.interfaces.fill import LesionFill
    from usb_prep.weights import check_fill_settings

    if method == "usb":  # the settings that may run: bad values and combinations fail here, not in the node
        check_fill_settings(weights, fill_settings, contrast)

    wf = pe.Workflow(name=name)
    inputnode, outputnode = io_nodes(inputs=("guide_file",))
    fill = pe.Node(
        LesionFill(method=method, seed=seed, use_gpu=use_gpu, num_threads=omp_nthreads, mask_kind=mask_kind,
                   resample_mask=resample_mask, contrast=contrast),
        name="lesion_fill",
        n_procs=omp_nthreads,
    )
    for key, value in (("weights", weights), *(fill_settings or {}).items()):
        if value is not None:
            setattr(fill.inputs, key, value)
    wf.connect([
        (inputnode, fill, [("in_file", "in_file"), ("mask_file", "mask_file"), ("guide_file", "guide_file")]),
        (fill, outputnode, [(field, field) for field in FILL_OUTPUTS]),
    ])
    return wf


def init_fill_front(name, fill_options=None, inputs=(), outputs=()):
    """Workflow whose inputnode feeds the fill workflow, whose outputs reach outputnode.

    Returns ``(wf, inputnode, outputnode, fill_wf)``; ``fill_options`` are the
    keyword arguments of :func:`~usb_prep.pipelines.fill.init_lesion_fill_wf`.
    """
    wf = pe.Workflow(name=name)
    inputnode, outputnode = io_nodes(inputs, outputs)
    fill_wf = init_lesion_fill_wf(**(fill_options or {}))
    wf.connect([
        (inputnode, fill_wf, [("in_file", "inputnode.in_file"), ("mask_file", "inputnode.mask_file")]),
        (fill_wf, outputnode, [(f"outputnode.{field}", field) for field in FILL_OUTPUTS]),
    ])
    return wf, inputnode, outputnode, fill_wf
