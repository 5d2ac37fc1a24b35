"""Images in and out: decoding what users give (robustly), canonical PNG bytes for the artifact store,
tensors for extractors, and the one resize rule.

Decoding the images a user asks to segment or gives as exemplars: every failure is one InvalidInput
line naming the file and the problem.

What is accepted and how it is decoded to 8-bit RGB:

- EXIF orientation is applied (a portrait photo stored sideways comes out upright);
- 16-bit (and 32-bit integer) grey images are scaled to 8 bits (value * 255 / 65535); float images are
  scaled from [0, 1] (values clipped);
- CMYK (and YCbCr, LAB...) are converted by Pillow;
- transparency (RGBA, LA, palette with a transparent colour) is composited on WHITE;
- palette and 1-bit images are expanded.

Refused: empty files, files that are not images, truncated or corrupt files, and images over
``MAX_PIXELS`` (80 MP; a decompression bomb is refused from its header, before decoding). That limit is
protodb's own and the only one: Pillow's (89.5 MP warning, 179 MP error) is never quoted; an image
Pillow refuses from its header before protodb sees the size is reported against ``MAX_PIXELS`` too.
"""

from __future__ import annotations

import glob
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
from PIL import Image, ImageOps, UnidentifiedImageError

from protodb.errors import InvalidInput
from protodb.lazy import lazy_import

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")

MAX_PIXELS = 80_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _over_limit(name: str, max_pixels: int, size: tuple[int, int] | None = None, pixels: int | None = None) -> InvalidInput:
    """The one message for an image over the pixel limit (protodb's limit, never Pillow's)."""
    what = f"{size[0]}x{size[1]} = {_megapixels(size[0] * size[1])}" if size else (
        _megapixels(pixels) if pixels else "larger than that")
    return InvalidInput(f"{name}: image is {what}, over the {_megapixels(max_pixels)} limit for one image; "
                        "downscale it first")


def _megapixels(n: int) -> str:
    """80 MP, 2.5 MP, or 12,288 pixels (small limits are set in tests and odd deployments)."""
    if n >= 10_000_000:
        return f"{n / 1e6:.0f} MP"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MP"
    return f"{n:,} pixels"


def _name(src) -> str:
    return "<bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode == "F":
            arr = arr * 255.0
        elif mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def load_image(src: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``src`` (a path or the file's bytes) to an upright 8-bit RGB PIL image, fully loaded.
    Raises InvalidInput (one line: the file and the problem) for anything that is not a usable image."""
    name = _name(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise InvalidInput(f"{name}: empty input (0 bytes); give an image file")
        fp = io.BytesIO(data)
    else:
        path = Path(src).expanduser()
        if path.is_symlink() and not path.exists():
            raise InvalidInput(f"{name}: a dangling or looping symbolic link")
        if not path.is_file():
            raise InvalidInput(f"{name}: file not found")
        if not os.access(path, os.R_OK):
            raise InvalidInput(f"{name}: permission denied (cannot read the file)")
        if path.stat().st_size == 0:
            raise InvalidInput(f"{name}: empty file (0 bytes); give an image file")
        fp = path
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning (over 89.5 MP) is not protodb's limit: the size is checked just
            # below, from the header, against max_pixels (nothing is decoded before that)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise _over_limit(name, max_pixels, (w, h))
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except (OSError, ValueError, KeyError, TypeError, SyntaxError):
                    pass  # unreadable EXIF: keep the stored orientation rather than refuse the image
                rgb = _to_rgb(im)
                rgb.load()
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        raise InvalidInput(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except PermissionError:
        raise InvalidInput(f"{name}: permission denied (cannot read the file)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow refused it from its header before the size check above (over 2 x its own limit): say
        # protodb's limit, with the size Pillow read when it gives one
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise _over_limit(name, max_pixels, pixels=int(found.group(1)) if found else None) from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        msg = " ".join(str(err).split()) or type(err).__name__
        raise InvalidInput(f"{name}: cannot decode image (truncated or corrupt: {msg})") from None
    return rgb


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def expand_inputs(args: list[str]) -> list[Path]:
    """Paths to segment from command-line arguments, in argument order, without duplicates: a file is taken
    as is (whatever its extension); a directory gives its image files (by extension, not recursive,
    sorted by name); anything with ``* ? [`` is a glob pattern (``**`` recurses) giving its image files,
    sorted. InvalidInput when an argument matches nothing or no image is found at all."""
    out: list[Path] = []
    seen: set[Path] = set()
    for arg in args:
        path = Path(arg).expanduser()
        if path.is_symlink() and not path.exists():
            raise InvalidInput(f"{arg}: a dangling or looping symbolic link")
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted((p for p in path.iterdir() if _is_image(p)), key=lambda p: p.name)
            if not found:
                raise InvalidInput(f"{arg}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        elif any(ch in arg for ch in "*?["):
            found = sorted(p for p in map(Path, glob.glob(str(path), recursive=True)) if _is_image(p))
            if not found:
                raise InvalidInput(f"{arg}: pattern matches no image files")
        else:
            raise InvalidInput(f"{arg}: no such file or folder")
        for p in found:
            if p not in seen:
                seen.add(p)
                out.append(p)
    if not out:
        raise InvalidInput("no input images given; pass image files, folders or glob patterns")
    return out


# ---------------------------------------------------------------------------------- stored bytes and tensors
def png_bytes(image: PIL.Image.Image | np.ndarray) -> bytes:
    """Deterministic PNG bytes (same pixels → same bytes → same sha256)."""
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """(H, W) bool → 8-bit PNG with 0/255."""
    return png_bytes((np.asarray(mask, dtype=bool).astype(np.uint8) * 255))


def attention_png(attention: np.ndarray) -> bytes:
    """(H, W) float in [0, 1] → 16-bit grayscale PNG (lossless to 1/65535)."""
    arr = np.clip(np.asarray(attention, dtype=np.float32), 0.0, 1.0)
    return png_bytes(PIL.Image.fromarray((arr * 65535.0 + 0.5).astype(np.uint16)))


def decode_attention(data: bytes) -> np.ndarray:
    """Inverse of :func:`attention_png`: (H, W) float32 in [0, 1]."""
    return np.asarray(PIL.Image.open(io.BytesIO(data)), dtype=np.float32) / 65535.0


def decode_mask(data: bytes) -> np.ndarray:
    """Inverse of :func:`mask_png`: (H, W) bool."""
    with PIL.Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L")) > 127


def decode_rgb(data: bytes) -> PIL.Image.Image:
    image = PIL.Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def to_tensor(image: PIL.Image.Image, size: tuple[int, int] | None = None):
    """RGB image → (3, H, W) float32 in [0, 1], resized (bilinear, antialiased) to ``size``=(H, W)."""
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    t = arr.permute(2, 0, 1).float().div_(255.0)
    if size is not None and tuple(t.shape[1:]) != tuple(size):
        t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        t = t.clamp_(0.0, 1.0)
    return t
