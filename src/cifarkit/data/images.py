"""Single image files (PNG, JPEG, ...) as CIFAR-shaped arrays, for predicting on your own pictures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifarkit.errors import DataError

SIZE = 32


def load_image(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """(image (3, 32, 32) uint8, resized): any PIL-readable file, converted to RGB.

    Grayscale, palette and RGBA images are converted to RGB (alpha is dropped). Images of another
    size are resized to 32x32 (bicubic with antialiasing; the whole picture is kept, so a
    non-square one is squashed rather than cropped); `resized` says whether that happened.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not an image file") from None
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path} is a damaged or unsupported image ({exc})") from None
    resized = rgb.size != (SIZE, SIZE)
    if resized:
        # PIL's bicubic widens its kernel when shrinking, i.e. it antialiases.
        rgb = rgb.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    array = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    return np.ascontiguousarray(array), resized
