"""Deterministic train / held-out splits of lesion masks and healthy brains.

The split depends only on file *names* (not paths, not content), so it is
identical on every machine and stable when folders move.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

#: Healthy individuals never used for training (benchmarks only).
HELDOUT_BRAINS: tuple[str, ...] = ("otsu_head",)

#: Lesion-mask sub-folders under the lesion-mask root.
MASK_COHORTS: tuple[str, ...] = ("soop", "ms", "neglect")

_HELDOUT_MODULUS = 5  # 1 in 5 names -> about 20 % held out


def is_heldout_mask(path: str | Path) -> bool:
    """Return True when a lesion mask belongs to the held-out split.

    Parameters
    ----------
    path : str or Path
        Path or bare file name of the mask; only the file name is hashed.

    Returns
    -------
    bool
        ``int(sha1(name), 16) % 5 == 0`` (about 20 % of names).
    """
    name = Path(path).name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()
    return int(digest, 16) % _HELDOUT_MODULUS == 0


def list_masks(root: str | Path, split: str = "train") -> list[Path]:
    """List lesion masks ``root/{soop,ms,neglect}/*.nii*`` of one split.

    Parameters
    ----------
    root : str or Path
        Folder holding the cohort sub-folders (missing ones are skipped).
    split : {"train", "heldout", "all"}
        Which part to return.

    Returns
    -------
    list of Path
        Sorted paths (sorted for reproducibility across file systems).
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    root = Path(root)
    paths: list[Path] = []
    for cohort in MASK_COHORTS:
        paths.extend(sorted((root / cohort).glob("*.nii*")))
    if split == "all":
        return paths
    want_heldout = split == "heldout"
    return [p for p in paths if is_heldout_mask(p) == want_heldout]
