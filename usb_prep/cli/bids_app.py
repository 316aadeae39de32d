"""``usb-prep``: the BIDS app (fMRIPrep style).

    usb-prep bids_dir output_dir participant [options]

Finds T1w (``--contrast``: also T2w, FLAIR) images and lesion (or artifact) masks, fills them, optionally runs
one downstream workflow (FreeSurfer, ANTs, NiftyReg) and writes BIDS
derivatives plus one HTML report per subject.  :func:`build_workflow` is
kept apart from :func:`main` so tests can build the graph on a skeleton
dataset without running it.

Exit codes: 0 all subjects succeeded; 1 at least one subject failed or was
skipped; 2 usage error; 3 a dependency is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from usb_prep.fill.settings import CONTRASTS, METHODS, FillSettings, packaged

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network (before nipype is imported)

LOGGER = logging.getLogger("usb_prep.bids_app")

EXIT_OK, EXIT_SUBJECTS_FAILED, EXIT_USAGE, EXIT_DEPENDENCY = 0, 1, 2, 3


def get_parser() -> argparse.ArgumentParser:
    """The command-line parser (cheap: no heavy imports)."""
    p = argparse.ArgumentParser(
        prog="usb-prep",
        description="Lesion filling with a diffusion model, as a BIDS app. "
                    "Masks: 1 = lesion (or artifact), the voxels that are replaced.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="BIDS dataset root")
    p.add_argument("output_dir", type=Path, help="derivatives folder")
    p.add_argument("analysis_level", choices=["participant"], help="processing level")
    g = p.add_argument_group("selection")
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="subjects to process (the 'sub-' prefix is optional)")
    g.add_argument("--session-label", nargs="+", metavar="LABEL", help="sessions ('ses-' optional)")
    g.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                   help="JSON filter in fMRIPrep's format: its 't1w', 't2w' and 'flair' queries select the images "
                        "to fill by entity (e.g. {\"t1w\": {\"session\": \"01\", \"acquisition\": null}}); other "
                        "queries are ignored")
    g.add_argument("--skip-bids-validation", action="store_true", help="do not validate the input dataset")
    g.add_argument("--contrast", nargs="+", choices=CONTRASTS, default=["t1w"],
                   help="which anatomical images to fill: their BIDS suffix (_T1w, _T2w, _FLAIR) tells each one's "
                        "contrast, and the weights' model for it fills it; downstream tools run on T1w images only")
    g.add_argument("--no-t1w-guide", dest="t1w_guide", action="store_false",
                   help="fill T2w/FLAIR images without their session's filled T1w (same mask) as a guide")
    m = p.add_argument_group("masks")
    m.add_argument("--mask-kind", choices=["lesion", "artifact"], default="lesion",
                   help="read _label-lesion_roi masks, or _label-artifact_roi (artifact inpainting)")
    m.add_argument("--masks-dir", type=Path,
                   help="derivatives folder with sub-X[_ses-Y]_..._label-<kind>_..._mask.nii.gz files")
    m.add_argument("--heal-without-mask", action="store_true",
                   help="subjects without a mask are healed mask-free instead of skipped")
    m.add_argument("--resample-mask", action="store_true",
                   help="resample masks on another grid onto the T1w (linear, threshold 0.5)")
    f = p.add_argument_group("filling")
    f.add_argument("--method", choices=METHODS, default="usb",
                   help="diffusion model (usb) or a classical filler")
    f.add_argument("--weights", help="weights folder (default: $USB_PREP_WEIGHTS, then packaged)")
    _add_setting_options(f)
    f.add_argument("--seed", type=int, default=0, help="random seed")
    f.add_argument("--use-gpu", action="store_true", help="run the model on CUDA")
    f.add_argument("--skull-stripped", action="store_true", help="inputs are skull-stripped (sidecars)")
    o = p.add_argument_group("outputs")
    o.add_argument("--filled-dataset", type=Path, metavar="DIR",
                   help="also write DIR: a raw BIDS dataset for the next app (fMRIPrep, sMRIPrep, FastSurfer): the "
                        "input's tree with each filled image in place of the original and the lesion mask as "
                        "_label-<kind>_roi")
    d = p.add_argument_group("downstream")
    d.add_argument("--downstream", choices=["none", "freesurfer", "ants", "niftyreg"], default="none",
                   help="run one downstream workflow on the filled image and reinstate the lesion")
    d.add_argument("--template", type=Path, help="template image (ants, niftyreg)")
    d.add_argument("--template-dseg", type=Path,
                   help="template-space segmentation (default: segment the registered image)")
    d.add_argument("--template-space", default="template", help="space- label of template-space outputs")
    d.add_argument("--fs-license-file", type=Path, help="FreeSurfer licence (else $FS_LICENSE)")
    d.add_argument("--fs-subjects-dir", type=Path, help="SUBJECTS_DIR (default: <output>/sourcedata/freesurfer)")
    d.add_argument("--fs-lesion-label", default="hemi",
                   help="'hemi' (25/57 Left/Right-Lesion) or an integer (77 WM-hypointensities)")
    d.add_argument("--niftyreg-dir", type=Path, help="folder of reg_aladin etc. (else $NIFTYREGDIR, "
                   "the niftyreg package, PATH)")
    r = p.add_argument_group("execution")
    r.add_argument("-w", "--work-dir", type=Path, default=Path("work"), help="work folder (reruns resume from it)")
    r.add_argument("--nprocs", "--nthreads", type=int, default=os.cpu_count() or 1, help="parallel processes")
    r.add_argument("--omp-nthreads", type=int, default=1, help="threads per process")
    r.add_argument("--mem-gb", type=float, help="memory limit for MultiProc")
    r.add_argument("--use-plugin", type=Path, help="nipype plugin YAML: plugin: SLURM, plugin_args: {...}")
    r.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first failing node")
    r.add_argument("--write-graph", action="store_true", help="write the workflow graph")
    r.add_argument("--notrack", action="store_true", help="accepted for compatibility; nothing is tracked")
    r.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return p


@dataclass
class Plan:
    """What :func:`build_workflow` decided: entries to run and those skipped."""

    entries: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (key, reason)
    expected: dict = field(default_factory=dict)  # key -> derivative paths this run writes
    unknown: list = field(default_factory=list)  # participant labels asked for that the dataset lacks
    wf_names: dict = field(default_factory=dict)  # subject workflow name -> key
    guided: dict = field(default_factory=dict)  # key of a T2w/FLAIR entry -> key of the T1w whose fill guides it
    outputs: dict = field(default_factory=dict)  # key -> every derivative path this run may write (stale on failure)
    run_id: str = ""


def _add_setting_options(group) -> None:
    """One option per :class:`usb_prep.fill.FillSettings` field, defaults shown from the packaged weights."""
    defaults = packaged()
    for name, kind, text, _, _ in FillSettings.options():  # ranges are checked by FillSettings itself
        opt = "--" + name.replace("_", "-")
        help = f"{text} (packaged weights: {getattr(defaults, name)})"
        if kind is bool:
            group.add_argument(opt, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            group.add_argument(opt, type=kind, default=None, metavar=name.upper(), help=help)


def _suffixes(opts) -> list[str]:
    """The BIDS suffixes of ``--contrast``."""
    from usb_prep.bids import SUFFIX_CONTRAST

    by_contrast = {c: sfx for sfx, c in SUFFIX_CONTRAST.items()}
    return [by_contrast[c] for c in getattr(opts, "contrast", None) or ["t1w"]]


def _fill_options(opts) -> dict:
    out = {"method": opts.method, "seed": opts.seed, "use_gpu": opts.use_gpu, "resample_mask": opts.resample_mask}
    if opts.weights:
        out["weights"] = str(opts.weights)
    given = {k: getattr(opts, k) for k in FillSettings.names() if getattr(opts, k) is not None}
    if given:
        out["fill_settings"] = given
    return out


def check_dependencies(opts) -> list[str]:
    """Problems that prevent running (missing executables, templates)."""
    problems = []
    if opts.downstream == "freesurfer" and shutil.which("recon-all") is None:
        problems.append("--downstream freesurfer: recon-all not found on PATH (source FreeSurfer's setup)")
    if opts.downstream in ("ants", "niftyreg") and (opts.template is None or not opts.template.exists()):
        problems.append(f"--downstream {opts.downstream}: --template is required and must exist")
    if opts.downstream == "ants":
        from usb_prep.pipelines._common import ants_binary_available, antspy_available

        if not (ants_binary_available() or antspy_available()):
            problems.append("--downstream ants: neither antsRegistration nor antspyx is available")
    if opts.downstream == "niftyreg":
        from usb_prep.pipelines.niftyreg import find_niftyreg_dir

        d = find_niftyreg_dir(str(opts.niftyreg_dir) if opts.niftyreg_dir else None)
        if not d or not os.path.isfile(os.path.join(d, "reg_aladin")):
            problems.append("--downstream niftyreg: reg_aladin not found (pip install niftyreg, or NIFTYREGDIR)")
    return problems


def _bids_filters(opts) -> dict | None:
    """The filter file's queries, read once (:func:`main` reads it before anything runs: a usage error)."""
    from usb_prep.bids import read_bids_filters

    if getattr(opts, "bids_filters", None) is None and opts.bids_filter_file:
        opts.bids_filters = read_bids_filters(opts.bids_filter_file)
    return getattr(opts, "bids_filters", None)


