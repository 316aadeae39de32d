"""Where and how the core runs: device, CPU threads, seeds, progress."""

from __future__ import annotations

import contextlib
import warnings

import torch

CPU_TIME_NOTE = (
    "the paper-size latent model is slow on CPU: about 2-5 s per denoiser forward pass, "
    "10-25 minutes per edit on 2 cores; run it on a GPU (--device cuda)"
)


def cpu_time_note(cfg, device: str | torch.device) -> str | None:
    """A warning text when a latent (paper-size) model is about to run on the CPU, else ``None``."""
    if cfg.mode == "latent" and torch.device(device).type == "cpu":
        return CPU_TIME_NOTE
    return None


def warn_if_slow(cfg, device: str | torch.device) -> None:
    """``warnings.warn`` :data:`CPU_TIME_NOTE` for a latent model on the CPU."""
    note = cpu_time_note(cfg, device)
    if note:
        warnings.warn(note, RuntimeWarning, stacklevel=2)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    return dev


@contextlib.contextmanager
def threads(n: int | None):
    """Temporarily use ``n`` CPU threads in torch (None: leave as is)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


class Progress:
    """One bar over a whole job made of stages (``tqdm``); a no-op when disabled."""

    def __init__(self, total: int, enabled: bool, desc: str, unit: str = "step"):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit)

    def grow(self, n: int) -> None:
        """Add ``n`` units to the total (a stage that learns its size when it starts)."""
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + int(n)
            self.bar.refresh()

    def stage(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
