"""The hand-off never lies (issue 44): reruns, failures and mistakes cannot leave the filled dataset (the next
tool's input), the derivatives or a guided fill silently wrong. Each test is one case of docs/failure-modes.md."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import phantom, write_nifti
from usb_prep.cli.bids_app import EXIT_USAGE, main

FILLED = "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"
DERIVED = "sub-02/ses-1/anat/sub-02_ses-1_desc-lesionfilled_T1w.nii.gz"


def _args(bids_ds, tmp_path, *extra, fd=True):
    return [str(bids_ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), "--method", "wmstats",
            "--nprocs", "1", *(["--filled-dataset", str(tmp_path / "fd")] if fd else []), *extra]


def _side(path):
    return json.loads(Path(path).with_name(Path(path).name.replace(".nii.gz", ".json")).read_text())


def _run(bids_ds, tmp_path, plugin, *labels, **kw):
    return main(_args(bids_ds, tmp_path, "--use-plugin", str(plugin), "--participant-label", *labels, **kw))


# 1. a rerun with fewer participants keeps the others' fills; one changed since is withdrawn, by name
def test_rerun_with_fewer_subjects_keeps_their_fills(bids_ds, tmp_path, linear_plugin, caplog):
    assert _run(bids_ds, tmp_path, linear_plugin, "01", "02") == 0
    fd, out = tmp_path / "fd", tmp_path / "out"
    filled = (fd / FILLED).read_bytes()
    assert filled == (out / DERIVED).read_bytes() != (bids_ds / FILLED).read_bytes()
    assert _run(bids_ds, tmp_path, linear_plugin, "01") == 0
    assert (fd / FILLED).read_bytes() == filled, "sub-02's fill was undone by a run that did not include it"
    assert "LesionFilling" in _side(fd / FILLED)
    record = json.loads((fd / "code/usb_prep/filled.json").read_text())
    assert set(record["images"]) == {"sub-01/anat/sub-01_T1w.nii.gz", FILLED}
    assert record["images"][FILLED]["run"] != record["images"]["sub-01/anat/sub-01_T1w.nii.gz"]["run"]
    assert set(record["runs"]) == {i["run"] for i in record["images"].values()}
    # someone edits sub-02's filled image in DIR: the next run cannot vouch for it and says so by name
    (fd / FILLED).unlink()
    shutil.copy(bids_ds / "sub-03/anat/sub-03_T1w.nii.gz", fd / FILLED)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="usb_prep.bids_app"):
        assert _run(bids_ds, tmp_path, linear_plugin, "01") == 0
    assert (fd / FILLED).read_bytes() == (bids_ds / FILLED).read_bytes()
    assert not (fd / FILLED.replace(".nii.gz", ".json")).exists()  # no claim of a fill (the input has no sidecar)
    assert not (fd / "sub-02/ses-1/anat/sub-02_ses-1_label-lesion_roi.nii.gz").read_bytes() != (
        bids_ds / "sub-02/ses-1/anat/sub-02_ses-1_label-lesion_roi.nii.gz").read_bytes()
    assert any(FILLED in r.getMessage() and "unfilled original" in r.getMessage() for r in caplog.records)


# 2. a subject failing on a rerun: its fill is withdrawn from DIR and its stale derivatives removed
def test_failing_subject_loses_its_fill_and_stale_outputs(bids_ds, tmp_path, linear_plugin, caplog):
    assert _run(bids_ds, tmp_path, linear_plugin, "01", "02") == 0
    out, fd = tmp_path / "out", tmp_path / "fd"
    mask_out = out / "sub-02/ses-1/anat/sub-02_ses-1_label-lesion_mask.nii.gz"
    assert mask_out.exists()
    _, lesion, _, aff = phantom(shape=(20, 20, 20))  # the mask now on another grid: the fill fails
    write_nifti(bids_ds / "sub-02/ses-1/anat/sub-02_ses-1_label-lesion_roi.nii.gz", lesion, aff)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="usb_prep.bids_app"):
        assert _run(bids_ds, tmp_path, linear_plugin, "01", "02") == 1
    assert not (out / DERIVED).exists()
    assert not mask_out.exists() and not mask_out.with_name(mask_out.name.replace(".nii.gz", ".json")).exists()
    assert (fd / FILLED).read_bytes() == (bids_ds / FILLED).read_bytes()
    assert not (fd / FILLED.replace(".nii.gz", ".json")).exists()
    roi = "sub-02/ses-1/anat/sub-02_ses-1_label-lesion_roi.nii.gz"
    assert (fd / roi).read_bytes() == (bids_ds / roi).read_bytes()  # the input's own ROI, not last run's
    record = json.loads((fd / "code/usb_prep/filled.json").read_text())
    assert FILLED not in record["images"]
    # 6. the failed subject's line carries the cause, not "Traceback"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sub-02_ses-1 failed")]
    assert lines and "different grids" in lines[0] and "Traceback" not in lines[0], lines


# 3. and 4. DIR equal to or inside the output or work folder, or written from another input: refused first
def test_filled_dataset_dir_is_checked_before_any_work(bids_ds, tmp_path, linear_plugin):
    for bad in (tmp_path / "out", tmp_path / "out" / "fd", tmp_path / "work", tmp_path / "work" / "fd"):
        args = _args(bids_ds, tmp_path, "--participant-label", "01", fd=False) + ["--filled-dataset", str(bad)]
        assert main(args) == EXIT_USAGE, bad
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
    assert _run(bids_ds, tmp_path, linear_plugin, "01") == 0
    other = tmp_path / "other_study"
    shutil.copytree(bids_ds, other)
    args = [str(other), str(tmp_path / "out2"), "participant", "-w", str(tmp_path / "work2"), "--method", "wmstats",
            "--participant-label", "01", "--filled-dataset", str(tmp_path / "fd")]
    assert main(args) == EXIT_USAGE
    assert not (tmp_path / "out2").exists()
    desc = json.loads((tmp_path / "fd/dataset_description.json").read_text())
    assert desc["SourceDatasets"] == [{"URL": bids_ds.absolute().as_uri()}]


# 5. outputs follow the umask (derivatives and DIR)
def test_bids_app_outputs_follow_the_umask(bids_ds, tmp_path, linear_plugin):
    old = os.umask(0o022)
    try:
        assert _run(bids_ds, tmp_path, linear_plugin, "01") == 0
    finally:
        os.umask(old)
    files = [p for d in ("out", "fd") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert len(files) > 10
    modes = {str(p): oct(p.stat().st_mode & 0o777) for p in files}
    assert all(m == oct(0o644) for m in modes.values()), modes


# 7. DIR's sidecars say everything the fill needs to be reproduced; ROIs are copies; counts are right
def test_filled_dataset_sidecar_reproduces_the_fill(bids_ds, tmp_path, linear_plugin, caplog):
    with caplog.at_level(logging.WARNING, logger="usb_prep.bids_app"):
        assert _run(bids_ds, tmp_path, linear_plugin, "01") == 0
    fd, out = tmp_path / "fd", tmp_path / "out"
    how = _side(fd / "sub-01/anat/sub-01_T1w.nii.gz")["LesionFilling"]
    derived = _side(out / "sub-01/anat/sub-01_desc-lesionfilled_T1w.nii.gz")["LesionFilling"]
    assert {k: v for k, v in how.items() if k in derived} == derived  # every setting the derivative records
    assert how["Source"].startswith("bids:unfilled:") and how["Run"]
    assert json.loads((fd / "dataset_description.json").read_text())["DatasetLinks"]["unfilled"] == \
        bids_ds.absolute().as_uri()
    roi = fd / "sub-01/anat/sub-01_label-lesion_roi.nii.gz"
    assert os.stat(roi).st_ino != os.stat(out / "sub-01/anat/sub-01_label-lesion_mask.nii.gz").st_ino
    line = next(r.getMessage() for r in caplog.records if "other files written" in r.getMessage())
    # the input's 7 files: sub-01's image and roi are DIR's own, the two root files are written anew
    assert "1 images filled, 1 masks, 3 other files written" in line, line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="usb_prep.bids_app"):
        assert _run(bids_ds, tmp_path, linear_plugin, "01") == 0
    line = next(r.getMessage() for r in caplog.records if "other files written" in r.getMessage())
    assert "0 other files written" in line, line  # links already in place are not counted again


# 8. a guide that cannot serve is refused (empty, elsewhere) or left out with a message (lesioned, misaligned)
@pytest.fixture
def guided_case(tmp_path):
    from nilearn import datasets

    t = datasets.load_mni152_template(resolution=2)
    x = np.asarray(t.dataobj, np.float32)[20:76, 20:92, 20:72]
    aff = t.affine.copy()
    aff[:3, 3] += aff[:3, :3] @ np.array([20, 20, 20])
    mask = np.zeros(x.shape, np.uint8)
    mask[18:24, 34:42, 22:28] = 1
    img = x.copy()
    img[mask > 0] = 0.25 * x[x > 0].mean()
    paths = {}
    for name, data in (("t1", img), ("mask", mask), ("guide_filled", x), ("guide_unfilled", img),
                       ("guide_zero", np.zeros_like(x)), ("guide_shifted", np.roll(x, 3, axis=1))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nb.save(nb.Nifti1Image(data, aff), str(paths[name]))
    far = aff.copy()
    far[0, 3] += 500
    paths["guide_far"] = tmp_path / "guide_far.nii.gz"
    nb.save(nb.Nifti1Image(x, far), str(paths["guide_far"]))
    return paths


def _guided(case, guide, out):
    from usb_prep.cli.fill import main as fill_main

    return CliRunner().invoke(fill_main, [str(case["t1"]), str(case["mask"]), "-o", str(out), "--contrast", "t1w",
                                          "--guide", str(case[guide]), "--device", "cpu", "--threads", "1",
                                          "--quiet", "--no-refine", "--steps", "1"])


@pytest.mark.parametrize("guide", ["guide_zero", "guide_far"])
def test_empty_or_distant_guide_is_refused(guided_case, tmp_path, guide):
    r = _guided(guided_case, guide, tmp_path / "o.nii.gz")
    assert r.exit_code == 2 and ("empty" in r.output or "overlap" in r.output), r.output
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("guide, word", [("guide_unfilled", "lesioned"), ("guide_shifted", "aligned")])
def test_doubtful_guide_is_left_out_and_said(guided_case, tmp_path, guide, word):
    r = _guided(guided_case, guide, tmp_path / "o.nii.gz")
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "o.json").read_text())
    assert word in side["guide_unused"] and "guide" not in side
    assert word in r.output  # the note on the terminal
    ok = _guided(guided_case, "guide_filled", tmp_path / "ok.nii.gz")
    assert ok.exit_code == 0 and json.loads((tmp_path / "ok.json").read_text()).get("guide"), ok.output


# 9. Ctrl-C during a fill exits 130 (and leaves nothing), as SIGTERM exits 143
def test_ctrl_c_exits_130_and_leaves_nothing(tiny_weights, tmp_path):
    img, les, _, aff = phantom(shape=(64, 72, 64), lesion_radius=14.0)
    nb.save(nb.Nifti1Image(img, aff), str(tmp_path / "t1.nii.gz"))
    nb.save(nb.Nifti1Image(les, aff), str(tmp_path / "m.nii.gz"))
    cmd = [sys.executable, "-m", "usb_prep.cli.fill", str(tmp_path / "t1.nii.gz"), str(tmp_path / "m.nii.gz"), "-o",
           str(tmp_path / "o.nii.gz"), "--weights", tiny_weights, "--steps", "200", "--device", "cpu", "--quiet",
           "--contrast", "t1w"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(8)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    assert p.returncode == 130, p.stderr.read().decode()[-2000:]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.nii.gz", "t1.nii.gz"]


# 10. SIGTERM ends the whole run, workers included; a second run on a busy work folder stops at once
def _many_subjects(root, n=6):
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "many", "BIDSVersion": "1.10.0"}))
    img, les, _, aff = phantom(shape=(48, 56, 48), lesion_radius=9.0)
    for i in range(n):
        write_nifti(root / f"sub-{i:02d}/anat/sub-{i:02d}_T1w.nii.gz", img, aff)
        write_nifti(root / f"sub-{i:02d}/anat/sub-{i:02d}_label-lesion_roi.nii.gz", les, aff)
    return root


def _alive(pids):
    return [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in
            Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_sigterm_ends_every_worker_and_busy_work_dir_is_refused(tmp_path, tiny_weights):
    import psutil

    bids = _many_subjects(tmp_path / "bids")
    cmd = [sys.executable, "-m", "usb_prep.cli.bids_app", str(bids), str(tmp_path / "out"), "participant",
           "-w", str(tmp_path / "work"), "--nprocs", "2", "--weights", tiny_weights, "--steps", "300"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and len(workers) < 2:  # MultiProc's worker processes
            time.sleep(0.5)
            workers = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        assert len(workers) >= 2, "MultiProc started no workers"
        time.sleep(3)
        # a second run on the same work folder, while this one runs: refused, one line, before any work
        second = subprocess.run(cmd[:4] + [str(tmp_path / "out2")] + cmd[5:], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and "another usb-prep run" in second.stderr, second.stderr[-2000:]
        assert not (tmp_path / "out2").exists()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, p.stderr.read().decode()[-2000:]
    time.sleep(1)
    assert not _alive(workers), "workers still running after SIGTERM"


# 11. Nipype's SLURM plugin needs $LOGNAME: set from the user id where it is missing (containers, cron, CI)
def test_slurm_plugin_without_logname(tmp_path, monkeypatch):
    from usb_prep.cli.bids_app import _plugin, get_parser

    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURM\nplugin_args: {sbatch_args: '--time=00:10:00'}\n")
    monkeypatch.delenv("LOGNAME", raising=False)
    opts = get_parser().parse_args(["b", "o", "participant", "--use-plugin", str(plugin)])
    name, args = _plugin(opts)
    assert name == "SLURM" and args["sbatch_args"] == "--time=00:10:00"
    import pwd

    assert os.environ["LOGNAME"] == pwd.getpwuid(os.getuid()).pw_name
    from nipype.pipeline.plugins.slurm import SLURMPlugin

    SLURMPlugin(plugin_args=args)  # what raised KeyError: 'LOGNAME' before


def _slurm_ready() -> bool:
    return bool(shutil.which("sbatch") and shutil.which("squeue")) and subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip() in ("idle", "mixed", "allocated")


@pytest.mark.skipif(not _slurm_ready(), reason="no running SLURM (CI starts one: .ci/slurm.sh)")
def test_bids_app_on_a_real_slurm_cluster(bids_ds, tmp_path, monkeypatch):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURM\nplugin_args: {sbatch_args: '--time=00:10:00', poll_sleep_duration: 1}\n")
    monkeypatch.delenv("LOGNAME", raising=False)
    args = [str(bids_ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), "--method", "wmstats",
            "--participant-label", "01", "02", "--use-plugin", str(plugin)]
    assert main(args) == 0
    ref = [str(bids_ds), str(tmp_path / "ref"), "participant", "-w", str(tmp_path / "wref"), "--method", "wmstats",
           "--participant-label", "01", "02", "--nprocs", "1"]
    assert main(ref) == 0
    for rel in ("sub-01/anat/sub-01_desc-lesionfilled_T1w.nii.gz", DERIVED):
        assert (tmp_path / "out" / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes()


def test_a_bids_client_collects_the_filled_dataset(bids_ds, tmp_path, linear_plugin):
    """pybids, as fMRIPrep's collection code queries it (a layout without validation, anat T1w and roi), finds the
    filled T1w and its lesion ROI in DIR, after a first run and after a rerun with fewer subjects."""
    bids = pytest.importorskip("bids")
    assert _run(bids_ds, tmp_path, linear_plugin, "01", "02") == 0
    assert _run(bids_ds, tmp_path, linear_plugin, "02") == 0
    layout = bids.BIDSLayout(str(tmp_path / "fd"), validate=False)
    assert layout.get_dataset_description()["DatasetType"] == "raw"
    for sub, rel in (("01", "sub-01/anat/sub-01_desc-lesionfilled_T1w.nii.gz"), ("02", DERIVED)):
        t1w = layout.get(subject=sub, datatype="anat", suffix="T1w", extension=[".nii", ".nii.gz"],
                         return_type="file")
        roi = layout.get(subject=sub, datatype="anat", suffix="roi", return_type="file")
        assert len(t1w) == 1 and len(roi) == 1, (t1w, roi)
        assert Path(t1w[0]).read_bytes() == (tmp_path / "out" / rel).read_bytes()
        assert "LesionFilling" in layout.get_metadata(t1w[0])


def test_an_older_usb_prep_folder_is_refused_with_its_reason(tmp_path):
    """A DIR that usb_prep wrote before it kept a record is told apart from a foreign folder."""
    from usb_prep.filled_dataset import RECORD, check_dir

    src = tmp_path / "bids"
    src.mkdir()
    old, foreign = tmp_path / "old", tmp_path / "foreign"
    for d, gen in ((old, "usb_prep"), (foreign, "fmriprep")):
        d.mkdir()
        (d / "dataset_description.json").write_text(json.dumps({"Name": "x", "GeneratedBy": [{"Name": gen}]}))
    with pytest.raises(ValueError, match="older usb_prep") as err:
        check_dir(old, src)
    assert RECORD in str(err.value)
    with pytest.raises(ValueError, match="not written by usb_prep"):
        check_dir(foreign, src)
    (foreign / "dataset_description.json").write_text("{not json")
    with pytest.raises(ValueError, match="not written by usb_prep"):
        check_dir(foreign, src)
