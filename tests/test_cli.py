"""Command-line tools: usb-fill, usb-embed, usb-generate (click CliRunner and a real subprocess)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from usb_prep.cli.fill import embed, generate, main

COMMON = ["--steps", "2", "--device", "cpu", "--threads", "1", "--quiet"]


def _raw(p):
    return np.asanyarray(nib.load(str(p)).dataobj.get_unscaled())


def test_help():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    assert "--resample-mask" in r.output and "--demo" in r.output
    for cmd in (embed, generate):
        assert CliRunner().invoke(cmd, ["--help"]).exit_code == 0


def test_import_does_not_load_torch():
    code = "import sys; import usb_prep.cli.fill; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_help_subprocess_entry_point():
    r = subprocess.run([sys.executable, "-m", "usb_prep.cli.fill", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Fill a lesion" in r.stdout


def test_usb_fill_writes_output_and_sidecar(lesion_case, tiny_weights, tmp_path):
    out = tmp_path / "filled.nii.gz"
    args = [str(lesion_case["t1w"]), str(lesion_case["mask"]), "-o", str(out), "--weights", tiny_weights,
            "--seed", "7", *COMMON]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert out.is_file()
    side = json.loads((tmp_path / "filled.json").read_text())
    with open(os.path.join(tiny_weights, "usb.json")) as f:
        man = json.load(f)
    assert side["weights"]["sha256"] == man["models"]["fill"]["sha256"]
    assert side["seed"] == 7 and side["steps"] == 2
    assert side["input"] == str(lesion_case["t1w"]) and side["mask"] == str(lesion_case["mask"])
    m = lesion_case["lesion"].astype(bool)
    assert np.array_equal(_raw(out)[~m], _raw(lesion_case["t1w"])[~m])

    # exists, no --overwrite: exit code 2, file untouched
    before = out.read_bytes()
    mtime = out.stat().st_mtime_ns
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert "--overwrite" in r.output
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime

    # with --overwrite and another seed: replaced
    r = CliRunner().invoke(main, [*args[:-len(COMMON) - 2], "--seed", "8", *COMMON, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() != before
    assert json.loads((tmp_path / "filled.json").read_text())["seed"] == 8
    assert json.loads((tmp_path / "filled.json").read_text())["margin"] == 2  # the tiny model's default
    side0 = json.loads((tmp_path / "filled.json").read_text())
    side0_mirror, side0_pmirror = side0["nlm_mirror"], side0["patch_mirror"]

    # --margin / --samples / --patch-weight / --nlm-weight / --nlm-passes / --nlm-mirror / --patch-mirror / --smooth reach
    # the filler and the sidecar, and change the fill
    out2 = tmp_path / "filled2.nii.gz"
    r = CliRunner().invoke(main, [*args[:2], "-o", str(out2), *args[4:-len(COMMON) - 2], "--seed", "8", *COMMON,
                                  "--margin", "0", "--samples", "2", "--patch-weight", "0.25",
                                  "--nlm-weight", "0.25", "--nlm-passes", "2", "--nlm-mirror", "--patch-mirror",
                                  "--smooth", "0.5", "--no-refine"])
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "filled2.json").read_text())
    assert side["margin"] == 0 and side["samples"] == 2 and side["patch_weight"] == 0.25
    assert side["nlm_weight"] == 0.25 and side["nlm_passes"] == 2 and side["smooth"] == 0.5
    assert side["refine"] is False and side["nlm_mirror"] is True and side0_mirror is False
    assert side["patch_mirror"] is True and side0_pmirror is False
    assert not np.array_equal(_raw(out2)[m], _raw(out)[m])
    assert np.array_equal(_raw(out2)[~m], _raw(lesion_case["t1w"])[~m])


def test_usb_fill_requires_output(lesion_case):
    r = CliRunner().invoke(main, [str(lesion_case["t1w"]), str(lesion_case["mask"])])
    assert r.exit_code == 2
    assert "--output" in r.output


def test_usb_fill_missing_weights_exit_code(lesion_case, tmp_path, monkeypatch):
    monkeypatch.delenv("USB_PREP_WEIGHTS", raising=False)
    out = tmp_path / "o.nii.gz"
    r = CliRunner().invoke(main, [str(lesion_case["t1w"]), str(lesion_case["mask"]), "-o", str(out),
                                  "--weights", str(tmp_path / "nowhere"), *COMMON])
    assert r.exit_code == 2
    assert "USB_PREP_WEIGHTS" in r.output
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("usb_prep.fill.fillers") is None, reason="usb_prep.fill.fillers not present")
@pytest.mark.parametrize("method", ["wmstats", "nlm"])
def test_usb_fill_without_model(lesion_case, tmp_path, method):
    out = tmp_path / "wm.nii.gz"
    r = CliRunner().invoke(main, [str(lesion_case["t1w"]), str(lesion_case["mask"]), "-o", str(out),
                                  "--method", method, "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    m = lesion_case["lesion"].astype(bool)
    raw_in, raw_out = _raw(lesion_case["t1w"]), _raw(out)
    assert np.array_equal(raw_out[~m], raw_in[~m])
    assert not np.array_equal(raw_out[m], raw_in[m])
    side = json.loads((tmp_path / "wm.json").read_text())
    assert side["method"] == method


def test_usb_embed(lesion_case, tiny_weights, tmp_path):
    out = tmp_path / "embedded.nii.gz"
    r = CliRunner().invoke(embed, [str(lesion_case["t1w"]), str(lesion_case["mask"]), "-o", str(out),
                                   "--weights", tiny_weights, *COMMON])
    assert r.exit_code == 0, r.output
    assert out.is_file() and (tmp_path / "embedded.json").is_file()
    assert nib.load(str(out)).shape == nib.load(str(lesion_case["t1w"])).shape


def test_usb_generate_pair_and_from_mask(tiny_weights, tmp_path, make_nifti):
    od = tmp_path / "gen"
    r = CliRunner().invoke(generate, ["-o", str(od), "--weights", tiny_weights, *COMMON])
    assert r.exit_code == 0, r.output
    brain, lesion = nib.load(str(od / "brain.nii.gz")), nib.load(str(od / "lesion.nii.gz"))
    assert brain.shape == lesion.shape == (16, 16, 16)
    assert json.loads((od / "brain.json").read_text())["seed"] == 0
    # again without --overwrite: refused
    r = CliRunner().invoke(generate, ["-o", str(od), "--weights", tiny_weights, *COMMON])
    assert r.exit_code == 2
    # from a given mask
    m = np.zeros((16, 16, 16), np.uint8)
    m[6:10, 6:10, 6:10] = 1
    mp = make_nifti(m, "gmask.nii.gz", zooms=(1.5, 1.5, 1.5))
    od2 = tmp_path / "gen2"
    r = CliRunner().invoke(generate, ["-o", str(od2), "--mask", str(mp), "--weights", tiny_weights, *COMMON])
    assert r.exit_code == 0, r.output
    assert nib.load(str(od2 / "brain.nii.gz")).shape == (16, 16, 16)
    assert not (od2 / "lesion.nii.gz").exists()


def test_usb_fill_subprocess(lesion_case, tiny_weights, tmp_path):
    """The installed console script (or its module) end to end in a fresh interpreter."""
    out = tmp_path / "sub.nii.gz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "usb_prep.cli.fill", str(lesion_case["t1w"]), str(lesion_case["mask"]),
                        "-o", str(out), "--weights", tiny_weights, *COMMON],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and (tmp_path / "sub.json").is_file()
    assert f"wrote {out}" in r.stdout


def test_usb_fill_demo(tiny_weights, tmp_path):
    """``usb-fill --demo OUT``: MNI152 case, filled, scored and drawn; a second run needs --overwrite."""
    pytest.importorskip("nilearn")
    od = tmp_path / "demo"
    args = ["--demo", str(od), "--weights", tiny_weights, *COMMON]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    names = ["demo_T1w_healthy.nii.gz", "demo_T1w_lesion.nii.gz", "demo_lesion_mask.nii.gz", "demo_T1w_filled.nii.gz",
             "demo_T1w_filled.json", "demo_slices.png"]
    for n in names:
        assert (od / n).is_file(), n
        assert f"wrote {od / n}" in r.output
    assert "PSNR" in r.output and "MAE" in r.output
    assert (od / "demo_slices.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mask = np.asarray(nib.load(str(od / "demo_lesion_mask.nii.gz")).dataobj).astype(bool)
    healthy = nib.load(str(od / "demo_T1w_healthy.nii.gz"))
    lesioned = np.asarray(nib.load(str(od / "demo_T1w_lesion.nii.gz")).dataobj)
    filled = np.asarray(nib.load(str(od / "demo_T1w_filled.nii.gz")).dataobj)
    assert healthy.shape == (197, 233, 189) and mask.shape == healthy.shape
    ml = mask.sum() * abs(np.linalg.det(healthy.affine[:3, :3])) / 1000
    assert 10 < ml < 25, ml
    # the lesion lies in the right hemisphere (MNI x > 0)
    cx = (healthy.affine @ np.r_[np.argwhere(mask).mean(0), 1])[0]
    assert cx > 10
    h = np.asarray(healthy.dataobj)
    assert np.array_equal(lesioned[~mask], h[~mask]), "the painted lesion stays inside the mask"
    assert lesioned[mask].mean() < 0.8 * h[mask].mean(), "a T1w lesion is hypointense"
    assert np.array_equal(filled[~mask], lesioned[~mask])
    side = json.loads((od / "demo_T1w_filled.json").read_text())
    assert side["demo"] is True and side["weights"]["sha256"] and "in_mask_psnr_db" in side

    before = (od / "demo_T1w_filled.nii.gz").read_bytes()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (od / "demo_T1w_filled.nii.gz").read_bytes() == before
    r = CliRunner().invoke(main, [*args, "--overwrite", "--seed", "1"])
    assert r.exit_code == 0, r.output


def test_run_demo_returns_numbers(tiny_weights, tmp_path):
    pytest.importorskip("nilearn")
    from usb_prep.demo import run_demo

    lines = []
    res = run_demo(tmp_path / "d", weights=tiny_weights, steps=1, device="cpu", num_threads=1, progress=False,
                   echo=lines.append, overwrite=False, seed=0)
    for key in ("psnr", "mae", "psnr_lesioned", "mae_lesioned", "lesion_ml", "seconds"):
        assert np.isfinite(res[key]), key
    assert 0 <= res["mae"] <= 1
    assert any("PSNR" in ln for ln in lines)


def test_demo_passes_every_fill_option(tiny_weights, tmp_path):
    """usb-fill --demo runs with the fill options given on the command line (it used to keep only --steps)."""
    pytest.importorskip("nilearn")
    import json

    r = CliRunner().invoke(main, ["--demo", str(tmp_path / "d"), "--weights", tiny_weights, "--steps", "1",
                                  "--device", "cpu", "--threads", "1", "--quiet", "--margin", "1",
                                  "--patch-weight", "0.3", "--no-keep-background"])
    assert r.exit_code == 0, r.output
    side = json.loads(next((tmp_path / "d").glob("*.json")).read_text())
    assert (side["steps"], side["margin"], side["patch_weight"], side["keep_background"]) == (1, 1, 0.3, False)


def test_method_nlm_runs_with_the_weights_search_window(lesion_case, tmp_path):
    """--method nlm searches the window the weights' settings name (the packaged 11), not a constant in code."""
    import json

    from usb_prep.fill.settings import packaged

    out = tmp_path / "o.nii.gz"
    r = CliRunner().invoke(main, [str(lesion_case["t1w"]), str(lesion_case["mask"]), "-o", str(out), "--method",
                                  "nlm", "--quiet", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o.json").read_text())["nlm_search"] == packaged().nlm_search == 11


def test_front_ends_check_settings_against_the_contrast_that_runs(tmp_path, contrast_weights):
    """init_lesion_fill_wf with contrast 'auto' checks the settings for every contrast the weights fill; the BIDS
    app refuses fill settings with a method other than usb before any subject."""
    from usb_prep.cli.bids_app import EXIT_USAGE
    from usb_prep.cli.bids_app import main as prep_main
    from usb_prep.pipelines import init_lesion_fill_wf

    # the FLAIR block of contrast_weights has patch_weight 0.5: nlm_weight 0.6 suits T1w (patch 0) but not FLAIR
    init_lesion_fill_wf(weights=contrast_weights, fill_settings={"nlm_weight": 0.6}, contrast="t1w")
    with pytest.raises(ValueError, match="flair"):
        init_lesion_fill_wf(weights=contrast_weights, fill_settings={"nlm_weight": 0.6}, contrast="auto")
    bids = tmp_path / "bids"
    (bids / "sub-01/anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    args = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"), "--method", "wmstats",
            "--margin", "1"]
    assert prep_main(args) == EXIT_USAGE
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()
