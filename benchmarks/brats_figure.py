"""Truth / voided input / fills of the BraTS inpainting case, three planes through the healthy region's largest
piece, from a ``python -m benchmarks run --brats-only`` output folder (its ``brats/*.nii.gz``).

    python -m benchmarks brats-figure --data DATA --run OUT --png benchmarks/results/fig_brats.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from . import paths
from .run_benchmark import largest_piece

LABELS = {"usb_compare": "usb_prep, without the outline prior", "usb": "usb_prep, with the outline prior",
          "laplace": "Laplace"}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks brats-figure", description=__doc__.split("\n\n")[0])
    paths.add(p, "data")
    p.add_argument("--run", required=True, help="the --out folder of a --brats-only run")
    p.add_argument("--png", required=True)
    a = p.parse_args(argv)
    d = Path(a.data) / "patients" / "brats_gli_00001"
    truth = nib.load(str(d / "t1n.nii.gz")).get_fdata()
    voided = nib.load(str(d / "t1n_voided.nii.gz")).get_fdata()
    healthy = nib.load(str(Path(a.run) / "brats" / "healthy_mask.nii.gz")).get_fdata() > 0.5
    c = [int(v) for v in np.round(ndimage.center_of_mass(largest_piece(healthy)[0]))]
    cols = [("truth", truth), ("voided input", voided)]
    cols += [(LABELS[k], nib.load(str(Path(a.run) / "brats" / f"{k}.nii.gz")).get_fdata())
             for k in LABELS if (Path(a.run) / "brats" / f"{k}.nii.gz").exists()]
    three_planes(cols, healthy, c, np.percentile(truth[truth > 0], 99.5),
                 "BraTS 2023 inpainting case: the scored region outlined in red", a.png)
    print(f"wrote {a.png}")


def three_planes(cols, contour, centre, vmax, title, png):
    """A figure of ``cols`` (``(name, volume)``), one column each, three planes through ``centre``, ``contour``
    outlined in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(cols), figsize=(2.6 * len(cols), 7.8), facecolor="black")
    for j, (name, img) in enumerate(cols):
        for i, axis in enumerate((0, 1, 2)):
            sl = [slice(None)] * 3
            sl[axis] = centre[axis]
            ax = axes[i, j]
            ax.imshow(np.rot90(img[tuple(sl)]), cmap="gray", vmin=0, vmax=vmax)
            ax.contour(np.rot90(contour[tuple(sl)]), [0.5], colors="#ff3030", linewidths=0.6)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, color="white", fontsize=8)
    fig.suptitle(title, color="white", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=80, facecolor="black")
    plt.close(fig)


if __name__ == "__main__":
    main()
