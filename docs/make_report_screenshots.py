"""The README's report pictures: a two-subject BIDS dataset made from the demo case (nilearn's MNI152 with a
painted lesion; the second subject's mask on another grid, so it fails), run through usb-prep with the packaged
weights, its pages rendered by headless Chromium.

    python docs/make_report_screenshots.py      # ~2 minutes; needs usb_prep installed and Debian's chromium
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent


def shoot(page: Path, png: Path, size: str) -> None:
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", f"--window-size={size}", page.as_uri()], check=True, capture_output=True)


def main() -> None:
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        subprocess.run([str(bindir / "usb-fill"), "--demo", str(d / "demo"), "--quiet"], check=True)
        bids = d / "bids"
        (bids / "sub-01/anat").mkdir(parents=True)
        (bids / "sub-02/anat").mkdir(parents=True)
        (bids / "dataset_description.json").write_text(json.dumps({"Name": "demo", "BIDSVersion": "1.10.0"}))
        for sub in ("01", "02"):
            shutil.copy(d / "demo/demo_T1w_lesion.nii.gz", bids / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz")
        shutil.copy(d / "demo/demo_lesion_mask.nii.gz", bids / "sub-01/anat/sub-01_label-lesion_roi.nii.gz")
        m = nib.load(str(d / "demo/demo_lesion_mask.nii.gz"))
        nib.save(nib.Nifti1Image(np.asarray(m.dataobj)[:-4], m.affine),
                 str(bids / "sub-02/anat/sub-02_label-lesion_roi.nii.gz"))
        out = d / "out"
        subprocess.run([str(bindir / "usb-prep"), str(bids), str(out), "participant", "-w", str(d / "work"),
                        "--nprocs", "1"], check=False)
        shoot(out / "sub-01.html", HERE / "images" / "report_subject.png", "1250,1500")
        shoot(out / "usb_prep.html", HERE / "images" / "report_dataset.png", "1100,330")


if __name__ == "__main__":
    main()
