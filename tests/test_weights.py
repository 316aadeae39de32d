"""Weights format, checksums and resolution order (usb_prep.weights)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from usb_prep import weights as W
from usb_prep.config import preset
from usb_prep.diffusion.model import USBModel
from usb_prep.weights import WeightsError, load_model, resolve_weights, save_model

torch.set_num_threads(1)


@pytest.fixture
def weights_dir(tiny_weights, tmp_path):
    """A private copy of the tiny weights (tests here modify it)."""
    dst = tmp_path / "w"
    shutil.copytree(tiny_weights, dst)
    return dst


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    m = USBModel(preset("tiny")).eval()
    folder = save_model(tmp_path / "w", {"fill": m, "generate": m})
    man = json.loads((folder / "usb.json").read_text())
    assert man["format"] == 1
    # one model under two roles is written once
    assert man["models"]["fill"]["file"] == man["models"]["generate"]["file"]
    assert len(list(folder.glob("*.safetensors"))) == 1
    loaded, info = load_model(folder, "fill")
    assert loaded.cfg == m.cfg
    sd0, sd1 = m.state_dict(), loaded.state_dict()
    assert sd0.keys() == sd1.keys()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert info["sha256"] == W.sha256_file(folder / man["models"]["fill"]["file"])
    assert info["role"] == "fill" and info["preset"] == "tiny"
    # the loaded model computes the same thing
    x = torch.randn(1, 1, 8, 8, 8)
    t = torch.tensor([10])
    with torch.no_grad():
        assert torch.equal(m.lesion_out(x, x, t), loaded.lesion_out(x, x, t))


def test_checksum_mismatch_names_file(weights_dir):
    man = json.loads((weights_dir / "usb.json").read_text())
    f = weights_dir / man["models"]["fill"]["file"]
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # flip the last byte (tensor data)
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch") as e:
        load_model(weights_dir, "fill")
    assert str(f) in str(e.value)


def test_missing_weights_file(weights_dir):
    man = json.loads((weights_dir / "usb.json").read_text())
    (weights_dir / man["models"]["fill"]["file"]).unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_model(weights_dir, "fill")


def test_unknown_role(weights_dir):
    man = json.loads((weights_dir / "usb.json").read_text())
    del man["models"]["generate"]
    (weights_dir / "usb.json").write_text(json.dumps(man))
    with pytest.raises(WeightsError, match="generate"):
        load_model(weights_dir, "generate")


def test_missing_folder_names_all_three_places(tmp_path, monkeypatch):
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path / "env_weights"))
    missing = tmp_path / "nowhere"
    with pytest.raises(WeightsError) as e:
        resolve_weights(missing)
    msg = str(e.value)
    assert str(missing) in msg
    assert "$USB_PREP_WEIGHTS" in msg and str(tmp_path / "env_weights") in msg
    assert "packaged default" in msg and str(W.packaged_weights_dir()) in msg


def test_resolution_order(weights_dir, tmp_path, monkeypatch):
    other = tmp_path / "other"
    shutil.copytree(weights_dir, other)
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    # explicit beats env
    monkeypatch.setenv(W.ENV_VAR, str(other))
    assert resolve_weights(weights_dir) == weights_dir
    # env when no explicit argument
    assert resolve_weights(None) == other
    # pointing at usb.json itself works too
    assert resolve_weights(weights_dir / "usb.json") == weights_dir
    # an env var pointing at a broken folder is an error, not a silent fall-back to the packaged model
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path / "broken"))
    with pytest.raises(WeightsError):
        resolve_weights(None)
    # with nothing given, the packaged default is used (if present)
    monkeypatch.delenv(W.ENV_VAR)
    if (W.packaged_weights_dir() / "usb.json").is_file():
        assert resolve_weights(None) == W.packaged_weights_dir()
    else:
        with pytest.raises(WeightsError, match="packaged default"):
            resolve_weights(None)


def test_corrupt_manifest(weights_dir):
    (weights_dir / "usb.json").write_text("{not json")
    with pytest.raises(WeightsError, match="usb.json"):
        load_model(weights_dir)


def test_packaged_default_weights_load(monkeypatch):
    folder = W.packaged_weights_dir()
    if not (folder / "usb.json").is_file():
        pytest.skip(f"packaged weights not present yet: {folder / 'usb.json'} is missing")
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    man = json.loads((folder / "usb.json").read_text())
    assert "fill" in man["models"], "the packaged weights must provide a filling model"
    for role in man["models"]:
        model, info = load_model(None, role)
        assert info["weights"] == "packaged default" and info["file"] == man["models"][role]["file"]  # no local paths
        assert not any(p.requires_grad for p in model.parameters())  # frozen: inference builds no autograd graph
        assert len(info["sha256"]) == 64
        assert sum(p.numel() for p in model.parameters()) > 0


def test_fill_settings_have_one_source():
    """The dataclass holds no values; the packaged usb.json gives every setting in every block; an incomplete
    block is refused; weights without a block fill with MODEL_ONLY, which names every setting."""
    import dataclasses
    import json

    from usb_prep.fill.settings import MODEL_ONLY, FillSettings, packaged
    from usb_prep.weights import packaged_weights_dir

    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(FillSettings))
    with pytest.raises(TypeError):
        FillSettings()
    man = json.loads((packaged_weights_dir() / "usb.json").read_text())
    names = set(FillSettings.names())
    for block in [man["fill_settings"], *man["contrast_settings"].values()]:
        assert set(block) == names
    assert set(MODEL_ONLY) == names
    block = dict(man["fill_settings"])
    del block["keep_background"]
    with pytest.raises(ValueError, match="missing: keep_background"):
        FillSettings.from_dict(block)
    assert packaged().to_dict() == man["fill_settings"]
    import usb_prep.fill.patchmatch as pm

    assert not hasattr(pm, "NLM_SEARCH")
