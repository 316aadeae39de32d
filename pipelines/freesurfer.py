"""Fill -> FreeSurfer ``recon-all`` -> lesion back into ``aseg``/``aparc+aseg``."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from .fill import init_fill_front


def _write_subject_stats(stats, subjects_dir, subject_id):
    """Copy the lesion stats into the FreeSurfer subject as ``stats/aseg.lesion.stats`` (beside aseg.stats)."""
    import os
    import shutil

    folder = os.path.join(subjects_dir, subject_id, "stats")
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, "aseg.lesion.stats")
    shutil.copyfile(stats, out)
    return out


def _pick_aparc_aseg(in_files):
    """Select ``aparc+aseg.mgz`` among ReconAll's ``aparc_aseg`` outputs."""
    import os

    files = [in_files] if isinstance(in_files, str) else list(in_files)
    for path in files:
        if os.path.basename(path) == "aparc+aseg.mgz":
            return path
    raise FileNotFoundError(f"no aparc+aseg.mgz among {files}")


def init_fill_freesurfer_wf(
    *,
    fill_options: dict | None = None,
    subject_id: str = "sub",
    subjects_dir: str | None = None,
    directive: str = "all",
    lesion_label="hemi",
    interpolation: str = "nearest",
    omp_nthreads: int = 1,
    name: str = "fill_freesurfer_wf",
):
    """Fill the lesion, run ``recon-all`` on the filled T1w, reinstate the lesion.

    FreeSurfer works in a conformed space (``mri/orig.mgz``, 1 mm LIA); the
    native-space mask is mapped onto it through the vox2ras of
    ``mri/rawavg.mgz`` and ``mri/orig.mgz`` (nearest neighbour by default)
    and written into ``aseg.mgz`` and ``aparc+aseg.mgz``.

    Parameters
    ----------
    fill_options : dict, optional
        Keyword arguments of :func:`~usb_prep.pipelines.fill.init_lesion_fill_wf`.
    subject_id : str
        FreeSurfer subject id.
    subjects_dir : str, optional
        ``SUBJECTS_DIR`` (must exist); default: the node's working folder.
    directive : str
        ``recon-all`` directive.
    lesion_label : int or "hemi"
        ``"hemi"``: 25/57 Left/Right-Lesion by hemisphere; 77 for white-matter
        lesions (WM-hypointensities); any integer.
    interpolation : {"nearest", "linear"}
        Mask mapping (linear is followed by a 0.5 threshold).
    omp_nthreads : int
        ``recon-all -openmp``.
    name : str
        Workflow name.

    Inputs
    ------
    in_file
        T1w image.
    mask_file
        Native-space lesion mask (1 = lesion); the mask the fill actually
        used is the one reinstated.

    Outputs
    -------
    out_file, out_mask, out_settings
        As :func:`~usb_prep.pipelines.fill.init_lesion_fill_wf`.
    subjects_dir, subject_id
        Where ``recon-all`` wrote the subject.
    aseg, aparc_aseg
        ``aseg.mgz`` / ``aparc+aseg.mgz`` with the lesion written in.
    fs_mask
        Lesion mask on the conformed (``orig.mgz``) grid.
    aseg_stats
        ``<subjects_dir>/<subject>/stats/aseg.lesion.stats``: the lesion's volume per lesion label and what each
        aseg structure lost to it, in FreeSurfer's stats format (:func:`usb_prep.reinstate.lesion_stats`).
    """
    from nipype.interfaces.freesurfer import ReconAll

    from usb_prep.interfaces.reinstate import ReinstateLesion

    wf, _, outputnode, fill_wf = init_fill_front(
        name, fill_options, outputs=["subjects_dir", "subject_id", "aseg", "aparc_aseg", "fs_mask", "aseg_stats"])
    recon = pe.Node(ReconAll(directive=directive, subject_id=subject_id, openmp=omp_nthreads),
                    name="recon_all", n_procs=omp_nthreads)
    if subjects_dir is not None:
        recon.inputs.subjects_dir = str(subjects_dir)
    write_stats = pe.Node(niu.Function(function=_write_subject_stats,
                                       input_names=["stats", "subjects_dir", "subject_id"],
                                       output_names=["out_file"]), name="write_aseg_lesion_stats")
    pick = pe.Node(niu.Function(function=_pick_aparc_aseg, input_names=["in_files"],
                                output_names=["out_file"]), name="pick_aparc_aseg")
    reinstate_aseg, reinstate_aparc = (
        pe.Node(ReinstateLesion(label=str(lesion_label), interpolation=interpolation), name=node_name)
        for node_name in ("reinstate_aseg", "reinstate_aparc_aseg"))
    for reinstate in (reinstate_aseg, reinstate_aparc):
        wf.connect([
            (fill_wf, reinstate, [("outputnode.out_mask", "mask_file")]),
            (recon, reinstate, [("orig", "orig_file"), ("rawavg", "rawavg_file")]),
        ])
    wf.connect([
        (fill_wf, recon, [("outputnode.out_file", "T1_files")]),
        (recon, pick, [("aparc_aseg", "in_files")]),
        (recon, reinstate_aseg, [("aseg", "in_file")]),
        (pick, reinstate_aparc, [("out_file", "in_file")]),
        (recon, outputnode, [("subjects_dir", "subjects_dir"), ("subject_id", "subject_id")]),
        (reinstate_aseg, outputnode, [("out_file", "aseg"), ("out_mask", "fs_mask")]),
        (reinstate_aseg, write_stats, [("out_stats", "stats")]),
        (recon, write_stats, [("subjects_dir", "subjects_dir"), ("subject_id", "subject_id")]),
        (write_stats, outputnode, [("out_file", "aseg_stats")]),
        (reinstate_aparc, outputnode, [("out_file", "aparc_aseg")]),
    ])
    return wf