def build_workflow(opts) -> tuple:
    """Build the nipype workflow for all selected subjects.

    Parameters
    ----------
    opts : argparse.Namespace
        Parsed options (see :func:`get_parser`).

    Returns
    -------
    workflow : nipype Workflow or None
        None when no subject can run.
    plan : Plan
        Entries, skipped subjects with reasons, expected outputs.
    """
    from nipype.pipeline import engine as pe

    from usb_prep import bids as core
    from usb_prep.pipelines.bids import init_bids_subject_wf

    output_dir = opts.output_dir.absolute()
    inputs, problems = core.collect_anat(
        opts.bids_dir, participant_labels=opts.participant_label, session_labels=opts.session_label,
        mask_kind=opts.mask_kind, masks_dir=opts.masks_dir, suffixes=_suffixes(opts),
        bids_filters=_bids_filters(opts),
    )
    plan = Plan(skipped=[(p.split(":")[0], p.split(":", 1)[1].strip()) for p in problems if "not found" not in p],
                unknown=[p for p in problems if "not found" in p])
    wf = pe.Workflow(name="usb_prep_wf", base_dir=str(Path(opts.work_dir).absolute()))
    label = opts.fs_lesion_label if opts.fs_lesion_label == "hemi" else int(opts.fs_lesion_label)
    sub_wfs = {}
    for entry in inputs:
        if entry.mask is None and not opts.heal_without_mask:
            plan.skipped.append((entry.key, f"no {opts.mask_kind} mask found (use --heal-without-mask "
                                             "to heal without one)"))
            continue
        if entry.mask is None and entry.suffix != "T1w":
            plan.skipped.append((entry.key, f"no {opts.mask_kind} mask found (mask-free healing reads T1w only)"))
            continue
        sub_wf = init_bids_subject_wf(
            entry=entry, bids_dir=opts.bids_dir, output_dir=output_dir, fill_options=_fill_options(opts),
            mask_kind=opts.mask_kind, downstream=opts.downstream,
            template=str(opts.template) if opts.template else None,
            template_dseg=str(opts.template_dseg) if opts.template_dseg else None,
            template_space=opts.template_space,
            fs_subjects_dir=str(opts.fs_subjects_dir) if opts.fs_subjects_dir else None,
            fs_license_file=str(opts.fs_license_file) if opts.fs_license_file else os.getenv("FS_LICENSE"),
            fs_lesion_label=label, niftyreg_dir=str(opts.niftyreg_dir) if opts.niftyreg_dir else None,
            skull_stripped=opts.skull_stripped, omp_nthreads=opts.omp_nthreads,
        )
        wf.add_nodes([sub_wf])
        sub_wfs[entry.key] = sub_wf
        plan.entries.append(entry)
        plan.wf_names[sub_wf.name] = entry.key
        plan.expected[entry.key] = [
            output_dir / core.filled_name(entry, opts.mask_kind),
            output_dir / f"{entry.key}.html",
        ]
        plan.outputs[entry.key] = plan.expected[entry.key] + [output_dir / core.mask_name(entry, opts.mask_kind)]
        if opts.downstream in ("ants", "niftyreg"):
            space = {"space": opts.template_space}
            plan.outputs[entry.key] += [
                output_dir / core.mask_name(entry, opts.mask_kind, **space),
                output_dir / core.derivative_name(entry, desc=opts.mask_kind, suffix="dseg", **space)]
    if opts.method == "usb" and opts.t1w_guide:  # the session's filled T1w guides its T2w/FLAIR
        for key, t1_key in core.t1w_guides(plan.entries).items():
            wf.connect(sub_wfs[t1_key], "outputnode.out_file", sub_wfs[key], "inputnode.guide_file")
            plan.guided[key] = t1_key
    if opts.stop_on_first_crash:
        wf.config["execution"]["stop_on_first_crash"] = True
    wf.config["execution"]["crashfile_format"] = "txt"
    # this run's crash files in the work folder (never the current directory), one folder per run
    plan.run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}"
    wf.config["execution"]["crashdump_dir"] = str(Path(opts.work_dir).absolute() / "crash" / plan.run_id)
    return (wf if plan.entries else None), plan


