"""Healthy-to-pathology: paint a lesion mask into a healthy image (ACG + LCG guidance)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from . import crops
from .diffusion import sampling
from .fill.model_fill import pad_to
from .runtime import Progress, generator, resolve_device
from .weights import model_or_load


@torch.inference_mode()
def embed_array(image: np.ndarray, mask: np.ndarray, *, model=None, weights=None, steps: int | None = None,
                t_start: int | None = None, seed: int = 0, device="auto", margin: int = 2, lam: float = 1.0,
                gamma0: float = 20.0, k: float = 0.5, progress=False) -> np.ndarray:
    """Healthy-to-pathology: paint the lesion ``mask`` into a healthy normalised image (ACG + LCG)."""
    from .diffusion.guidance import soft_lesion_map

    dev = resolve_device(device)
    model = model_or_load(model, weights, "fill", dev)
    mask = np.asarray(mask, bool)
    out = np.array(image, np.float32, copy=True)
    if not mask.any():
        return out
    steps = steps or model.cfg.default_steps
    t_start = 500 if t_start is None else t_start
    gen = generator(seed)
    div = model.divisor * model.downsample
    region_np = ndimage.binary_dilation(mask, iterations=margin) if margin else mask  # what may change
    boxes = crops.lesion_boxes(mask, 16, 1, 1)
    bar = Progress(len(boxes), progress, "embedding", unit="lesion")
    for box in boxes:
        v = crops.extract(out, box)
        m = crops.extract(mask, box)
        vp, mp = pad_to(v, div, 2 * div), pad_to(m, div, 2 * div)
        y0 = model.encode_image(torch.from_numpy(vp)[None, None].to(dev))
        m_t = torch.from_numpy(mp)[None, None].float().to(dev)
        code = model.encode_mask(m_t)
        region = sampling.dilate(m_t, margin)
        if model.downsample > 1:
            m_t = torch.nn.functional.max_pool3d(m_t, model.downsample)
            region = torch.nn.functional.max_pool3d(region, model.downsample)
        y = sampling.edit(model, y0, code, steps=steps, t_start=t_start, generator=gen, gamma0=gamma0, k=k,
                          lcg_map=soft_lesion_map(m_t), lam=lam, known=1 - region)
        res = model.decode_image(y)[0, 0].float().cpu().numpy()[tuple(slice(0, n) for n in v.shape)]
        crops.paste(out, box, np.maximum(res, 0), region_np)
        bar.update()
    bar.close()
    return out
