"""The fill's refiner (usb_prep.refine): identity at init, residual inside the mask only, its weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from usb_prep import api
from usb_prep.config import preset
from usb_prep.model import USBModel
from usb_prep.refine import Refiner, refine_fill
from usb_prep.weights import WeightsError, load_model, save_model

torch.set_num_threads(1)


def _parts(shape=(30, 34, 28), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.2, 1.0, shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:7, 10:16, 3:9] = True  # near the edge: its crop reaches outside the image
    mask[18:25, 20:27, 15:22] = True  # a second lesion
    fills = [np.where(mask, rng.uniform(0, 1, shape), img).astype(np.float32) for _ in range(3)]
    blend = np.where(mask, 0.2 * fills[1] + 0.8 * fills[2], img).astype(np.float32)
    return img, mask, fills, blend


def _biased(bias: float) -> Refiner:
    net = Refiner().eval()
    with torch.no_grad():
        net.out.bias.fill_(bias)
    return net


def test_untrained_refiner_returns_the_blend():
    img, mask, fills, blend = _parts()
    out = refine_fill(Refiner().eval(), img, mask, *fills, blend)
    assert out.shape == (mask.sum(),)
    assert np.allclose(out, blend[mask], atol=1e-6)


def test_refiner_residual_lands_inside_every_lesion():
    img, mask, fills, blend = _parts()
    out = refine_fill(_biased(0.1), img, mask, *fills, blend)
    assert np.allclose(out, blend[mask] + 0.1, atol=1e-5)  # both lesions, the edge one included


def test_refiner_weights_round_trip_and_checksum(tmp_path):
    torch.manual_seed(0)
    m = USBModel(preset("tiny")).eval()
    m.refiner = _biased(0.05)
    folder = save_model(tmp_path / "w", {"fill": m, "generate": m})
    man = json.loads((folder / "usb.json").read_text())
    assert man["refiner"]["file"] == "refine.safetensors" and man["refiner"]["channels"] == [16, 32, 48]
    from safetensors.torch import load_file

    assert not any(k.startswith("refiner.") for k in load_file(str(folder / man["models"]["fill"]["file"])))
    fill, info = load_model(folder, "fill")
    gen, gen_info = load_model(folder, "generate")
    assert gen.refiner is None and "refiner_sha256" not in gen_info
    assert info["refiner_sha256"] == man["refiner"]["sha256"]
    sd0, sd1 = m.refiner.state_dict(), fill.refiner.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    f = folder / "refine.safetensors"
    f.write_bytes(f.read_bytes()[:-4] + b"abcd")
    with pytest.raises(WeightsError, match="checksum"):
        load_model(folder, "fill")


def test_fill_array_applies_the_models_refiner():
    from conftest import phantom

    torch.manual_seed(0)
    model = USBModel(preset("tiny")).eval()
    img, les, _, aff = phantom()
    v, m = (img / img.max()).astype(np.float32), les.astype(bool)
    kw = dict(model=model, steps=2, device="cpu", affine=aff, seed=3, patch_weight=0.2, nlm_weight=0.8)
    plain = api.fill_array(v, m, **kw)
    model.refiner = _biased(0.1)
    refined = api.fill_array(v, m, **kw)
    assert np.allclose(refined[m], plain[m] + 0.1, atol=1e-5)
    assert np.array_equal(refined[~m], v[~m])
    assert np.array_equal(api.fill_array(v, m, refine=False, **kw), plain)
    # it corrects the two patch fills' blend: without both in it, it is not applied
    assert np.array_equal(api.fill_array(v, m, **{**kw, "patch_weight": 0.0}),
                          api.fill_array(v, m, refine=False, **{**kw, "patch_weight": 0.0}))