def failed_subjects(crash_dir: Path, plan: Plan) -> dict:
    """Subjects whose nodes crashed in this run (from its crash files): key -> crash file."""
    out = {}
    for f in sorted(crash_dir.glob("crash-*.txt")) if crash_dir.is_dir() else []:
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("Node: "):
                parts = line[6:].strip().split(".")
                key = plan.wf_names.get(parts[1]) if len(parts) > 1 else None
                if key:
                    out.setdefault(key, f)
                break
    return out


def crash_cause(crash_file) -> str:
    """The one-line cause in a Nipype crash file: the last exception line of its traceback (e.g.
    ``InputError: image and mask are on different grids ...``), without the exception's name."""
    import re

    try:
        lines = Path(crash_file).read_text(errors="replace").splitlines()
    except OSError:
        return "see the crash file"
    pattern = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception))(?::\s*(.*))?$")
    for line in reversed(lines):
        m = pattern.match(line.strip())
        if m and m.group(2):
            return m.group(2).strip()
    return "see the crash file"


def remove_stale(paths) -> list[Path]:
    """Remove a failed subject's outputs left by an earlier run (and their JSON sidecars): they are not this
    run's results."""
    from usb_prep.io import sidecar_path

    gone = []
    for p in paths:
        for q in (p, sidecar_path(p)) if p.name.endswith((".nii.gz", ".nii")) else (p,):
            if q.exists():
                q.unlink()
                gone.append(q)
    return gone


