"""``usb-convert-authors``: the authors' released checkpoints -> a usb_prep weights folder.

Heavy imports (torch, MONAI) happen inside the command so ``--help`` is instant.
"""

from __future__ import annotations

import logging
import sys

import click

EXIT_INPUT = 2


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--lesion", "lesion", type=click.Path(), required=True, help="usb_lesion.pth (USB_lesion).")
@click.option("--brain", "brain", type=click.Path(), required=True, help="usb_brain.pth (USB_brain).")
@click.option("--vae", "vae", type=click.Path(), required=True, help="vae.ckpt (the autoencoder, Lightning).")
@click.option("-o", "--output-dir", "output_dir", type=click.Path(), required=True,
              help="Weights folder to write (usb.json + fill.safetensors); use it with --weights.")
@click.option("--overwrite", is_flag=True, help="Replace an existing usb.json in the folder.")
@click.option("-v", "--verbose", count=True, help="More log output.")
def main(lesion, brain, vae, output_dir, overwrite, verbose):
    """Convert the USB authors' usb_lesion.pth, usb_brain.pth and vae.ckpt into one weights folder.

    The folder holds the paper model under both roles (fill and generate), with
    the source files' names and sha256 in its usb.json.  It is a latent model
    at the paper's size: run it on a GPU (--device cuda); on a CPU an edit takes
    10-25 minutes.
    """
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s: %(message)s")
    from usb_prep.authors import convert

    try:
        out = convert(lesion, brain, vae, output_dir, overwrite=overwrite)
    except (ValueError, FileExistsError, OSError) as e:
        click.echo(f"usb-convert-authors: error: {e}", err=True)
        sys.exit(EXIT_INPUT)
    click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
