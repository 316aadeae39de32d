"""Per-subject workflow of the ``usb-prep`` BIDS app: fill, downstream, derivatives, report."""

from __future__ import annotations

from pathlib import Path

from nipype.pipeline import engine as pe

DOWNSTREAMS = ("none", "freesurfer", "ants", "niftyreg")


def init_bids_subject_wf(
    *,
    entry,
    bids_dir,
    output_dir,
    fill_options: dict | None = None,
    mask_kind: str = "lesion",
    downstream: str = "none",
    template: str | None = None,
    template_dseg: str | None = None,
    template_space: str = "template",
    fs_subjects_dir: str | None = None,
    fs_license_file: str | None = None,
    fs_lesion_label="hemi",
    niftyreg_dir: str | None = None,
    skull_stripped: bool = False,
    omp_nthreads: int = 1,
    name: str | None = None,
):
    """Fill one anatomical image, optionally run a downstream tool (T1w only), write BIDS derivatives.

    Parameters
    ----------
    entry : usb_prep.bids.AnatInput
        Image (T1w, T2w or FLAIR) and mask (``mask`` None: mask-free healing, T1w only).
    bids_dir, output_dir : path
        Raw dataset and derivatives folder.
    fill_options : dict, optional
        Keyword arguments of :func:`~usb_prep.pipelines.fill.init_lesion_fill_wf`.
    mask_kind : {"lesion", "artifact"}
        What the mask marks (names and sidecars follow it).
    downstream : {"none", "freesurfer", "ants", "niftyreg"}
        Downstream workflow.
    template, template_dseg : str, optional
        Template image and segmentation (``ants``/``niftyreg``); without a
        segmentation the registered image is segmented with antspyx.
    template_space : str
        ``space-`` label of template-space derivatives.
    fs_subjects_dir, fs_license_file : str, optional
        FreeSurfer ``SUBJECTS_DIR`` (default ``<output>/sourcedata/freesurfer``)
        and licence.
    fs_lesion_label : int or "hemi"
        Label written into ``aseg``/``aparc+aseg``.
    niftyreg_dir : str, optional
        Folder of the NiftyReg executables.
    skull_stripped : bool
        ``SkullStripped`` in the sidecars.
    omp_nthreads : int
        Threads per node.
    name : str, optional
        Workflow name (default from the subject/session key).

    Returns
    -------
    nipype Workflow
        The subject's files are set at build time. ``outputnode.out_file``: the filled image; without a
        downstream tool, ``inputnode.guide_file`` takes another contrast's filled image as the fill's guide
        (the BIDS app connects a session's filled T1w to its T2w/FLAIR fills).
    """
    from nipype.interfaces import utility as niu

    from usb_prep import bids as core
    from usb_prep.interfaces.bids import DerivativesSink
    from usb_prep.interfaces.reports import LesionReport

    from .ants import init_fill_ants_wf
    from .fill import init_lesion_fill_wf
    from .freesurfer import init_fill_freesurfer_wf
    from .niftyreg import init_fill_niftyreg_wf

    if downstream not in DOWNSTREAMS:
        raise ValueError(f"downstream must be one of {DOWNSTREAMS}")
    output_dir = Path(output_dir).absolute()
    fill_options = {**(fill_options or {}), "mask_kind": mask_kind, "omp_nthreads": omp_nthreads,
                    "contrast": entry.contrast}
    if entry.suffix != "T1w":  # FreeSurfer, ANTs and NiftyReg workflows here read T1w images
        downstream = "none"
    to_template = downstream in ("ants", "niftyreg")
    fs_dir = Path(fs_subjects_dir or output_dir / "sourcedata" / "freesurfer")
    wf = pe.Workflow(name=name or entry.key.replace("-", "_"))
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_file"]), name="outputnode")
    if downstream == "none":
        core_wf = init_lesion_fill_wf(**fill_options)
        guide = pe.Node(niu.IdentityInterface(fields=["guide_file"]), name="inputnode")
        wf.connect(guide, "guide_file", core_wf, "inputnode.guide_file")
    elif downstream == "freesurfer":
        fs_dir.mkdir(parents=True, exist_ok=True)
        core_wf = init_fill_freesurfer_wf(fill_options=fill_options, subject_id=entry.key, subjects_dir=str(fs_dir),
                                          lesion_label=fs_lesion_label, omp_nthreads=omp_nthreads)
        if fs_license_file:
            core_wf.get_node("recon_all").inputs.environ = {"FS_LICENSE": str(fs_license_file)}
    elif downstream == "ants":
        core_wf = init_fill_ants_wf(fill_options=fill_options, segment=template_dseg is None,
                                    omp_nthreads=omp_nthreads)
    else:
        core_wf = init_fill_niftyreg_wf(fill_options=fill_options, segment=template_dseg is None,
                                        niftyreg_dir=niftyreg_dir, omp_nthreads=omp_nthreads)
    core_wf.inputs.inputnode.in_file = str(entry.image)
    if entry.mask is not None:
        core_wf.inputs.inputnode.mask_file = str(entry.mask)
    if to_template:
        if not template:
            raise ValueError(f"--downstream {downstream} needs --template")
        core_wf.inputs.inputnode.template = str(template)
        if template_dseg:
            core_wf.inputs.inputnode.template_dseg = str(template_dseg)

    sources = [core.bids_uri(p, bids_dir) for p in (entry.image, entry.mask) if p is not None]

    def sink(name, rel, metadata=None, base=output_dir):
        node = pe.Node(DerivativesSink(base_directory=str(base), out_name=rel), name=name,
                       run_without_submitting=True)
        if metadata is not None:
            node.inputs.metadata = metadata
        return node

    ds_filled = sink("ds_filled", core.filled_name(entry, mask_kind),
                  core.image_sidecar(sources, skull_stripped=skull_stripped,
                                     extra={"MaskKind": mask_kind, "MaskFree": entry.mask is None}))
    ds_mask = sink("ds_mask", core.mask_name(entry, mask_kind),
                   core.mask_sidecar(sources, mask_kind=mask_kind))
    report = pe.Node(LesionReport(before=str(entry.image), title=entry.key,
                                  caption=f"{mask_kind.capitalize()} filling ({downstream} downstream)"),
                     name="report")
    ds_report = sink("ds_report", f"{entry.key}.html")
    wf.connect([
        (core_wf, outputnode, [("outputnode.out_file", "out_file")]),
        (core_wf, ds_filled, [("outputnode.out_file", "in_file"), ("outputnode.out_settings", "settings_files")]),
        (core_wf, ds_mask, [("outputnode.out_mask", "in_file")]),
        (core_wf, report, [("outputnode.out_file", "after"), ("outputnode.out_mask", "mask_file"),
                           ("outputnode.out_settings", "settings_file")]),
        (report, ds_report, [("out_report", "in_file")]),
    ])
    space = {"space": template_space}
    if to_template:
        ds_tmask = sink("ds_template_mask", core.mask_name(entry, mask_kind, **space),
                        core.mask_sidecar(sources, mask_kind=mask_kind, extra={"Registration": downstream}))
        ds_dseg = sink("ds_template_dseg", core.derivative_name(entry, desc=mask_kind, suffix="dseg", **space),
                       {"Sources": sources, "LesionLabel": 7, "Registration": downstream})
        wf.connect([
            (core_wf, ds_tmask, [("outputnode.template_mask", "in_file")]),
            (core_wf, ds_dseg, [("outputnode.dseg", "in_file")]),
        ])
    elif downstream == "freesurfer":
        meta = {"Sources": sources, "LesionLabel": fs_lesion_label}
        for node_name, field, fname in (("ds_aseg", "aseg", "aseg.lesion.mgz"),
                                        ("ds_aparc_aseg", "aparc_aseg", "aparc+aseg.lesion.mgz"),
                                        ("ds_fs_mask", "fs_mask", "lesion.mgz")):
            node = sink(node_name, f"{entry.key}/mri/{fname}", meta, base=fs_dir)
            wf.connect(core_wf, f"outputnode.{field}", node, "in_file")
    return wf


__all__ = ["DOWNSTREAMS", "init_bids_subject_wf"]