def _plugin(opts) -> tuple[str, dict]:
    if opts.use_plugin:
        import yaml

        cfg = yaml.safe_load(Path(opts.use_plugin).read_text()) or {}
        plugin = cfg.get("plugin", "MultiProc")
        if plugin in ("SLURM", "SLURMGraph") and not os.environ.get("LOGNAME"):
            # Nipype's SLURM plugin reads $LOGNAME for squeue; containers, cron and CI often lack it
            import pwd

            os.environ["LOGNAME"] = pwd.getpwuid(os.getuid()).pw_name
        return plugin, dict(cfg.get("plugin_args") or {})
    args = {"n_procs": opts.nprocs, "raise_insufficient": False}
    if opts.mem_gb:
        args["memory_gb"] = opts.mem_gb
    return "MultiProc", args


def write_dataset_description(opts) -> None:
    """``dataset_description.json`` of the derivatives (``GeneratedBy``, ``DatasetLinks``)."""
    from usb_prep import __version__
    from usb_prep import bids as core

    core.write_json(Path(opts.output_dir) / "dataset_description.json",
                    core.dataset_description(version=__version__, bids_dir=opts.bids_dir))


def write_filled(opts, plan: Plan, ok, failed) -> dict:
    """``--filled-dataset``: the input dataset with the images of the subjects in ``ok`` filled
    (:func:`usb_prep.filled_dataset.write`), the masks the fills used beside them; earlier fills of subjects not
    run kept, those of ``failed`` subjects withdrawn; every unfilled image named in the log."""
    import dataclasses

    from usb_prep import __version__
    from usb_prep import bids as core
    from usb_prep import filled_dataset

    out = opts.output_dir.absolute()
    entries = [dataclasses.replace(e, mask=out / core.mask_name(e, opts.mask_kind))
               for e in plan.entries if e.key in ok]
    filled = {e.image: out / core.filled_name(e, opts.mask_kind) for e in entries}
    settings = {k: v for k, v in _fill_options(opts).items() if k not in ("use_gpu",)}
    res = filled_dataset.write(opts.bids_dir, opts.filled_dataset, filled, entries, version=__version__,
                               run=plan.run_id, mask_kind=opts.mask_kind, settings=settings,
                               failed=[e.image for e in plan.entries if e.key in failed],
                               forbidden=_forbidden(opts))
    LOGGER.warning("filled dataset %s: %d images filled, %d masks, %d other files written; %d earlier fills kept",
                   opts.filled_dataset, res["filled"], res["masks"], res["linked"], len(res["kept"]))
    for rel in res["withdrawn"]:
        LOGGER.warning("filled dataset: %s is the unfilled original again (its earlier fill was withdrawn: the "
                       "subject failed in this run, or the file changed since)", rel)
    bids = Path(opts.bids_dir).absolute()
    claimed = {Path(p).absolute().relative_to(bids).as_posix() for p in filled} | set(res["kept"])
    unfilled = sorted({e.image.absolute().relative_to(bids).as_posix() for e in plan.entries}
                      - claimed - set(res["withdrawn"]))
    if unfilled:
        LOGGER.warning("filled dataset: NOT filled (copied as they are): %s", ", ".join(unfilled))
    return res


