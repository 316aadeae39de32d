"""``python -m benchmarks COMMAND [options]``: one entry point for every benchmark and study.

Each command is a module here with a ``main(argv)``; ``python -m benchmarks COMMAND --help`` shows its options.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # command -> (module, what it does)
    "run": ("run_benchmark", "the headline: usb_prep vs NiftySeg, patch and Laplace on held-out brains, and BraTS"),
    "validate": ("validation", "validation masks (where settings are chosen; never the benchmark's cases)"),
    "contrasts": ("contrasts", "T2w and FLAIR: painted lesions in real scans, every method in one run"),
    "real-patients": ("real_patients", "real patients' own lesions against the tissue around them"),
    "brats-figure": ("brats_figure", "truth / input / fills of the BraTS case, from a --brats-only run"),
    "contrast-guess": ("contrast_guess", "the contrast read from the image, on every real scan"),
    "speed": ("speed", "denoiser seconds per pass and one 20 ml fill, per stage"),
    "generation": ("generation", "generated brains against real ones"),
    "downstream": ("downstream", "a fill's effect on registration and tissue volumes (--check: one case)"),
    "prepare": ("prepare_data", "prepare brains to MNI 1 mm (the benchmark's and the training cohort)"),
    "bundle": ("bundle", "bundle training runs into one weights folder"),
    "train-device": ("train_device", "pack the cohort into one file; train fill variants on one GPU"),
}
STUDIES = {  # study -> (module, what it decided)
    "background-tolerance": ("studies.background_tolerance", "keep_background's tolerance"),
    "depth-smooth": ("studies.depth_smooth", "smoothing the deep inside of a fill (not taken)"),
    "xl-parts": ("studies.xl_parts", "each part of the fill on masks of 150-500 ml"),
    "prior-outline": ("studies.prior_outline", "the outline prior's variant for masks that reach past the brain"),
    "tissue-prior": ("studies.tissue_prior", "the tissue prior (registered template's tissue maps) on thick strokes"),
    "prior-check": ("studies.prior_check", "the outline prior on the benchmark's cases (why it is off by default)"),
}


def usage() -> str:
    lines = ["usage: python -m benchmarks COMMAND [options]   (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<22}{what}" for name, (_, what) in COMMANDS.items()]
    lines += ["  study NAME [options]  one of the studies:"]
    lines += [f"    {name:<22}{what}" for name, (_, what) in STUDIES.items()]
    lines += ["", "inputs: --data / $USB_PREP_DATA (the shared data folder), --brains / $USB_PREP_BRAINS (prepared "
              "brains), --runs / $USB_PREP_RUNS (study caches)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    table = COMMANDS
    if name == "study":
        if not rest or rest[0] not in STUDIES:
            print(usage(), file=sys.stderr)
            return 2
        name, rest, table = rest[0], rest[1:], STUDIES
    if name not in table:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__package__ or 'benchmarks'}.{table[name][0]}")
    sys.argv = [f"python -m benchmarks {argv[0]}{' ' + name if table is STUDIES else ''}", *rest]
    result = module.main(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
