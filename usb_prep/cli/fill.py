"""``usb-fill`` and friends (click).  Heavy imports happen inside the commands so ``--help`` is instant."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from usb_prep.fill.settings import CONTRASTS, METHODS, FillSettings, packaged

EXIT_INPUT = 2  # bad input / usage
EXIT_FAIL = 1

_device = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                       help="Where to run; auto uses CUDA when present.")
_weights = click.option("--weights", type=click.Path(), default=None,
                        help="Weights folder (usb.json + .safetensors). Default: $USB_PREP_WEIGHTS, then the packaged "
                             "model.")
_seed = click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
                     help="Random seed (same seed, same output).")
_steps = click.option("--steps", type=click.IntRange(1, 1000), default=None,
                      help="Sampling steps (default: the model's).")
_threads = click.option("--threads", type=click.IntRange(1), default=None,
                        help="CPU threads for torch (default: torch's).")
_overwrite = click.option("--overwrite", is_flag=True, help="Replace existing outputs (image and sidecar).")
_overwrite_input = click.option("--overwrite-input", is_flag=True,
                                help="Allow an output to replace an input or its sidecar (refused otherwise).")
_quiet = click.option("--quiet", is_flag=True, help="No progress bar.")


def _fail(msg: str, code: int = EXIT_INPUT):
    ctx = click.get_current_context(silent=True)
    click.echo(f"{ctx.info_name if ctx else 'usb-fill'}: error: {msg}", err=True)
    sys.exit(code)


def _on_signal(signum, frame):
    # SIGTERM -> 143, SIGINT (Ctrl-C) -> 130, the shell's convention (click would make Ctrl-C exit 1); the exit
    # unwinds through the atomic writes, which remove their temporaries
    raise SystemExit(128 + signum)


def _run(fn):
    """Turn library errors into one-line messages and exit codes (2: input or usage, 1: a failure)."""
    import signal

    from usb_prep.io import InputError, first_line
    from usb_prep.weights import WeightsError

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return fn()
    except (InputError, WeightsError, ValueError, FileExistsError, IsADirectoryError, NotADirectoryError) as e:
        _fail(first_line(e))
    except (RuntimeError, OSError) as e:
        _fail(first_line(e), EXIT_FAIL)


def _write(result, out: Path, overwrite: bool, extra: dict):
    from usb_prep.io import save_image, sidecar_path, write_sidecar

    save_image(result.image, out, overwrite=overwrite)
    side = sidecar_path(out)
    write_sidecar(side, {**result.settings, **extra, "messages": result.messages}, overwrite=overwrite)
    for msg in result.messages:
        click.echo(msg if msg.startswith("warning: ") else f"note: {msg}", err=True)
    click.echo(f"wrote {out}")
    click.echo(f"wrote {side}")


def _setting_options(fn):
    """One option per :class:`usb_prep.fill.FillSettings` field; ``--help`` shows the packaged weights' values."""
    defaults = packaged()
    for name, kind, text, lo, hi in reversed(list(FillSettings.options())):
        opt = "--" + name.replace("_", "-")
        help = f"{text[0].upper()}{text[1:]} [packaged weights: {getattr(defaults, name)}]"
        if kind is bool:
            fn = click.option(f"{opt}/--no-{opt[2:]}", name, default=None, help=help)(fn)
            continue
        ranged = click.FloatRange(lo, hi) if kind is float else click.IntRange(lo, hi)
        fn = click.option(opt, name, type=ranged, default=None, help=help)(fn)
    return fn