def write_dataset_reports(opts, plan: Plan, causes: dict) -> None:
    """The dataset page (``usb_prep.html``: a row an image, linking its report), a page for each failed image
    (its cause and crash file) and ``logs/CITATION.md`` (the methods paragraph of what ran)."""
    from usb_prep import bids as core
    from usb_prep import reports

    out = opts.output_dir.absolute()
    by_key = {e.key: e for e in plan.entries}
    rows, first = [], None  # first: a filled image whose sidecar gives the methods paragraph
    for key in plan.expected:
        if key in causes:
            cause, crash = causes[key]
            reports.write_failed_report(out / f"{key}.html", title=key, cause=cause, crash_file=crash)
            rows.append({"key": key, "status": "failed", "report": f"{key}.html", "cause": cause})
            continue
        e = by_key[key]
        filled, mask = out / core.filled_name(e, opts.mask_kind), out / core.mask_name(e, opts.mask_kind)
        rows.append(reports.image_row(key, filled, mask, report=f"{key}.html"))
        first = first or filled
    rows += [{"key": key, "status": "skipped", "cause": reason} for key, reason in plan.skipped]
    reports.write_dataset_page(out / "usb_prep.html", rows)
    if first is not None:
        from usb_prep.io import sidecar_path

        settings = json.loads(sidecar_path(first).read_text()).get("LesionFilling", {})
        reports.write_citation(out / "logs" / "CITATION.md", settings)


def _forbidden(opts) -> dict:
    return {"output folder": Path(opts.output_dir), "work folder": Path(opts.work_dir)}


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``; elsewhere the multiprocessing children)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        import multiprocessing

        return [c.pid for c in multiprocessing.active_children()]
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _end_processes(pids, grace: float = 5.0) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)


