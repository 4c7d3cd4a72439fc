"""Augmentation that changes over training.

Mixing: `progress` is the fraction of training done, in [0, 1]. Mixing runs at full strength
("none"), fades linearly to zero at `until` ("linear"), or fades linearly towards zero at the end of
training ("linear_to_end", alpha x (1 - progress), reference 000's formula); from `until` on it is
off ("adaptive augmentation scheduling").

Progressive resizing: early epochs train on downscaled images, which costs roughly (size/32)^2 of
the convolution work; the last epochs return to the native size the model is evaluated at.
"""

from __future__ import annotations

from cifarkit.errors import ConfigError

MIX_DECAYS = ("none", "linear", "linear_to_end")


def mix_strength(progress: float, decay: str = "none", until: float = 1.0) -> float:
    """Multiplier in [0, 1] for the mixing alphas: 0 once progress >= until."""
    if decay not in MIX_DECAYS:
        raise ConfigError(f"mix decay must be one of {', '.join(MIX_DECAYS)}, got '{decay}'")
    if not 0.0 <= until <= 1.0:
        raise ConfigError(f"mix 'until' must be a fraction of training in [0, 1], got {until}")
    if progress >= until:
        return 0.0
    if decay == "none":
        return 1.0
    if decay == "linear_to_end":
        return min(1.0, max(0.0, 1.0 - progress))
    return min(1.0, max(0.0, 1.0 - progress / until))


def resize_size_at(schedule: list[list[int]], epoch: int) -> int | None:
    """The training image side for `epoch` under [[size, until_epoch], ...]; None = native size."""
    for size, until in schedule:
        if epoch < until:
            return int(size)
    return None


__all__ = ["MIX_DECAYS", "mix_strength", "resize_size_at"]
