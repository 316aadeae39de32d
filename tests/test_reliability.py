"""Edge cases and faults (docs/failure-modes.md): exit codes, no silent wrong outputs, file modes, offline runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import phantom
from usb_prep import api
from usb_prep.cli.fill import embed, generate, main

COMMON = ["--steps", "2", "--device", "cpu", "--threads", "1", "--quiet"]


def _fill(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def _err_line(r):
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output  # one line, no traceback
    return lines[0]


# --- 2. nothing overwritten unasked, inputs and their sidecars protected ------------------------------------
def test_output_beside_input_does_not_replace_its_sidecar(tmp_path, tiny_weights):
    img, les, _, aff = phantom()
    src = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(src))
    nib.save(nib.Nifti1Image(les, aff), str(tmp_path / "mask.nii.gz"))
    side = tmp_path / "sub-01_T1w.json"
    side.write_text(json.dumps({"RepetitionTime": 2.3}))
    for extra in ([], ["--overwrite"]):
        r = _fill([src, tmp_path / "mask.nii.gz", "-o", tmp_path / "sub-01_T1w.nii", "--weights", tiny_weights,
                   *COMMON, *extra])
        assert r.exit_code == 2 and "would replace the sidecar of" in _err_line(r)
        assert json.loads(side.read_text()) == {"RepetitionTime": 2.3} and not (tmp_path / "sub-01_T1w.nii").exists()
    # an existing output sidecar (no image yet) is an output too: --overwrite covers it
    (tmp_path / "filled.json").write_text("{}")
    r = _fill([src, tmp_path / "mask.nii.gz", "-o", tmp_path / "filled.nii.gz", "--weights", tiny_weights, *COMMON])
    assert r.exit_code == 2 and "filled.json exists" in _err_line(r)
    r = _fill([src, tmp_path / "mask.nii.gz", "-o", tmp_path / "filled.nii.gz", "--weights", tiny_weights, *COMMON,
               "--overwrite"])
    assert r.exit_code == 0, r.output and json.loads((tmp_path / "filled.json").read_text())["seed"] == 0


# --- 3. file modes follow the umask -------------------------------------------------------------------------
def test_outputs_follow_the_umask(lesion_case, tiny_weights, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "filled.nii.gz"
        r = _fill([lesion_case["t1w"], lesion_case["mask"], "-o", out, "--weights", tiny_weights, *COMMON])
        assert r.exit_code == 0, r.output
        for p in (out, tmp_path / "filled.json"):
            assert (p.stat().st_mode & 0o777) == 0o644, oct(p.stat().st_mode)
    finally:
        os.umask(old)


# --- 4. negative and z-scored intensities -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["usb", "patch"])
def test_shifted_and_zscored_images_fill_like_the_original(tmp_path, tiny_weights, method):
    img, les, _, aff = phantom()
    m = les > 0
    kw = dict(weights=tiny_weights, device="cpu", method=method, seed=1, **({"steps": 2} if method == "usb" else {}))
    mask_img = nib.Nifti1Image(les, aff)
    base = api.fill_lesion(nib.Nifti1Image(img, aff), mask_img, **kw)
    ref = np.asarray(base.image.dataobj, np.float64)
    mu, sd = img[img > 0].mean(), img[img > 0].std()
    for name, fwd, back in (("shifted", lambda a: a - 300.0, lambda a: a + 300.0),
                            ("zscored", lambda a: (a - mu) / sd, lambda a: a * sd + mu)):
        res = api.fill_lesion(nib.Nifti1Image(fwd(img.astype(np.float64)).astype(np.float32), aff), mask_img, **kw)
        got = back(np.asarray(res.image.dataobj, np.float64))
        assert np.allclose(got[m], ref[m], atol=1e-3 * img.max()), name  # the same fill, not a worse one
        assert any("negative intensities" in msg for msg in res.messages), name
        assert res.settings["intensity_offset"] < 0


# --- 5. masks that cannot be filled sensibly ----------------------------------------------------------------
def test_absurd_masks_are_refused_with_one_line(tmp_path):
    img, les, _, aff = phantom()
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "t1.nii.gz"))
    whole = (img > 0).astype(np.uint8)
    air = np.zeros_like(les)
    air[:3, :3, :3] = 1  # a corner of the field of view: background all around
    for name, m, want in (("whole", whole, "covers"), ("air", air, "outside the head")):
        nib.save(nib.Nifti1Image(m, aff), str(tmp_path / f"{name}.nii.gz"))
        r = _fill([tmp_path / "t1.nii.gz", tmp_path / f"{name}.nii.gz", "-o", tmp_path / f"{name}_out.nii.gz",
                   "--method", "wmstats"])
        assert r.exit_code == 2 and want in _err_line(r), r.output
        assert not (tmp_path / f"{name}_out.nii.gz").exists()


def test_large_mask_is_announced(monkeypatch):
    img, les, _, aff = phantom()
    monkeypatch.setattr(api, "LARGE_MASK_ML", 0.01)
    res = api.fill_lesion(nib.Nifti1Image(img, aff), nib.Nifti1Image(les, aff), method="wmstats")
    assert any("large mask" in m for m in res.messages)


# --- 6. every option validated up front, usage errors exit 2 ------------------------------------------------
@pytest.mark.parametrize("extra,needle", [
    (["--steps", "0"], "--steps"), (["--samples", "0"], "--samples"), (["--threads", "0"], "--threads"),
    (["--threads", "-1"], "--threads"), (["--margin", "-1"], "--margin"), (["--seed", "-1"], "--seed"),
    (["--nlm-weight", "2"], "--nlm-weight"), (["--t-start", "99999"], "t_start"),
    (["--device", "cuda"], "CUDA"), (["--patch-weight", "0.6", "--nlm-weight", "0.6"], "patch_weight + nlm_weight"),
])
def test_bad_option_values_exit_2_naming_the_option(lesion_case, tiny_weights, tmp_path, extra, needle):
    if extra[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    r = _fill([lesion_case["t1w"], lesion_case["mask"], "-o", tmp_path / "o.nii.gz", "--weights", tiny_weights,
               "--quiet", *extra])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.nii.gz").exists()


def test_overrides_are_checked_against_the_weights_settings(lesion_case, tmp_path):
    """--nlm-weight 0.9 is valid alone but not with the packaged patch_weight (0.2): every front end says so
    before any work (usb-fill, usb-prep exit 2; the Nipype workflow when built, the interface when run)."""
    from usb_prep.fill.settings import FillSettings, packaged
    from usb_prep.interfaces import LesionFill
    from usb_prep.pipelines import init_lesion_fill_wf

    assert packaged().patch_weight + 0.9 > 1 and FillSettings.model_only().replace(nlm_weight=0.9)  # the trap
    r = _fill([lesion_case["t1w"], lesion_case["mask"], "-o", tmp_path / "o.nii.gz", "--quiet", "--nlm-weight", "0.9"])
    assert r.exit_code == 2 and "patch_weight + nlm_weight" in _err_line(r), r.output
    assert not (tmp_path / "o.nii.gz").exists()
    with pytest.raises(ValueError, match="patch_weight \\+ nlm_weight"):
        init_lesion_fill_wf(fill_settings={"nlm_weight": 0.9})
    node = LesionFill(in_file=str(lesion_case["t1w"]), mask_file=str(lesion_case["mask"]), nlm_weight=0.9)
    with pytest.raises(ValueError, match="patch_weight \\+ nlm_weight"):
        node.run(cwd=str(tmp_path))


def test_manifest_without_sha256_is_one_line(lesion_case, tiny_weights, tmp_path):
    import shutil

    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)
    man = json.loads((w / "usb.json").read_text())
    del man["models"]["fill"]["sha256"]
    (w / "usb.json").write_text(json.dumps(man))
    r = _fill([lesion_case["t1w"], lesion_case["mask"], "-o", tmp_path / "o.nii.gz", "--weights", w, *COMMON])
    assert r.exit_code == 2 and "'sha256'" in _err_line(r)
    r = _fill([lesion_case["t1w"], lesion_case["mask"], "-o", tmp_path / "o.nii.gz", "--weights", tmp_path / "none",
               *COMMON])
    assert r.exit_code == 2 and "no usable weights" in _err_line(r)


# --- 7. temporaries ----------------------------------------------------------------------------------------
def test_stale_temporaries_are_removed_and_sigterm_exits_cleanly(lesion_case, tiny_weights, tmp_path):
    out = tmp_path / "filled.nii.gz"
    stale = tmp_path / ".filled.nii.gz.abc123.tmp.nii.gz"  # what a killed run leaves
    stale.write_bytes(b"partial")
    r = _fill([lesion_case["t1w"], lesion_case["mask"], "-o", out, "--weights", tiny_weights, *COMMON])
    assert r.exit_code == 0 and not stale.exists()
    # SIGTERM while the fill runs: exit 143, no output, no temporary
    big = tmp_path / "big"
    big.mkdir()
    img, les, _, aff = phantom(shape=(64, 72, 64), lesion_radius=14.0)
    nib.save(nib.Nifti1Image(img, aff), str(big / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(les, aff), str(big / "m.nii.gz"))
    cmd = [sys.executable, "-m", "usb_prep.cli.fill", str(big / "t1.nii.gz"), str(big / "m.nii.gz"), "-o",
           str(big / "o.nii.gz"), "--weights", tiny_weights, "--steps", "200", "--device", "cpu", "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(8)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM
    assert sorted(x.name for x in big.iterdir()) == ["m.nii.gz", "t1.nii.gz"]


# --- 9. no network at run time -----------------------------------------------------------------------------
def test_importing_the_pipelines_makes_no_network_call():
    code = ("import os, socket\n"
            "os.environ.pop('NIPYPE_NO_ET', None)\n"
            "calls = []\n"
            "def deny(*a, **k):\n    calls.append(a)\n    raise OSError('network blocked by the test')\n"
            "socket.getaddrinfo = deny\nsocket.create_connection = deny\n"
            "import usb_prep.pipelines, usb_prep.interfaces\n"
            "assert os.environ.get('NIPYPE_NO_ET') == '1', 'NIPYPE_NO_ET not set'\n"
            "assert not calls, calls\n")
    env = {k: v for k, v in os.environ.items() if k != "NIPYPE_NO_ET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]


# --- 10. inference without autograd ------------------------------------------------------------------------
def test_every_task_runs_without_autograd():
    """A small latent-mode model (the paper preset's layout): its autoencoder and denoisers never build a graph
    (the paper preset ran out of memory on the CPU through autograd in encode/decode)."""
    from usb_prep.config import NetConfig, preset
    from usb_prep.diffusion.model import USBModel

    ae = dict(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 8), latent_channels=3, num_res_blocks=1,
              norm_num_groups=4, norm_eps=1e-6, attention_levels=(False, False), with_encoder_nonlocal_attn=False,
              with_decoder_nonlocal_attn=False)
    net = NetConfig(3, 3, 3, (8, 8), (False, False), 1, 8, 4)
    cfg = preset("tiny", mode="latent", autoencoder=ae, lesion_net=net, brain_net=net, context=False, mirror=False,
                 grid=(16, 16, 16))
    torch.manual_seed(0)
    model = USBModel(cfg).eval()
    seen = []

    def hook(mod, inp, out):
        out = out[0] if isinstance(out, tuple) else out
        seen.append(torch.is_grad_enabled() or out.requires_grad)

    for m in (model.autoencoder.encoder, model.autoencoder.decoder, model.brain_net, model.lesion_net):
        m.register_forward_hook(hook)
    img, les, _, aff = phantom(shape=(16, 16, 16), lesion_centre=(0.0, 0.0, 0.0))
    v = (img / img.max()).astype(np.float32)
    api.fill_array(v, les > 0, model=model, steps=2, device="cpu", affine=aff)
    api.embed_array(v, les > 0, model=model, steps=2, device="cpu")
    api.detect_array(v, model=model, steps=2, device="cpu", detect_mm=1.0)
    api.generate_pair_array(model=model, steps=2, device="cpu")
    assert len(seen) > 12 and not any(seen)


# --- 11. messages ------------------------------------------------------------------------------------------
def test_messages_are_one_line_and_name_the_command(lesion_case, tiny_weights, tmp_path, make_nifti):
    bad = tmp_path / "trunc.nii"
    full = tmp_path / "full.nii"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), str(full))
    bad.write_bytes(full.read_bytes()[:5000])
    r = _fill([bad, lesion_case["mask"], "-o", tmp_path / "o.nii.gz", *COMMON])
    assert r.exit_code == 2 and "truncated" in _err_line(r)
    r = _fill([tmp_path, lesion_case["mask"], "-o", tmp_path / "o.nii.gz", *COMMON])
    assert r.exit_code == 2 and "is a folder" in _err_line(r)
    r = CliRunner().invoke(embed, [str(tmp_path / "none.nii.gz"), str(lesion_case["mask"]), "-o",
                                   str(tmp_path / "e.nii.gz")])
    assert r.exit_code == 2 and _err_line(r).startswith("usb-embed: error:")
    r = CliRunner().invoke(generate, ["-o", str(tmp_path / "gen"), "--mask", str(tmp_path / "none.nii.gz")])
    assert r.exit_code == 2 and _err_line(r).startswith("usb-generate: error:") and "Errno" not in r.output
    assert not (tmp_path / "gen").exists()
    # same shape, shifted affine: the message says the affines differ, and by how much
    aff = np.asarray(nib.load(str(lesion_case["t1w"])).affine).copy()
    aff[0, 3] += 2.5
    moved = make_nifti(lesion_case["lesion"], name="moved.nii.gz", affine=aff)
    r = _fill([lesion_case["t1w"], moved, "-o", tmp_path / "o.nii.gz", "--weights", tiny_weights, *COMMON])
    assert r.exit_code == 2 and "affines differ" in _err_line(r) and "2.5" in r.output


def test_label_mask_0_255_is_binary(lesion_case):
    img = nib.load(str(lesion_case["t1w"]))
    m = nib.Nifti1Image((lesion_case["lesion"] > 0).astype(np.uint8) * 255, img.affine)
    res = api.fill_lesion(img, m, method="wmstats")
    assert not any("not binary" in x for x in res.messages)
    assert any("0 and 255" in x for x in res.messages)
    assert np.asarray(res.mask.dataobj).sum() == (lesion_case["lesion"] > 0).sum()


def test_float64_as_mgz_warns(tmp_path):
    from usb_prep.io import save_image

    with pytest.warns(UserWarning, match="float32"):
        save_image(nib.Nifti1Image(np.ones((4, 4, 4)), np.eye(4)), tmp_path / "x.mgz")


# --- 12/13. one progress bar over every stage; what the sidecar records ------------------------------------
def test_progress_covers_every_stage_and_sidecar_provenance(lesion_case, tiny_weights, capsys):
    from usb_prep.config import preset
    from usb_prep.diffusion.model import USBModel
    from usb_prep.fill.refiner import Refiner

    model = USBModel(preset("tiny")).eval()
    model.refiner = Refiner().eval()
    img, les, _, aff = phantom()
    v = (img / img.max()).astype(np.float32)
    api.fill_array(v, les > 0, model=model, steps=2, device="cpu", affine=aff, progress=True, patch_weight=0.2,
                   nlm_weight=0.8)
    err = capsys.readouterr().err
    assert "refine" in err and "100%" in err.replace("\r", "\n").splitlines()[-1]
    res = api.fill_lesion(str(lesion_case["t1w"]), str(lesion_case["mask"]), weights=tiny_weights, steps=1,
                          device="cpu")
    s = res.settings
    assert s["torch_version"] == torch.__version__ and s["started"][:2] == "20"
    assert s["weights"]["file"] == "fill.safetensors" and len(s["weights"]["sha256"]) == 64
