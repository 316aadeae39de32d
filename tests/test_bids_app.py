"""The usb-prep BIDS app on a two-subject synthetic dataset."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import nibabel as nb
import numpy as np
import pytest

from conftest import phantom, write_nifti as _write
from usb_prep.cli.bids_app import EXIT_USAGE, build_workflow, get_parser, main


def _args(bids_ds, tmp_path, *extra):
    return [str(bids_ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
            "--method", "wmstats", "--nprocs", "1", *extra]


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.title = [], None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        self._in_title = tag == "title"

    def handle_data(self, data):
        if self._in_title:
            self.title = data


def test_build_workflow_skeleton(bids_ds, tmp_path):
    opts = get_parser().parse_args(_args(bids_ds, tmp_path, "--participant-label", "sub-01", "02", "03"))
    wf, plan = build_workflow(opts)
    assert [e.key for e in plan.entries] == ["sub-01", "sub-02_ses-1"]
    assert plan.skipped and plan.skipped[0][0] == "sub-03" and "mask" in plan.skipped[0][1]
    names = wf.list_node_names()
    assert any(n.startswith("sub_01.") and n.endswith("lesion_fill") for n in names)
    assert any(n.startswith("sub_02_ses_1.") and n.endswith("ds_report") for n in names)


def test_bids_app_runs_and_resumes(bids_ds, tmp_path, linear_plugin):
    code = main(_args(bids_ds, tmp_path, "--participant-label", "01", "02", "--use-plugin", str(linear_plugin)))
    assert code == 0
    out = tmp_path / "out"
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "usb_prep"
    filled = out / "sub-01/anat/sub-01_desc-lesionfilled_T1w.nii.gz"
    assert filled.exists()
    assert (out / "sub-02/ses-1/anat/sub-02_ses-1_desc-lesionfilled_T1w.nii.gz").exists()
    mask = out / "sub-01/anat/sub-01_label-lesion_mask.nii.gz"
    assert mask.exists()
    side = json.loads((out / "sub-01/anat/sub-01_desc-lesionfilled_T1w.json").read_text())
    assert side["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz",
                               "bids:raw:sub-01/anat/sub-01_label-lesion_roi.nii.gz"]
    assert side["SkullStripped"] is False and side["LesionFilling"]["method"] == "wmstats"
    assert side["LesionFilling"]["contrast"] == "t1w" and side["LesionFilling"]["contrast_source"] == "name"
    assert json.loads((out / "sub-01/anat/sub-01_label-lesion_mask.json").read_text())["Type"] == "Lesion"
    # filled: outside the mask identical, inside changed
    src = np.asanyarray(nb.load(str(bids_ds / "sub-01/anat/sub-01_T1w.nii.gz")).dataobj)
    res = np.asanyarray(nb.load(str(filled)).dataobj)
    m = np.asanyarray(nb.load(str(mask)).dataobj) > 0
    np.testing.assert_array_equal(res[~m], src[~m])
    assert not np.array_equal(res[m], src[m])
    for key in ("sub-01", "sub-02_ses-1"):
        checker = _Checker()
        checker.feed((out / f"{key}.html").read_text())
        assert checker.title == key and len(checker.imgs) == 3  # one zoomed lesion, the whole-brain before/after
        assert all(s.startswith("data:image/png;base64,") for s in checker.imgs)
    # rerun resumes from the work folder: cached nodes are not rerun, outputs untouched
    mtime = filled.stat().st_mtime_ns
    assert main(_args(bids_ds, tmp_path, "--participant-label", "01", "02",
                      "--use-plugin", str(linear_plugin))) == 0
    assert filled.stat().st_mtime_ns == mtime


def test_subject_without_mask_is_skipped_exit_code(bids_ds, tmp_path, linear_plugin, capsys):
    code = main(_args(bids_ds, tmp_path, "--participant-label", "01", "03", "--use-plugin", str(linear_plugin)))
    assert code == 1
    assert "1 succeeded, 0 failed, 1 skipped" in capsys.readouterr().out
    assert not (tmp_path / "out/sub-03").exists()


def test_heal_without_mask(bids_ds, tmp_path, linear_plugin, tiny_weights):
    code = main([str(bids_ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--participant-label", "03", "--heal-without-mask", "--weights", tiny_weights, "--steps", "2",
                 "--use-plugin", str(linear_plugin)])
    assert code == 0
    side = json.loads((tmp_path / "out/sub-03/anat/sub-03_desc-lesionfilled_T1w.json").read_text())
    assert side["MaskFree"] is True and side["Sources"] == ["bids:raw:sub-03/anat/sub-03_T1w.nii.gz"]


def test_artifact_masks_from_derivatives(bids_ds, tmp_path, linear_plugin):
    img, lesion, _, aff = phantom()
    masks = tmp_path / "masks"
    _write(masks / "sub-03/anat/sub-03_desc-artifact_mask.nii.gz", lesion, aff)
    code = main(_args(bids_ds, tmp_path, "--participant-label", "03", "--mask-kind", "artifact",
                      "--masks-dir", str(masks), "--use-plugin", str(linear_plugin)))
    assert code == 0
    out = tmp_path / "out/sub-03/anat"
    assert (out / "sub-03_desc-artifactfilled_T1w.nii.gz").exists()
    assert json.loads((out / "sub-03_label-artifact_mask.json").read_text())["Type"] == "ROI"


def test_missing_dependency_exit_code(bids_ds, tmp_path):
    assert main(_args(bids_ds, tmp_path, "--downstream", "ants")) == 3  # no --template


@pytest.mark.slow
def test_bids_app_freesurfer_stub(bids_ds, tmp_path, linear_plugin, stub_recon_all):
    code = main(_args(bids_ds, tmp_path, "--participant-label", "01", "--downstream", "freesurfer",
                      "--use-plugin", str(linear_plugin)))
    assert code == 0
    mri = tmp_path / "out/sourcedata/freesurfer/sub-01/mri"
    aseg = np.asanyarray(nb.load(str(mri / "aseg.lesion.mgz")).dataobj)
    lesion = np.asanyarray(nb.load(str(mri / "lesion.mgz")).dataobj) > 0
    assert lesion.any() and (aseg[lesion] == 25).all()
    assert (mri / "aparc+aseg.lesion.mgz").exists()
    stats = (mri.parent / "stats" / "aseg.lesion.stats").read_text()  # beside recon-all's aseg.stats
    assert "Left-Lesion" in stats or "Right-Lesion" in stats


def test_rerun_after_failure_reports_it_and_removes_stale_outputs(bids_ds, tmp_path, linear_plugin, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _args(bids_ds, tmp_path, "--participant-label", "01", "--use-plugin", str(linear_plugin))
    assert main(args) == 0
    filled = tmp_path / "out/sub-01/anat/sub-01_desc-lesionfilled_T1w.nii.gz"
    assert filled.exists()
    # the mask is swapped for one on another grid: this run's fill crashes
    img, lesion, _, aff = phantom(shape=(20, 20, 20))
    _write(bids_ds / "sub-01/anat/sub-01_label-lesion_roi.nii.gz", lesion, aff)
    capsys.readouterr()
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "0 succeeded, 1 failed" in captured.out
    assert not filled.exists() and not filled.with_name("sub-01_desc-lesionfilled_T1w.json").exists()
    assert "--resample-mask" in captured.err + captured.out or list((tmp_path / "work/crash").rglob("crash-*.txt"))
    assert not list(tmp_path.glob("crash-*")), "crash files belong in the work folder"
    assert list((tmp_path / "work/crash").rglob("crash-*.txt"))
    # usb-prep has the option the message names: with it the subject succeeds again
    assert main(args + ["--resample-mask"]) == 0 and filled.exists()


def test_nothing_to_run_creates_no_output_and_unknown_label_is_usage(bids_ds, tmp_path, linear_plugin):
    assert main(_args(bids_ds, tmp_path, "--participant-label", "03")) == 1  # skipped: no mask
    assert not (tmp_path / "out").exists()
    assert main(_args(bids_ds, tmp_path, "--participant-label", "99")) == 2
    assert main(_args(bids_ds, tmp_path, "--participant-label", "01", "--steps", "0")) == 2
    # valid alone, but not with the packaged weights' patch_weight: refused before any subject runs
    assert main(_args(bids_ds, tmp_path, "--participant-label", "01", "--method", "usb", "--nlm-weight", "0.9")) == 2
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out").exists()


def test_two_subjects_with_multiproc(bids_ds, tmp_path, capfd):
    args = _args(bids_ds, tmp_path, "--participant-label", "01", "02")
    args[args.index("--nprocs") + 1] = "2"  # Nipype's MultiProc plugin, two processes
    code = main(args)
    assert code == 0
    out = tmp_path / "out"
    assert (out / "sub-01/anat/sub-01_desc-lesionfilled_T1w.nii.gz").exists()
    assert (out / "sub-02/ses-1/anat/sub-02_ses-1_desc-lesionfilled_T1w.nii.gz").exists()
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if "nipype.workflow" in ln and "Workflow" in ln]
    assert len(lines) == len(set(lines)), "nipype log lines printed twice"


def _bids_validator():
    """A BIDS validator command line, or None: the npm ``bids-validator`` or the ``bids-validator-deno`` package."""
    import shutil

    for name in ("bids-validator", "bids-validator-deno"):
        if shutil.which(name):
            return [shutil.which(name)]
    return None


def test_filled_dataset_is_a_raw_bids_dataset_for_the_next_app(bids_ds, tmp_path, linear_plugin):
    """--filled-dataset: the input's tree, the filled T1w in place of the original (sidecar says so), the mask used
    as _label-lesion_roi, other files hard-linked, a raw dataset_description; the input untouched."""
    import os
    import subprocess

    (bids_ds / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n")
    (bids_ds / "sub-01/anat/sub-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3}))
    (bids_ds / "derivatives/other").mkdir(parents=True)
    (bids_ds / "derivatives/other/note.txt").write_text("not carried over")
    raw_before = (bids_ds / "sub-01/anat/sub-01_T1w.nii.gz").read_bytes()
    ds = tmp_path / "filled"
    code = main(_args(bids_ds, tmp_path, "--participant-label", "01", "02", "--use-plugin", str(linear_plugin),
                      "--filled-dataset", str(ds)))
    assert code == 0
    out = tmp_path / "out"
    # the filled image sits under the raw name, bit-identical to the derivative; the input is unchanged
    img = ds / "sub-01/anat/sub-01_T1w.nii.gz"
    assert img.read_bytes() == (out / "sub-01/anat/sub-01_desc-lesionfilled_T1w.nii.gz").read_bytes()
    assert (bids_ds / "sub-01/anat/sub-01_T1w.nii.gz").read_bytes() == raw_before != img.read_bytes()
    assert (ds / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz").read_bytes() == (
        out / "sub-02/ses-1/anat/sub-02_ses-1_desc-lesionfilled_T1w.nii.gz").read_bytes()
    side = json.loads((ds / "sub-01/anat/sub-01_T1w.json").read_text())
    assert side["RepetitionTime"] == 2.3  # the raw sidecar's fields kept
    assert side["LesionFilling"]["Source"] == "bids:unfilled:sub-01/anat/sub-01_T1w.nii.gz"
    assert side["LesionFilling"]["method"] == "wmstats"
    assert json.loads((bids_ds / "sub-01/anat/sub-01_T1w.json").read_text()) == {"RepetitionTime": 2.3}
    # the mask the fill used, under fMRIPrep's name
    roi = ds / "sub-01/anat/sub-01_label-lesion_roi.nii.gz"
    assert roi.read_bytes() == (out / "sub-01/anat/sub-01_label-lesion_mask.nii.gz").read_bytes()
    assert os.stat(roi).st_ino != os.stat(out / "sub-01/anat/sub-01_label-lesion_mask.nii.gz").st_ino  # a copy
    # sub-03 was not asked for: linked as it is (same inode), as are the other files; derivatives/ left out
    for rel in ("sub-03/anat/sub-03_T1w.nii.gz", "participants.tsv"):
        assert os.stat(ds / rel).st_ino == os.stat(bids_ds / rel).st_ino
    assert not (ds / "derivatives").exists()
    desc = json.loads((ds / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["GeneratedBy"][-1]["Name"] == "usb_prep"
    assert desc["SourceDatasets"] == [{"URL": bids_ds.absolute().as_uri()}]
    assert desc["DatasetLinks"] == {"unfilled": bids_ds.absolute().as_uri()}  # every bids: URI's dataset named
    assert "*_label-lesion_roi.nii*" in (ds / ".bidsignore").read_text().splitlines()
    validator = _bids_validator()
    if validator is not None:  # CI installs bids-validator-deno (pyproject: test extra)
        r = subprocess.run([*validator, str(ds)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    # a rerun may rewrite the folder usb_prep wrote; never a foreign or the input's own folder
    assert main(_args(bids_ds, tmp_path, "--participant-label", "01", "--use-plugin", str(linear_plugin),
                      "--filled-dataset", str(ds))) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    for bad in (foreign, bids_ds / "sub-01", bids_ds):
        assert main(_args(bids_ds, tmp_path, "--participant-label", "01", "--filled-dataset", str(bad))) == 2
    assert (foreign / "keep.txt").read_text() == "mine"


@pytest.mark.skipif(_bids_validator() is None, reason="no BIDS validator installed (pip install bids-validator-deno)")
def test_bids_validator_rejects_a_broken_dataset(tmp_path):
    """The validator the test above relies on does fail on an invalid dataset (so its pass means something)."""
    import subprocess

    bad = tmp_path / "bad"
    (bad / "sub-01/anat").mkdir(parents=True)
    (bad / "sub-01/anat/sub-01_T1w.nii.gz").write_bytes(b"not a nifti")
    r = subprocess.run([*_bids_validator(), str(bad)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0


def test_bids_filter_file_selects_images_and_refuses_what_it_cannot_read(bids_ds, tmp_path):
    """fMRIPrep's filter format: the t1w query's entities select the T1w images; null means absent; other
    queries are ignored; an unknown entity or a non-anat datatype is a usage error, not ignored."""
    from usb_prep.bids import collect_anat, passes_filter, read_bids_filters

    extra = bids_ds / "sub-01" / "anat" / "sub-01_acq-fast_run-2_T1w.nii.gz"
    extra.write_bytes((bids_ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz").read_bytes())
    flt = tmp_path / "filter.json"
    flt.write_text(json.dumps({"t1w": {"datatype": "anat", "suffix": "T1w", "acquisition": None},
                               "bold": {"task": "rest"}}))
    rules = read_bids_filters(flt)
    assert rules == {"T1w": {"acq": None}}
    found, _ = collect_anat(bids_ds, participant_labels=["01"], bids_filters=rules)
    assert [p.image.name for p in found] == ["sub-01_T1w.nii.gz"]
    found, _ = collect_anat(bids_ds, participant_labels=["01"])
    assert len(found) == 2
    found, _ = collect_anat(bids_ds, bids_filters=read_bids_filters(_json(tmp_path, {"t1w": {"session": "1"}})))
    assert [(p.subject, p.session) for p in found] == [("02", "1")]
    assert passes_filter({"run": "02", "acq": "fast"}, {"run": ["2"], "acq": ["fast", "slow"]})
    assert not passes_filter({"run": "3"}, {"run": ["2"]})
    opts = get_parser().parse_args(_args(bids_ds, tmp_path, "--participant-label", "01",
                                         "--bids-filter-file", str(flt)))
    _, plan = build_workflow(opts)
    assert [e.key for e in plan.entries] == ["sub-01"]
    for bad in ({"t1w": {"flavour": "x"}}, {"t1w": {"datatype": "func"}}, {"t1w": {"session": {"a": 1}}}, ["t1w"]):
        with pytest.raises(ValueError):
            read_bids_filters(_json(tmp_path, bad))
        assert main(_args(bids_ds, tmp_path, "--bids-filter-file", str(_json(tmp_path, bad)))) == EXIT_USAGE


def _json(tmp_path, obj):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(obj))
    return path