def _stop_on_signals():
    """SIGTERM (a scheduler's time limit, ``timeout``) and SIGINT (Ctrl-C) end the whole run: the workers too
    (left running they would go on filling into the work folder beside a rerun), then exit 143 / 130. Returns the
    handlers it replaced (None off the main thread, where handlers cannot be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    main_pid = os.getpid()

    def stop(signum, frame):
        if os.getpid() != main_pid:  # a worker forked with this handler: end quietly, the main process reports
            os._exit(128 + signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _end_processes(_descendants(main_pid))
        name = signal.Signals(signum).name
        print(f"usb-prep: stopped by {name}; every worker ended. Rerun with the same -w to resume.", file=sys.stderr,
              flush=True)
        os._exit(128 + signum)

    return signal.signal(signal.SIGTERM, stop), signal.signal(signal.SIGINT, stop)


def _restore_signals(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def hold_work_dir(work_dir: Path):
    """Claim the work folder for this run (an exclusive ``flock`` on ``.usb_prep.lock``, released when the run
    and every process it started are gone); ``RuntimeError`` naming the other run when one still holds it."""
    import fcntl

    work_dir.mkdir(parents=True, exist_ok=True)
    lock = work_dir / ".usb_prep.lock"
    fh = open(lock, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        other = fh.read().strip() or "?"
        fh.close()
        raise RuntimeError(f"another usb-prep run (pid {other}) is using the work folder {work_dir}; wait for it "
                           "to end (or stop it), or give another -w") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _validate(bids_dir: Path) -> list[str]:
    problems = []
    if not bids_dir.is_dir():
        problems.append(f"{bids_dir}: not a folder")
    elif not (bids_dir / "dataset_description.json").exists():
        problems.append(f"{bids_dir}: no dataset_description.json (use --skip-bids-validation to go on)")
    return problems


def main(argv=None) -> int:
    """Entry point of ``usb-prep``; returns the exit code."""
    opts = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(opts.verbose, 2), format="%(levelname)s %(message)s")
    logging.getLogger("nipype").propagate = False  # nipype has its own handler: every line once, not twice
    if not opts.skip_bids_validation:
        problems = _validate(opts.bids_dir)
        if problems:
            for msg in problems:
                LOGGER.error(msg)
            return EXIT_USAGE
    deps = check_dependencies(opts)
    if deps:
        for msg in deps:
            LOGGER.error(msg)
        return EXIT_DEPENDENCY
    from usb_prep.filled_dataset import check_dir
    from usb_prep.weights import WeightsError, fill_settings_of

    try:  # before any subject is looked at: a bad setting is a usage error even when nothing would run
        fill = _fill_options(opts)
        if opts.method != "usb" and fill.get("fill_settings"):
            raise ValueError(f"fill settings ({', '.join(sorted(fill['fill_settings']))}) apply to --method usb "
                             f"only, not {opts.method}")
        for contrast in opts.contrast if opts.method == "usb" else []:  # weights lacking a contrast fail here
            fill_settings_of(fill.get("weights"), fill.get("fill_settings", {}), contrast)
        if opts.filled_dataset:
            check_dir(opts.filled_dataset, opts.bids_dir, forbidden=_forbidden(opts))
        _bids_filters(opts)
    except (ValueError, WeightsError) as e:
        LOGGER.error("%s", e)
        return EXIT_USAGE
    wf, plan = build_workflow(opts)
    if plan.unknown:
        for msg in plan.unknown:
            LOGGER.error("%s (check --participant-label)", msg)
        return EXIT_USAGE
    for key, reason in plan.skipped:
        LOGGER.warning("%s skipped: %s", key, reason)
    for key, t1_key in plan.guided.items():
        LOGGER.info("%s: filled with %s's filled T1w as a guide", key, t1_key)
    if wf is None:
        LOGGER.error("nothing to run")
        return EXIT_SUBJECTS_FAILED
    try:
        lock = hold_work_dir(Path(opts.work_dir).absolute())
    except RuntimeError as e:
        LOGGER.error("%s", e)
        return EXIT_USAGE
    previous = _stop_on_signals()
    try:
        return _run(opts, wf, plan)
    finally:  # the lock and the signal handlers end with the run (main may run in-process, e.g. in tests)
        lock.close()
        _restore_signals(previous)


def _run(opts, wf, plan: Plan) -> int:
    """Run the workflow, report each subject, write the filled dataset; the exit code."""
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(opts)
    if opts.write_graph:
        wf.write_graph(graph2use="colored", format="svg", simple_form=True)
    plugin, plugin_args = _plugin(opts)
    crash_dir = Path(wf.config["execution"]["crashdump_dir"])
    started = time.time()
    try:
        wf.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as err:  # nipype: "Workflow did not execute cleanly"; the nodes' errors are in crash files
        LOGGER.error("some nodes failed (%s); each failed subject and its cause below", type(err).__name__)
    # success is this run's result: a crashed subject failed even where an earlier run's outputs exist
    crashed = failed_subjects(crash_dir, plan)
    failed = [key for key, paths in plan.expected.items() if key in crashed or not all(p.exists() for p in paths)]
    causes = {}
    for key in failed:
        gone = remove_stale(plan.outputs[key])
        where = crashed.get(key)
        causes[key] = (crash_cause(where) if where else "outputs missing", where or crash_dir)
        LOGGER.error("%s failed: %s (crash file: %s)%s", key, causes[key][0], causes[key][1],
                     f"; removed {len(gone)} stale output(s) of an earlier run" if gone else "")
    LOGGER.info("finished in %.0f s", time.time() - started)
    ok = [k for k in plan.expected if k not in failed]
    write_dataset_reports(opts, plan, causes)
    if opts.filled_dataset:
        write_filled(opts, plan, ok, failed)
    print(f"usb-prep: {len(ok)} succeeded, {len(failed)} failed, {len(plan.skipped)} skipped")
    return EXIT_OK if not failed and not plan.skipped else EXIT_SUBJECTS_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