@click.command("usb-fill", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("image", type=click.Path(), required=False)
@click.argument("mask", type=click.Path(), required=False)
@click.option("-o", "--output", type=click.Path(), help="Output image (.nii.gz, .nii or .mgz).")
@click.option("--method", type=click.Choice(METHODS), default="usb", show_default=True,
              help="usb: the diffusion model; wmstats / patch: classical fillers (FSL/ANTs-like, NiftySeg-like); "
                   "nlm: non-local-means patch fill (no model). Fill settings apply to usb only.")
@click.option("--contrast", type=click.Choice(["auto", *CONTRASTS], case_sensitive=False), default="auto",
              show_default=True, help="The image's contrast; auto: from its BIDS suffix (_T1w, _T2w, _FLAIR), "
                                      "its JSON sidecar, else its tissue levels (an error only when none tells).")
@click.option("--guide", type=click.Path(), default=None,
              help="Another contrast of the same subject, its lesion already filled (e.g. the filled T1w when "
                   "filling a FLAIR), aligned with IMAGE (resampled by world coordinates if its grid differs): the "
                   "patch fills match its anatomy too (setting --guide-weight). Method usb with a mask only.")
@_setting_options
@_seed
@_device
@_weights
@_threads
@click.option("--resample-mask", is_flag=True,
              help="Resample a mask on another grid onto the image (linear, threshold 0.5).")
@click.option("--mask-kind", type=click.Choice(["lesion", "artifact"]), default="lesion", show_default=True,
              help="What the mask marks; recorded in the sidecar (filling is the same).")
@_overwrite
@_overwrite_input
@_quiet
@click.option("--report", "report", type=click.Path(), default=None,
              help="Also write a visual report (self-contained HTML): summary, the largest lesions up close, "
                   "before/after, the fill against its surroundings, a methods paragraph.")
@click.option("--demo", "demo_dir", type=click.Path(), default=None,
              help="Run on a built-in demo case (MNI152 template with a painted lesion); write into this folder.")
@click.option("-v", "--verbose", count=True, help="More log output.")
def main(image, mask, output, method, contrast, guide, seed, device, weights, threads, resample_mask, mask_kind,
         overwrite, overwrite_input, quiet, report, demo_dir, verbose, **settings):
    """Fill a lesion: IMAGE (NIfTI/MGZ) and MASK (1 = lesion) -> OUTPUT.

    Voxels outside the mask are kept bit for bit, with the input's header.
    Without MASK, the lesion is found by the model and healed (mask-free
    pathology-to-healthy).  A JSON sidecar with every setting and the
    weights' sha256 is written beside OUTPUT.
    """
    logging.basicConfig(level=logging.WARNING - 10 * verbose, format="%(levelname)s %(name)s: %(message)s")
    if demo_dir:
        from usb_prep.demo import run_demo

        _run(lambda: run_demo(Path(demo_dir), overwrite=overwrite, seed=seed, device=device, weights=weights,
                              num_threads=threads, progress=not quiet, echo=click.echo, **settings))
        return
    if not image or not output:
        _fail("IMAGE and -o/--output are required (or --demo DIR); see --help")

    def go():
        from usb_prep.api import fill_lesion
        from usb_prep.io import check_image_output

        out = check_image_output(output, [image, mask, guide], overwrite=overwrite, overwrite_input=overwrite_input)
        if report:
            from usb_prep.io import check_outputs

            if not str(report).endswith((".html", ".htm")):
                raise ValueError(f"--report {report}: give an .html file name")
            check_outputs([report], [image, mask, guide], overwrite=overwrite)
        res = fill_lesion(image, mask, weights=weights, seed=seed, device=device, method=method,
                          resample_mask=resample_mask, progress=not quiet, num_threads=threads, mask_kind=mask_kind,
                          contrast=contrast, guide=guide, **settings)
        extra = {"input": str(image), "mask": str(mask) if mask else None}
        _write(res, out, overwrite or overwrite_input, extra)
        if report:
            from usb_prep.reports import write_report

            write_report(report, before=image, after=out, mask=res.mask, title=Path(str(out)).name,
                         settings={**res.settings, **extra}, messages=res.messages)
            click.echo(f"wrote {report}")

    _run(go)


@click.command("usb-embed", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("image", type=click.Path())
@click.argument("mask", type=click.Path())
@click.option("-o", "--output", type=click.Path(), required=True, help="Output image.")
@_steps
@click.option("--t-start", type=click.IntRange(0), default=None, help="Start step (default 500, as the authors).")
@_seed
@_device
@_weights
@_threads
@click.option("--resample-mask", is_flag=True, help="Resample a mask on another grid onto the image.")
@_overwrite
@_overwrite_input
@_quiet
def embed(image, mask, output, steps, t_start, seed, device, weights, threads, resample_mask, overwrite,
          overwrite_input, quiet):
    """Embed a lesion: paint MASK (1 = lesion) into the healthy IMAGE (healthy-to-pathology)."""

    def go():
        from usb_prep.api import embed_lesion
        from usb_prep.io import check_image_output

        out = check_image_output(output, [image, mask], overwrite=overwrite, overwrite_input=overwrite_input)
        res = embed_lesion(image, mask, weights=weights, steps=steps, t_start=t_start, seed=seed, device=device,
                           progress=not quiet, resample_mask=resample_mask, num_threads=threads)
        _write(res, out, overwrite or overwrite_input, {"input": str(image), "mask": str(mask)})

    _run(go)


@click.command("usb-generate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--output-dir", type=click.Path(), required=True, help="Folder for brain.nii.gz and lesion.nii.gz.")
@click.option("--mask", type=click.Path(), default=None,
              help="Generate the brain for this lesion mask instead of a pair.")
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
        from usb_prep.io import InputError, check_outputs, load_image, save_image, write_sidecar

        out = Path(output_dir)
        if out.exists() and not out.is_dir():
            raise InputError(f"output folder {out} is a file")
        if mask:
            load_image(mask, what="mask")  # a bad mask fails before the folder is made
        names = ["brain.nii.gz", "brain.json"] + ([] if mask else ["lesion.nii.gz"])
        made = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            check_outputs([out / n for n in names], [mask], overwrite=overwrite)
        except InputError:
            if made:
                out.rmdir()
            raise
        brain_p = out / "brain.nii.gz"
        settings = {"seed": seed, "steps": steps, "mask": mask}
        if mask:
            brain = api.generate_from_mask(mask, weights=weights, steps=steps, seed=seed, device=device,
                                           progress=not quiet, num_threads=threads)
            save_image(brain, brain_p, overwrite=overwrite)
        else:
            les_p = out / "lesion.nii.gz"
            brain, lesion = api.generate_pair(weights=weights, steps=steps, seed=seed, device=device,
                                              progress=not quiet, num_threads=threads)
            save_image(brain, brain_p, overwrite=overwrite)
            save_image(lesion, les_p, overwrite=overwrite)
            click.echo(f"wrote {les_p}")
        write_sidecar(out / "brain.json", settings, overwrite=overwrite)
        click.echo(f"wrote {brain_p}")

    _run(go)


if __name__ == "__main__":  # pragma: no cover
    main()
