"""``usb-train``: train (or resume) a USB model on prepared brains and real lesion masks.

Single process: ``usb-train --brains B --masks M --out RUN``.
Many GPUs or processes: ``torchrun --nproc_per_node 4 -m usb_prep.cli.train --brains ...``.
The fill's refiner (after the fill model): ``usb-train --stage refiner --brains B --masks M --fill-weights W
--out RUN`` (``usb_prep.train.refiner``; generates its cases, then trains beside them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(exists=True), default=None,
              help="JSON file of TrainConfig fields; command-line options override it.")
@click.option("--preset", default=None, help="Model preset: cpu (filling), cpu-gen (generation), paper, tiny.")
@click.option("--brains", type=click.Path(), default=None,
              help="Prepared brains (NAME_T1w.nii.gz + NAME_brainmask.nii.gz).")
@click.option("--masks", type=click.Path(), default=None, help="Lesion mask root (soop/, ms/, neglect/).")
@click.option("--out", type=click.Path(), default=None, help="Run folder: checkpoint, log.jsonl, weights/.")
@click.option("--iterations", type=int, default=None)
@click.option("--minutes", type=float, default=None, help="Stop (and save) after this wall-clock time.")
@click.option("--batch-size", type=int, default=None)
@click.option("--patch", type=int, default=None, help="Patch edge (patch models).")
@click.option("--lr", type=float, default=None)
@click.option("--threads", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--init-weights", type=click.Path(), default=None,
              help="Start from these weights (e.g. usb_prep/weights/default) instead of random ones.")
@click.option("--max-masks", type=int, default=None, help="Use only this many masks (quick runs).")
@click.option("--stage", type=click.Choice(["model", "refiner"]), default=None,
              help="model (default): the diffusion model; refiner: the fill's refiner, for --fill-weights.")
@click.option("--fill-weights", type=click.Path(), default=None,
              help="Refiner stage: the fill model whose fills it corrects (default: the packaged one).")
@click.option("--quiet", is_flag=True)
def main(config_file, quiet, **opts):
    """Train the paired lesion/brain diffusion model (resumes from OUT/ckpt.pt if present), or the fill's refiner."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fields = json.loads(Path(config_file).read_text()) if config_file else {}
    fields.update({k: v for k, v in opts.items() if v is not None})
    for key in ("exclude_brains", "margins", "channels"):  # JSON lists -> the dataclass's tuples
        if key in fields:
            fields[key] = tuple(fields[key])
    stage = fields.pop("stage", "model")
    if stage == "refiner":
        from usb_prep.train.refiner import RefinerConfig as Config, run
    else:
        from usb_prep.train.diffusion import TrainConfig as Config, train as run
    try:
        cfg = Config(**fields)
    except TypeError as e:  # a field of the other stage
        raise click.UsageError(f"{stage} stage: {e}") from None
    if not cfg.brains or not cfg.masks:
        raise click.UsageError("--brains and --masks are required (or in --config)")
    out = run(cfg, progress=not quiet)
    click.echo(f"{'refiner' if stage == 'refiner' else 'weights'}: {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
