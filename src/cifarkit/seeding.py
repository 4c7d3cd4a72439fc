"""One seed drives everything: every random stream is derived from (seed, purpose, epoch, batch).

Because each batch's randomness is a pure function of its position, a run resumed at any step
draws exactly what the uninterrupted run drew -- no generator state has to be saved.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and any labels (stable across processes and platforms)."""
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**63 - 1)


def make_generator(seed: int, device: torch.device | str, *parts: object) -> torch.Generator:
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(derive_seed(seed, *parts))
    return generator


def seed_everything(seed: int) -> None:
    """Seed the global generators (model init, dropout) for code that does not take a generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
