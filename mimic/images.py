"""Images in: open safely, make upright RGB, resize, normalise for CLIP.

The authors' pipeline: PIL open, resize to 224x224 with LANCZOS, then the CLIP image processor
(shortest side 224, centre crop 224, CLIP mean/std). A missing or unreadable image becomes an all-zero
pixel tensor so that the model still runs. We add what users need and the benchmarks do not notice
(their images are upright RGB JPEGs): conversion to RGB (grayscale, CMYK, 16-bit, palette, alpha on
white), EXIF orientation, the first frame of animations, and a pixel-count limit that rejects
decompression bombs from the header, before anything is decoded.
"""
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

log = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000  # about 8000 x 8000; a phone photo is 12-50 MP
MAX_BYTES = 50 * 1024 * 1024
# PIL's own guard stays on, further out: ours (from the header, with the size in the message) comes first.
Image.MAX_IMAGE_PIXELS = 16 * MAX_PIXELS


class ImageError(ValueError):
    """An image that cannot be used, with a message a person understands."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: scale to 8 bits instead of clipping everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = max(float(array.max() - array.min()), 1e-12)
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _peek(source, size: int = 256) -> bytes:
    if isinstance(source, io.BytesIO):
        return source.getvalue()[:size]
    with open(source, "rb") as f:
        return f.read(size)


def open_image(source) -> Image.Image:
    """A path, bytes or PIL image -> an upright RGB PIL image, or ImageError saying why not."""
    if isinstance(source, Image.Image):
        image = source
    else:
        name = os.path.basename(str(source)) if isinstance(source, (str, Path)) else "the image"
        if isinstance(source, (str, Path)):
            if not os.path.isfile(source):
                raise ImageError(f"{name}: file not found")
            size = os.path.getsize(source)
            if size == 0:
                raise ImageError(f"{name}: the file is empty (0 bytes)")
            if size > MAX_BYTES:
                raise ImageError(f"{name}: the file is larger than {MAX_BYTES // 2**20} MB")
        elif isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageError("the image is empty (0 bytes)")
            source = io.BytesIO(source)
        head = _peek(source)
        if head.lstrip().startswith((b"<svg", b"<?xml")) or name.lower().endswith(".svg"):
            raise ImageError(f"{name}: SVG drawings are not supported; export the picture as PNG or JPEG")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(source)
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(f"{name}: {image.width} x {image.height} pixels is more than the "
                                     f"{MAX_PIXELS // 1_000_000} megapixels accepted")
                image.seek(0)  # first frame of an animation
                image.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name}: the image is far larger than the {MAX_PIXELS // 1_000_000} megapixels accepted")
        except Image.UnidentifiedImageError:
            raise ImageError(f"{name}: not an image PIL can read (JPEG, PNG, GIF, WebP, BMP, TIFF...)")
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"{name}: the image file is damaged or truncated ({e})")
    if image.width < 1 or image.height < 1:
        raise ImageError("the image has no pixels")
    try:
        return _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError) as e:
        raise ImageError(f"could not convert the image to RGB ({e})")


def load_image_processor(name_or_path: str) -> CLIPImageProcessorPil:
    """The CLIP image processor of a local model folder, or OpenAI CLIP's settings."""
    if os.path.isfile(os.path.join(name_or_path, "preprocessor_config.json")):
        return CLIPImageProcessorPil.from_pretrained(name_or_path)
    return CLIPImageProcessorPil()


class ImagePipeline:
    """Image (path, bytes, PIL or None) -> pixel tensor [3, S, S]; zeros when there is no usable image.
    It counts the images it had to replace by zeros (`unusable`, read and reset with `take_unusable`)."""

    def __init__(self, processor: CLIPImageProcessorPil):
        self.processor = processor
        self.size = processor.crop_size["height"]
        self.unusable = []

    def zeros(self) -> torch.Tensor:
        return torch.zeros(3, self.size, self.size)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        resized = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        return self.processor(resized, return_tensors="pt")["pixel_values"][0]

    def __call__(self, source) -> torch.Tensor:
        """Pixels of `source`; a missing or unusable image gives zeros (and a log line), as in the authors' code."""
        if source is None:
            return self.zeros()
        try:
            return self.pixels(open_image(source))
        except ImageError as e:
            log.debug("image replaced by zeros: %s", e)
            self.unusable.append(str(e))
            return self.zeros()

    def take_unusable(self) -> list:
        unusable, self.unusable = self.unusable, []
        return unusable


def log_unusable(pipeline: ImagePipeline, total: int, what: str = "images"):
    """One log line for the images replaced by zeros during a run (the model still runs on them)."""
    unusable = pipeline.take_unusable()
    if unusable:
        log.warning("%d of %d %s were missing or unreadable and were encoded as the zero image, as in the "
                    "authors' code (first: %s)", len(unusable), total, what, unusable[0])
