"""Image files and bytes decoded as image viewers show them: one decoder for the command line,
the explorer's uploads and the atlas's folders.

- EXIF orientation applied (a phone photo goes to the model upright, as browsers show it).
- 16-bit and 32-bit images scaled by the range of their type, not clipped (a 16-bit PNG from a
  scientific camera is not a white image).
- Grayscale, CMYK and palette images converted to RGB.
- Transparency composited on :data:`BACKGROUND` (white, as a page behind the image).
- The first frame of an animated image, with a note.

What the decoder decided is returned as notes (:class:`Decoded`); the library never prints
them, the command line does.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

__all__ = ["BACKGROUND", "Decoded", "decode", "open_image", "read_image"]

BACKGROUND = (255, 255, 255)
"""What transparent pixels are composited on (white)."""

_ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2-8 mirrored and/or turned
# Integer modes Pillow opens high-bit-depth grayscale as, and the full scale of each.
_HIGH_BIT = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


@dataclass(frozen=True)
class Decoded:
    """image: RGB, 8 bits per channel, upright; notes: what was done that a user should know."""

    image: Image.Image
    notes: tuple[str, ...] = ()


def _gray_to_8bit(opened: Image.Image, name: str, notes: list[str]) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit L, scaled by its type's range."""
    values = np.asarray(opened)
    if opened.mode in _HIGH_BIT:
        top = _HIGH_BIT[opened.mode]
        notes.append(f"{name} is 16-bit grayscale: scaled from 0..{top} to 0..255")
        scaled = values.astype(np.float64) / top
    elif opened.mode == "F" and values.size and 0.0 <= values.min() and values.max() <= 1.0:
        notes.append(f"{name} is floating point in [0, 1]: scaled to 0..255")
        scaled = values.astype(np.float64)
    else:  # 32-bit integers: Pillow's mode for 16-bit files in some formats; then the data's range
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        if opened.mode == "I" and low >= 0 and high <= 255:
            scaled, note = values / 255.0, "0..255"
        elif opened.mode == "I" and low >= 0 and high <= 65535:
            scaled, note = values / 65535.0, "0..65535 (16-bit)"
        else:
            scaled, note = (values - low) / (high - low or 1.0), f"its own range {low:g}..{high:g}"
        notes.append(f"{name} is {'32-bit integer' if opened.mode == 'I' else 'floating point'} grayscale: "
                     f"scaled from {note} to 0..255")
    return Image.fromarray(np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8), "L")


def decode(opened: Image.Image, name: str = "the image") -> Decoded:
    """An opened Pillow image as upright 8-bit RGB, with notes (see the module's list).

    Loads the first frame's pixels; ``opened`` may be closed afterwards.
    """
    notes: list[str] = []
    frames = getattr(opened, "n_frames", 1)
    if getattr(opened, "is_animated", False) and frames > 1:
        opened.seek(0)
        notes.append(f"{name} is animated ({frames} frames): the first frame is used")
    opened.load()
    orientation = opened.getexif().get(_ORIENTATION, 1)
    upright = opened
    if orientation in range(2, 9):
        upright = ImageOps.exif_transpose(opened)
        notes.append(f"{name} turned upright by its EXIF orientation ({orientation})")
    mode = upright.mode
    if mode in _HIGH_BIT or mode in ("I", "F"):
        return Decoded(_gray_to_8bit(upright, name, notes).convert("RGB"), tuple(notes))
    if mode == "CMYK":
        notes.append(f"{name} is CMYK: converted to RGB without its colour profile")
    if upright.has_transparency_data:
        rgba = upright.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append(f"{name} has transparent pixels: composited on white")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Decoded(Image.alpha_composite(background, rgba).convert("RGB"), tuple(notes))
    return Decoded(upright.convert("RGB"), tuple(notes))


def read_image(path: Path | str) -> Decoded:
    """An image file decoded as viewers show it; InputError when it is missing or unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            return decode(opened, path.name)
    except FileNotFoundError as error:
        raise InputError(f"image {path} does not exist") from error
    except IsADirectoryError as error:
        raise InputError(f"{path} is a folder, not an image") from error
    except UnidentifiedImageError as error:
        raise InputError(f"cannot read image {path}: not an image format Pillow knows") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # truncated or corrupt data
        raise InputError(f"cannot read image {path}: {_first_line(error)}") from error


def open_image(data: bytes, formats: Sequence[str] | None = None) -> Image.Image:
    """Bytes opened lazily (no pixel decoded yet), so a caller can check the header's size first."""
    return Image.open(io.BytesIO(data), formats=formats)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else repr(error)
