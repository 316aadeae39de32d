"""The fill's last stage: a small CNN that corrects the blended fill inside the mask.

The blend (:mod:`usb_prep.fill.blend`: 0.2 classical patch fill + 0.8 model-guided
non-local-means fill by default) averages its parts voxel by voxel. The refiner sees the known image,
the mask and the parts themselves (the model's fill, the patch fill, the nlm fill) and adds a residual
inside the mask; its last layer is zero-initialised, so an untrained refiner returns the blend.
Trained on synthetic lesions of the training brains by :mod:`usb_prep.train.refiner` (``usb-train --stage refiner``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import crops

PATCH = 32  # training and inference window edge (GroupNorm statistics depend on it)
CONTEXT = 12  # known voxels around each lesion crop
OVERLAP = 0.25  # of neighbouring windows, Gaussian-weighted (validation: as good as 0.5, 2-4x fewer windows)


def refiner_inputs(image, mask, model_fill, patch_fill, nlm_fill, blend):
    """Channels (known image, mask, model / patch / nlm fill) of a crop; the fills are whole images
    (their values inside ``mask``, ``image`` outside), as is ``blend``, returned as the base."""
    m = np.asarray(mask, bool)
    x = np.stack([np.where(m, 0, image), m.astype(np.float32), np.where(m, model_fill, image),
                  np.where(m, patch_fill, image), np.where(m, nlm_fill, image)])
    return x.astype(np.float32), np.where(m, blend, image).astype(np.float32)


def _block(i, o):
    return nn.Sequential(nn.Conv3d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),
                         nn.Conv3d(o, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU())


class Refiner(nn.Module):
    """Two-level 3D U-Net over the 5 channels of :func:`refiner_inputs`; predicts the residual."""

    def __init__(self, channels=(16, 32, 48)):
        super().__init__()
        c = tuple(int(v) for v in channels)
        self.channels = c
        self.e1, self.e2, self.e3 = _block(5, c[0]), _block(c[0], c[1]), _block(c[1], c[2])
        self.d2, self.d1 = _block(c[2] + c[1], c[1]), _block(c[1] + c[0], c[0])
        self.out = nn.Conv3d(c[0], 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(F.avg_pool3d(a, 2))
        c = self.e3(F.avg_pool3d(b, 2))
        b = self.d2(torch.cat([F.interpolate(c, scale_factor=2, mode="trilinear"), b], 1))
        a = self.d1(torch.cat([F.interpolate(b, scale_factor=2, mode="trilinear"), a], 1))
        return self.out(a)


def pad_to_window(a: np.ndarray, size: int = PATCH) -> np.ndarray:
    """Zero-pad the last three axes to at least ``size`` and to multiples of 4 (two poolings)."""
    need = [max(size, -(-s // 4) * 4) - s for s in a.shape[-3:]]
    return np.pad(a, [(0, 0)] * (a.ndim - 3) + [(0, n) for n in need])


FLIPS = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))  # tensor dims of (N, C, X, Y, Z)


def _flip_mean(net, flips):
    """``net`` averaged over input flips (undone on the output): it was trained on flipped windows."""
    def f(x):
        out = net(x)
        for d in flips[1:]:  # flips[0] is () : no flip
            out = out + torch.flip(net(torch.flip(x, d)), d)
        return out / len(flips)
    return f


def _only_lesion_windows(predict):
    """``predict`` on the windows that hold mask voxels (channel 1), zeros for the rest: a window without mask
    voxels writes none of the voxels that are kept, so the result is the same (to float rounding) and scattered
    lesions (MS) no longer pay for the empty space of their bounding box."""
    def f(x):
        keep = x[:, 1].flatten(1).amax(1) > 0
        out = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        if keep.any():
            out[keep] = predict(x[keep]).to(x.dtype)
        return out
    return f


@torch.no_grad()
def refine_fill(net: Refiner, image, mask, model_fill, patch_fill, nlm_fill, blend, flips: int = 1) -> np.ndarray:
    """The refined fill's values over ``mask`` (all arguments whole images; the fills hold their values
    inside ``mask``). Each lesion's crop, with :data:`CONTEXT` known voxels around it, goes through the
    refiner in overlapping :data:`PATCH`^3 windows (Gaussian-weighted), its residual averaged over the
    first ``flips`` of :data:`FLIPS`."""
    from monai.inferers import sliding_window_inference

    predict = _only_lesion_windows(net if flips <= 1 else _flip_mean(net, FLIPS[:flips]))

    mask = np.asarray(mask, bool)
    out = np.asarray(blend, np.float32).copy()
    dev = next(net.parameters()).device
    for box in crops.lesion_boxes(mask, CONTEXT, 1, 1):
        parts = [crops.extract(np.asarray(a, np.float32), box)
                 for a in (image, model_fill, patch_fill, nlm_fill, blend)]
        m = crops.extract(mask, box)
        x, base = refiner_inputs(parts[0], m, *parts[1:])
        r = sliding_window_inference(torch.from_numpy(pad_to_window(x))[None].to(dev), PATCH, 4, predict,
                                     overlap=OVERLAP, mode="gaussian")
        r = r[0, 0].float().cpu().numpy()[tuple(slice(0, s) for s in base.shape)]
        crops.paste(out, box, base + r, mask)
    return out[mask]


def refine_stage(ctx, parts, settings) -> np.ndarray:
    """Stage "refine": the whole image with the model's refiner (``ctx.model.refiner``) run over the blend."""
    return ctx.whole(refine_fill(ctx.model.refiner, ctx.image, ctx.mask, parts.model, parts.patch, parts.nlm,
                                 parts.blend))
