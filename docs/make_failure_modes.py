"""Run every bad input and fault in ``docs/failure-modes.md`` through the real commands and rewrite the table.

    python docs/make_failure_modes.py      # ~2 minutes; needs usb_prep installed (its console scripts)

Each row is one command line on small files this script makes (nilearn's MNI152 is not needed); the exit code
and the first line the command printed are recorded as they are, not as we hope.
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


def files(d: Path) -> dict:
    shape = (40, 48, 40)
    zz = np.indices(shape) - np.array(shape)[:, None, None, None] / 2
    r = np.sqrt(((zz / np.array([16, 20, 16])[:, None, None, None]) ** 2).sum(0))
    img = np.where(r < 1, 800 + 200 * np.cos(zz[0] / 3), 0).astype(np.float32)
    les = ((zz[0] - 4) ** 2 + zz[1] ** 2 + zz[2] ** 2 < 16).astype(np.uint8)
    aff = np.diag([1.0, 1, 1, 1])
    p = {}

    def save(name, data, affine=aff):
        p[name] = d / name
        nib.save(nib.Nifti1Image(data, affine), str(p[name]))

    save("t1.nii.gz", img)
    save("mask.nii.gz", les)
    save("empty.nii.gz", np.zeros_like(les))
    save("soft.nii.gz", les * 0.7 + 0.1 * (r < 0.5))
    save("label255.nii.gz", les * 255)
    save("other_shape.nii.gz", les[:-2])
    moved = aff.copy()
    moved[0, 3] = 2.5
    save("other_affine.nii.gz", les, moved)
    save("t1_moved.nii.gz", img, moved)
    save("whole.nii.gz", (img > 0).astype(np.uint8))
    air = np.zeros_like(les)
    air[:3, :3, :3] = 1
    save("air.nii.gz", air)
    save("img4d.nii.gz", np.stack([img, img], -1))
    nan = img.copy()
    nan[20, 20, 20] = np.nan
    save("nan.nii.gz", nan)
    save("negative.nii.gz", img - 300)
    save("plain.nii", img)
    p["trunc.nii"] = d / "trunc.nii"
    p["trunc.nii"].write_bytes(p["plain.nii"].read_bytes()[:20000])
    p["notes.txt"] = d / "notes.txt"
    p["notes.txt"].write_text("not an image")
    (d / "sub-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3}))
    shutil.copy(p["t1.nii.gz"], d / "sub-01_T1w.nii.gz")
    (d / "exists.nii.gz").write_bytes(b"x")
    (d / "side.json").write_text("{}")
    w = d / "w_nosha"
    shutil.copytree(Path(__import__("usb_prep").__file__).parent / "weights" / "default", w)
    man = json.loads((w / "usb.json").read_text())
    del man["models"]["fill"]["sha256"]
    (w / "usb.json").write_text(json.dumps(man))
    w2 = d / "w_corrupt"
    shutil.copytree(Path(__import__("usb_prep").__file__).parent / "weights" / "default", w2)
    with open(w2 / "fill.safetensors", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    bids = d / "bids"
    (bids / "sub-01/anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    shutil.copy(p["t1.nii.gz"], bids / "sub-01/anat/sub-01_T1w.nii.gz")
    (d / "nobids").mkdir()
    for name, grid in (("bids_masked", les), ("bids_other", les), ("bids_badgrid", les[:-2])):
        root = d / name  # a subject with a mask (bids_badgrid: the mask on another grid, so its fill fails)
        (root / "sub-01/anat").mkdir(parents=True)
        (root / "dataset_description.json").write_text(json.dumps({"Name": name, "BIDSVersion": "1.10.0"}))
        shutil.copy(p["t1.nii.gz"], root / "sub-01/anat/sub-01_T1w.nii.gz")
        nib.save(nib.Nifti1Image(grid, aff), str(root / "sub-01/anat/sub-01_label-lesion_roi.nii.gz"))
    save("guide_zero.nii.gz", np.zeros_like(img))
    far = aff.copy()
    far[0, 3] = 500
    save("guide_far.nii.gz", img, far)
    save("guide_shifted.nii.gz", np.roll(img, 3, axis=1))
    save("guide_lesioned.nii.gz", np.where(les > 0, 0.2 * img, img).astype(np.float32))
    return p


def cases(d: Path, p: dict):
    q = ["--quiet", "--device", "cpu", "--threads", "1"]
    fill = ["usb-fill", str(p["t1.nii.gz"]), str(p["mask.nii.gz"])]

    def prep(bids, out):
        return ["usb-prep", str(d / bids), str(d / out), "participant", "-w", str(d / "work2"), "--method",
                "wmstats", "--nprocs", "1"]

    o = ["-o", str(d / "out.nii.gz")]
    return [
        ("image missing", ["usb-fill", str(d / "none.nii.gz"), str(p["mask.nii.gz"]), *o, *q]),
        ("a folder as IMAGE", ["usb-fill", str(d), str(p["mask.nii.gz"]), *o, *q]),
        ("not NIfTI/MGZ", ["usb-fill", str(p["notes.txt"]), str(p["mask.nii.gz"]), *o, *q]),
        ("truncated .nii", ["usb-fill", str(p["trunc.nii"]), str(p["mask.nii.gz"]), *o, *q]),
        ("4D image", ["usb-fill", str(p["img4d.nii.gz"]), str(p["mask.nii.gz"]), *o, *q]),
        ("NaN voxels", ["usb-fill", str(p["nan.nii.gz"]), str(p["mask.nii.gz"]), *o, *q]),
        ("mask of another shape", ["usb-fill", str(p["t1.nii.gz"]), str(p["other_shape.nii.gz"]), *o, *q]),
        ("mask with another affine", ["usb-fill", str(p["t1.nii.gz"]), str(p["other_affine.nii.gz"]), *o, *q]),
        ("empty mask (input copied)", ["usb-fill", str(p["t1.nii.gz"]), str(p["empty.nii.gz"]), "-o",
                                       str(d / "o_empty.nii.gz"), *q]),
        ("non-binary mask (thresholded)", ["usb-fill", str(p["t1.nii.gz"]), str(p["soft.nii.gz"]), "-o",
                                           str(d / "o_soft.nii.gz"), "--method", "wmstats", *q]),
        ("0/255 label mask", ["usb-fill", str(p["t1.nii.gz"]), str(p["label255.nii.gz"]), "-o",
                              str(d / "o_255.nii.gz"), "--method", "wmstats", *q]),
        ("negative intensities (shifted)", ["usb-fill", str(p["negative.nii.gz"]), str(p["mask.nii.gz"]), "-o",
                                            str(d / "o_neg.nii.gz"), "--contrast", "t1w", *q]),
        ("contrast not told (no BIDS suffix, no sidecar)", ["usb-fill", str(p["plain.nii"]), str(p["mask.nii.gz"]),
                                                            *o, *q]),
        ("output exists", [*fill, "-o", str(d / "exists.nii.gz"), *q]),
        ("output's sidecar exists", [*fill, "-o", str(d / "side.nii.gz"), *q]),
        ("output beside the input replaces its sidecar", ["usb-fill", str(d / "sub-01_T1w.nii.gz"),
                                                          str(p["mask.nii.gz"]), "-o", str(d / "sub-01_T1w.nii"),
                                                          "--overwrite", *q]),
        ("output is the input", [*fill, "-o", str(p["t1.nii.gz"]), "--overwrite", *q]),
        ("output folder missing", [*fill, "-o", str(d / "no/out.nii.gz"), *q]),
        ("output name without .nii/.nii.gz/.mgz", [*fill, "-o", str(d / "out.png"), *q]),
        ("--steps 0", [*fill, *o, "--steps", "0", *q]),
        ("--samples 0", [*fill, *o, "--samples", "0", *q]),
        ("--threads 0", [*fill, *o, "--threads", "0", "--quiet"]),
        ("--threads -1", [*fill, *o, "--threads", "-1", "--quiet"]),
        ("--margin -1", [*fill, *o, "--margin", "-1", *q]),
        ("--seed -1", [*fill, *o, "--seed", "-1", *q]),
        ("--t-start 99999", [*fill, *o, "--t-start", "99999", *q]),
        ("--patch-weight 0.6 --nlm-weight 0.6", [*fill, *o, "--patch-weight", "0.6", "--nlm-weight", "0.6", *q]),
        ("fill setting with a classical method", [*fill, *o, "--method", "wmstats", "--margin", "1", *q]),
        ("--guide missing", [*fill, *o, "--guide", str(d / "none.nii.gz"), *q]),
        ("--guide 4D", [*fill, *o, "--guide", str(p["img4d.nii.gz"]), *q]),
        ("--guide with a classical method", [*fill, *o, "--method", "wmstats", "--guide", str(p["t1.nii.gz"]), *q]),
        ("--guide on another grid (resampled)", [*fill, "-o", str(d / "o_guide.nii.gz"), "--guide",
                                                 str(p["t1_moved.nii.gz"]), "--contrast", "t1w", *q]),
        ("--guide empty (all zero)", [*fill, *o, "--guide", str(p["guide_zero.nii.gz"]), "--contrast", "t1w", *q]),
        ("--guide 500 mm away (no overlap)", [*fill, *o, "--guide", str(p["guide_far.nii.gz"]), "--contrast", "t1w",
                                              *q]),
        ("--guide still lesioned (left out, said)", [*fill, "-o", str(d / "o_g1.nii.gz"), "--guide",
                                                     str(p["guide_lesioned.nii.gz"]), "--contrast", "t1w", *q]),
        ("--guide shifted 3 voxels (left out, said)", [*fill, "-o", str(d / "o_g2.nii.gz"), "--guide",
                                                       str(p["guide_shifted.nii.gz"]), "--contrast", "t1w", *q]),
        ("--device cuda without CUDA", [*fill, *o, "--device", "cuda", "--quiet"]),
        ("mask covering the whole brain", ["usb-fill", str(p["t1.nii.gz"]), str(p["whole.nii.gz"]), *o,
                                           "--method", "wmstats", *q]),
        ("mask outside the head", ["usb-fill", str(p["t1.nii.gz"]), str(p["air.nii.gz"]), *o, *q]),
        ("--weights folder without usb.json", [*fill, *o, "--weights", str(d), *q]),
        ("weights manifest without sha256", [*fill, *o, "--weights", str(d / "w_nosha"), *q]),
        ("weights file corrupt (checksum)", [*fill, *o, "--weights", str(d / "w_corrupt"), *q]),
        ("usb-embed: image missing", ["usb-embed", str(d / "none.nii.gz"), str(p["mask.nii.gz"]), *o]),
        ("usb-generate: mask missing", ["usb-generate", "-o", str(d / "gen"), "--mask", str(d / "none.nii.gz")]),
        ("usb-generate: -o is a file", ["usb-generate", "-o", str(p["t1.nii.gz"])]),
        ("usb-prep: not a BIDS folder", ["usb-prep", str(d / "nobids"), str(d / "deriv"), "participant"]),
        ("usb-prep: unknown participant", ["usb-prep", str(d / "bids"), str(d / "deriv"), "participant",
                                           "--participant-label", "99", "-w", str(d / "work")]),
        ("usb-prep: --steps 0", ["usb-prep", str(d / "bids"), str(d / "deriv"), "participant", "--steps", "0",
                                 "-w", str(d / "work")]),
        ("usb-prep: nothing to run (no mask)", ["usb-prep", str(d / "bids"), str(d / "deriv"), "participant",
                                                "-w", str(d / "work")]),
        ("usb-prep: --filled-dataset is the output folder", [*prep("bids_masked", "deriv2"), "--filled-dataset",
                                                             str(d / "deriv2")]),
        ("usb-prep: --filled-dataset inside the work folder", [*prep("bids_masked", "deriv2"), "--filled-dataset",
                                                               str(d / "work2/fd")]),
        ("usb-prep: a filled dataset (wmstats)", [*prep("bids_masked", "deriv2"), "--filled-dataset", str(d / "fd")]),
        ("usb-prep: --filled-dataset written from another input", [*prep("bids_other", "deriv3"), "--filled-dataset",
                                                                   str(d / "fd")]),
        ("usb-prep: a subject's fill fails (mask on another grid)", prep("bids_badgrid", "deriv4")),
        ("usb-prep: --downstream ants without --template", ["usb-prep", str(d / "bids"), str(d / "deriv"),
                                                            "participant", "--downstream", "ants"]),
    ]


def main():
    bindir = Path(sys.executable).parent
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        p = files(d)
        for what, cmd in cases(d, p):
            r = subprocess.run([str(bindir / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=600)
            text = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip() and not ln.startswith("wrote ")]
            text = [ln for ln in text if not ln.startswith(("\t", " ")) and " nipype." not in ln]  # Nipype's log
            errs = [ln for ln in text if "error" in ln.lower() and "some nodes failed" not in ln]  # click's usage errors: Usage / Try / Error lines
            first = (errs or text or ["(nothing printed)"])[0].replace(tmp, "…").replace("|", "\\|")
            rows.append(f"| {what} | `{cmd[0]}` | {r.returncode} | {len(text)} | {first[:200]} |")
            print(rows[-1], flush=True)
    lines = ["# Bad inputs and faults: what each command does", "",
             "Made by `python docs/make_failure_modes.py` (every row is a real run of the installed command on files "
             "the script makes; paths shortened to …). Exit codes: 0 done (notes on stderr), 1 a failure of the run, "
             "2 bad input or usage (nothing written), 3 (usb-prep) a missing dependency. Thresholds: a mask over 50% "
             "of the image's foreground is refused, one whose 2-voxel surroundings are less than 5% foreground is "
             "refused as outside the head, one over 200 ml is announced.", "",
             "| case | command | exit | lines | the error line (else the first line) printed |", "|---|---|---|---|---|", *rows, "",
             "Also covered by tests, not by a row here: SIGTERM during a fill (exit 143, no output, no temporary "
             "left), temporaries left by a killed run (removed by the next write), output modes (0666 less the umask), "
             "usb-prep's rerun after a failed fill (the subject is reported failed, exit 1, its stale outputs removed and "
             "its fill withdrawn from the filled dataset), a rerun with fewer subjects (their fills kept in the filled "
             "dataset; one changed since is withdrawn and named), usb-prep's output modes, Ctrl-C (130) and SIGTERM "
             "(143) ending every worker of usb-prep, a second run on a busy work folder (exit 2), Nipype's SLURM "
             "plugin without $LOGNAME and a real one-node SLURM run where one is started "
             "(tests/test_handoff.py), no network access on import (NIPYPE_NO_ET)."]
    (HERE / "failure-modes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
