"""How strong batch mixing (MixUp / CutMix) is at a given point of training.

`progress` is the fraction of training done, in [0, 1]. Mixing runs at full strength, or fades
linearly to zero, until `until`; from then on it is off ("adaptive augmentation scheduling").
"""

from __future__ import annotations

from cifarkit.errors import ConfigError

MIX_DECAYS = ("none", "linear")


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
    return min(1.0, max(0.0, 1.0 - progress / until))


__all__ = ["MIX_DECAYS", "mix_strength"]
