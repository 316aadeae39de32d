"""``usb-fill`` and friends (click).  Heavy imports happen inside the commands so ``--help`` is instant."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

EXIT_INPUT = 2  # bad input / usage
EXIT_FAIL = 1

_device = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                       help="Where to run; auto uses CUDA when present.")
_weights = click.option("--weights", type=click.Path(), default=None,
                        help="Weights folder (usb.json + .safetensors). Default: $USB_PREP_WEIGHTS, then the packaged model.")
_seed = click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same output).")
_steps = click.option("--steps", type=int, default=None, help="Sampling steps (default: the model's).")
_threads = click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's).")
_overwrite = click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
_quiet = click.option("--quiet", is_flag=True, help="No progress bar.")


def _fail(msg: str, code: int = EXIT_INPUT):
    click.echo(f"usb-fill: error: {msg}", err=True)
    sys.exit(code)


def _run(fn):
    """Turn library errors into one-line messages and exit codes."""
    from usb_prep.io import InputError
    from usb_prep.weights import WeightsError

    try:
        return fn()
    except (InputError, WeightsError, ValueError, FileExistsError) as e:
        _fail(str(e))
    except RuntimeError as e:
        _fail(str(e), EXIT_FAIL)


def _write(result, out: Path, overwrite: bool, extra: dict):
    from usb_prep.io import save_image, sidecar_path, write_sidecar

    save_image(result.image, out, overwrite=overwrite)
    side = sidecar_path(out)
    write_sidecar(side, {**result.settings, **extra, "messages": result.messages})
    for msg in result.messages:
        click.echo(f"note: {msg}", err=True)
    click.echo(f"wrote {out}")
    click.echo(f"wrote {side}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("image", type=click.Path(), required=False)
@click.argument("mask", type=click.Path(), required=False)
@click.option("-o", "--output", type=click.Path(), help="Output image (.nii.gz, .nii or .mgz).")
@click.option("--method", type=click.Choice(["usb", "wmstats", "patch", "nlm"]), default="usb", show_default=True,
              help="usb: the diffusion model; wmstats / patch: classical fillers (FSL/ANTs-like, NiftySeg-like); "
                   "nlm: non-local-means patch fill (no model).")
@_steps
@click.option("--t-start", type=int, default=None, help="Diffusion step to start editing from (default: the model's).")
@click.option("--margin", type=int, default=None,
              help="Voxels around the mask also hidden from the model (default: the model's; use 1-2 for tight masks).")
@click.option("--samples", type=int, default=None, help="Average of this many fills (default: the model's).")
@click.option("--patch-weight", type=click.FloatRange(0, 1), default=None,
              help="Share of the classical patch fill averaged into the model's (default: the model's; 0: model only).")
@click.option("--nlm-weight", type=click.FloatRange(0, 1), default=None,
              help="Share of the non-local-means patch fill averaged in (default: the model's; 0: none).")
@click.option("--nlm-passes", type=click.IntRange(1, 5), default=None,
              help="Non-local-means passes, each guided by the previous one's fill (default: the model's).")
@click.option("--nlm-mirror/--no-nlm-mirror", default=None,
              help="Non-local-means candidates also from the brain mirrored across the midline (default: the model's).")
@click.option("--patch-mirror/--no-patch-mirror", default=None,
              help="Patch-fill candidates also from the brain mirrored across the midline (default: the model's).")
@click.option("--smooth", type=click.FloatRange(0, 3), default=None,
              help="Gaussian sigma (voxels) smoothing the final fill (default: the model's; 0: none).")
@click.option("--no-refine", is_flag=True, help="Skip the weights' refiner (the fill's last stage, where they ship one).")
@_seed
@_device
@_weights
@_threads
@click.option("--resample-mask", is_flag=True, help="Resample a mask on another grid onto the image (linear, threshold 0.5).")
@click.option("--mask-kind", type=click.Choice(["lesion", "artifact"]), default="lesion", show_default=True,
              help="What the mask marks; recorded in the sidecar (filling is the same).")
@_overwrite
@_quiet
@click.option("--demo", "demo_dir", type=click.Path(), default=None,
              help="Run on a built-in demo case (MNI152 template with a painted lesion); write into this folder.")
@click.option("-v", "--verbose", count=True, help="More log output.")
def main(image, mask, output, method, steps, t_start, margin, samples, patch_weight, nlm_weight, nlm_passes, nlm_mirror,
         patch_mirror, smooth, no_refine, seed, device, weights, threads, resample_mask, mask_kind, overwrite, quiet, demo_dir, verbose):
    """Fill a lesion: IMAGE (NIfTI/MGZ) and MASK (1 = lesion) -> OUTPUT.

    Voxels outside the mask are kept bit for bit, with the input's header.
    Without MASK, the lesion is found by the model and healed (mask-free
    pathology-to-healthy).  A JSON sidecar with every setting and the
    weights' sha256 is written beside OUTPUT.
    """
    logging.basicConfig(level=logging.WARNING - 10 * verbose, format="%(levelname)s %(name)s: %(message)s")
    if demo_dir:
        from usb_prep.demo import run_demo

        _run(lambda: run_demo(Path(demo_dir), overwrite=overwrite, seed=seed, steps=steps, device=device,
                              weights=weights, num_threads=threads, progress=not quiet, echo=click.echo))
        return
    if not image or not output:
        _fail("IMAGE and -o/--output are required (or --demo DIR); see --help")

    def go():
        from usb_prep.api import fill_lesion
        from usb_prep.io import check_output

        out = check_output(output, overwrite=overwrite)  # fail before any work
        res = fill_lesion(image, mask, weights=weights, steps=steps, t_start=t_start, seed=seed, device=device,
                          method=method, resample_mask=resample_mask, progress=not quiet, num_threads=threads,
                          mask_kind=mask_kind, margin=margin, samples=samples, patch_weight=patch_weight,
                          nlm_weight=nlm_weight, nlm_passes=nlm_passes, nlm_mirror=nlm_mirror,
                          patch_mirror=patch_mirror, smooth=smooth, refine=False if no_refine else None)
        _write(res, out, overwrite, {"input": str(image), "mask": str(mask) if mask else None})

    _run(go)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("image", type=click.Path())
@click.argument("mask", type=click.Path())
@click.option("-o", "--output", type=click.Path(), required=True, help="Output image.")
@_steps
@click.option("--t-start", type=int, default=None, help="Start step (default 500, as the authors).")
@_seed
@_device
@_weights
@_threads
@click.option("--resample-mask", is_flag=True, help="Resample a mask on another grid onto the image.")
@_overwrite
@_quiet
def embed(image, mask, output, steps, t_start, seed, device, weights, threads, resample_mask, overwrite, quiet):
    """Embed a lesion: paint MASK (1 = lesion) into the healthy IMAGE (healthy-to-pathology)."""

    def go():
        from usb_prep.api import embed_lesion
        from usb_prep.io import check_output

        out = check_output(output, overwrite=overwrite)
        res = embed_lesion(image, mask, weights=weights, steps=steps, t_start=t_start, seed=seed, device=device,
                           progress=not quiet, resample_mask=resample_mask, num_threads=threads)
        _write(res, out, overwrite, {"input": str(image), "mask": str(mask)})

    _run(go)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--output-dir", type=click.Path(), required=True, help="Folder for brain.nii.gz and lesion.nii.gz.")
@click.option("--mask", type=click.Path(), default=None, help="Generate the brain for this lesion mask instead of a pair.")
@_steps
@_seed
@_device
@_weights
@_threads
@_overwrite
@_quiet
def generate(output_dir, mask, steps, seed, device, weights, threads, overwrite, quiet):
    """Generate a lesion/brain pair (unconditional) or a brain from a given lesion mask."""

    def go():
        from usb_prep import api
        from usb_prep.io import check_output, save_image, write_sidecar

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        brain_p = check_output(out / "brain.nii.gz", overwrite=overwrite)
        settings = {"seed": seed, "steps": steps, "mask": mask}
        if mask:
            brain = api.generate_from_mask(mask, weights=weights, steps=steps, seed=seed, device=device,
                                           progress=not quiet, num_threads=threads)
            save_image(brain, brain_p, overwrite=overwrite)
        else:
            les_p = check_output(out / "lesion.nii.gz", overwrite=overwrite)
            brain, lesion = api.generate_pair(weights=weights, steps=steps, seed=seed, device=device,
                                              progress=not quiet, num_threads=threads)
            save_image(brain, brain_p, overwrite=overwrite)
            save_image(lesion, les_p, overwrite=overwrite)
            click.echo(f"wrote {les_p}")
        write_sidecar(out / "brain.json", settings)
        click.echo(f"wrote {brain_p}")

    _run(go)


if __name__ == "__main__":  # pragma: no cover
    main()
