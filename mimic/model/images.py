"""Images in: open safely, make upright RGB, resize, normalise for CLIP. Two modes.

`default` (for users): every image becomes upright RGB before the authors' resize and normalisation:
grayscale, CMYK, 16-bit, palette and alpha (on white) are converted, EXIF orientation is applied, an
animation gives its first frame, and images over MAX_PIXELS or MAX_BYTES are refused from the header,
before anything is decoded. Only FORMATS are opened (other formats are refused by name before PIL's plugin
reads them: an ICO decodes in Image.open), and a decoder's own buffer read from the header (a progressive
JPEG's coefficients, a TIFF's strip) counts towards DECODE_BUDGET (decode_problem). Large images are reduced while they are decoded (JPEG DCT scaling with
`Image.draft`, then an integer box `reduce`; palette, 1-bit and 16-bit images are converted to 8 bits
band by band first), so that one image costs at most its decoded size plus a few MB, and the shorter
side never drops below REDUCED_SIDE (3 x 224 px, where box-reducing before LANCZOS changes nothing visible).

`authors` (to reproduce the paper's runs): their data module does
    Image.open(path).resize((224, 224), LANCZOS) -> CLIPFeatureExtractor (transformers 4.18.0)
inside a bare `except` that turns any failure into the all-zero image. That feature extractor does not
convert to RGB: its normalisation broadcasts the 3-value mean over the array of the image, which fails
unless the image has exactly 3 bands, so grayscale, palette, RGBA/LA, CMYK, 1-bit and 16-bit images
become zeros. EXIF orientation is ignored and the only size limit is PIL's own decompression-bomb error
(above 2 x Image.MAX_IMAGE_PIXELS, about 179 megapixels with PIL's default). The 224 px image then
passes their resize (shortest side 224, a no-op) and centre crop (a no-op) unchanged, so the current
CLIP image processor, told not to convert to RGB, gives the same pixels (checked against a numpy
re-statement of the 4.18 steps in tests/model/test_images.py).

Either way a missing or unusable image becomes the all-zero pixel tensor, so the model still runs.
"""
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

log = logging.getLogger(__name__)

IMAGE_MODES = ("default", "authors")
MAX_PIXELS = 64_000_000  # about 8000 x 8000; a phone photo is 12-50 MP
MAX_BYTES = 50 * 1024 * 1024
DECODE_BUDGET = 256 * 2**20  # bytes one image may take while it is decoded
# The formats the default mode opens: those whose decoding cost the header bounds (below). Others are
# refused by name before PIL's plugin sees the file: some decode in Image.open itself (ICO, CUR and ICNS
# decode their largest picture, whatever its size: a 0.2 MB ICO costs 160 MB and more), and for the rest
# (AVIF, JPEG 2000, PSD, EPS, which runs Ghostscript, ...) the memory of a hostile file was not bounded.
# Image.open's `formats` takes plugin names: "JPEG" opens MPO (a camera's multi-picture JPEG) too.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
FORMAT_NAMES = "JPEG, PNG, GIF, WebP, BMP or TIFF"
# Bytes per pixel decoding takes where it is more than PIL's 4 (measured with Pillow 12: the WebP decoder
# keeps its own buffers besides PIL's image). JPEG is decoded at a reduced DCT scale, so it costs little,
# unless it is buffered (see _jpeg_buffer_bytes); a TIFF adds its strip or tile buffer (_tiff_buffer_bytes).
DECODE_BYTES_PER_PIXEL = {"WEBP": 16}
REDUCED_SIDE = 3 * 224
BAND_PIXELS = 1_000_000  # pixels converted at a time when a whole-image conversion would be too big
# Modes Image.reduce averages in place (it premultiplies LA and RGBA into a full-size copy first; palette
# indices cannot be averaged).
REDUCIBLE = ("L", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F")
# EXIF orientation -> the transposition that makes the picture upright (the EXIF specification's table).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


class ImageError(ValueError):
    """An image that cannot be used, with a message a person understands."""


class TooManyPixels(ImageError):
    """PIL refused the header as a decompression bomb: the file is an image, too large to open."""


class FormatRefused(ImageError):
    """An image in a format PIL reads but the default mode does not open (not in FORMATS)."""


def check_image_mode(mode: str) -> str:
    if mode not in IMAGE_MODES:
        raise ValueError(f"image mode must be one of {', '.join(IMAGE_MODES)}, got {mode!r}")
    return mode


# ---------------------------------------------------------------------------------------------------
# Opening: the checks both modes share, then the header.

def _name(source) -> str:
    return os.path.basename(str(source)) if isinstance(source, (str, Path)) else "the image"


def pixel_limit(image_format: str) -> int:
    """The most pixels the default mode accepts in an image of this format (PIL's format name)."""
    return min(MAX_PIXELS, DECODE_BUDGET // DECODE_BYTES_PER_PIXEL.get(image_format, 4))


def _readable_source(source, max_bytes: int = None):
    """A path or bytes -> something Image.open takes; ImageError for what is plainly not an image."""
    name = _name(source)
    if isinstance(source, (str, Path)):
        if not os.path.isfile(source):
            raise ImageError(f"{name}: file not found")
        size = os.path.getsize(source)
        if size == 0:
            raise ImageError(f"{name}: the file is empty (0 bytes)")
        if max_bytes and size > max_bytes:
            raise ImageError(f"{name}: the file is larger than {max_bytes // 2**20} MB")
        with open(source, "rb") as f:
            head = f.read(256)
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("the image is empty (0 bytes)")
        source, head = io.BytesIO(source), bytes(source[:256])
    elif isinstance(source, io.BytesIO):
        head = source.getvalue()[:256]
    else:
        raise ImageError(f"not an image: a {type(source).__name__}")
    if head.lstrip().startswith((b"<svg", b"<?xml")) or name.lower().endswith(".svg"):
        raise ImageError(f"{name}: SVG drawings are not supported; export the picture as PNG or JPEG")
    return source


def _prefix(source) -> bytes:
    if isinstance(source, io.BytesIO):
        return source.getvalue()[:16]
    with open(source, "rb") as f:
        return f.read(16)


def _formats_of(prefix: bytes) -> str:
    """The PIL formats whose signature the file starts with ("CUR or TGA": some share one), or None.
    Nothing is decoded: only the plugins' signature tests run."""
    Image.init()
    names = []
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            if accept and accept(prefix):
                names.append(name)
        except Exception:  # noqa: BLE001 - a plugin's signature test failing means "not this format"
            continue
    return " or ".join(names) or None


def _open_header(source, name: str, formats: tuple = None) -> Image.Image:
    """Image.open (reads the header only) for the `formats` given (None: any), with PIL's errors said
    plainly; a file of another format PIL knows is refused by that format's name."""
    try:
        with warnings.catch_warnings():
            # Between PIL's warning and its error (89-179 MP) the caller decides; the warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source, formats=formats)
    except Image.DecompressionBombError:
        raise TooManyPixels(f"{name}: the image has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels "
                         f"(PIL refuses it as a decompression bomb)")
    except Image.UnidentifiedImageError:
        other = _formats_of(_prefix(source)) if formats else None
        if other:
            raise FormatRefused(f"{name}: {other} images are not accepted (their decoding cannot be bounded "
                                f"safely); save the picture as {FORMAT_NAMES}")
        raise ImageError(f"{name}: not an image PIL can read ({FORMAT_NAMES})")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: the image file is damaged or truncated ({e})")


# ---------------------------------------------------------------------------------------------------
# What decoding costs, read from the header: PIL's image, plus the decoder's own buffer where it has one.

def _jpeg_scan_components(fp, start: int) -> int:
    """How many components the first scan of the JPEG at `start` holds (walking its marker segments up
    to the first SOS); None when the walk fails (then the JPEG is taken as buffered)."""
    position = fp.tell()
    try:
        fp.seek(start + 2)  # after SOI
        for _ in range(10_000):
            if fp.read(1) != b"\xff":
                return None
            marker = fp.read(1)
            while marker == b"\xff":  # fill bytes
                marker = fp.read(1)
            length = fp.read(2)
            if not marker or len(length) < 2:
                return None
            if marker == b"\xda":  # SOS: its first byte is the number of components in the scan
                count = fp.read(1)
                return count[0] if count else None
            fp.seek(int.from_bytes(length, "big") - 2, 1)
        return None
    finally:
        fp.seek(position)


def _jpeg_buffer_bytes(image) -> int:
    """The DCT coefficients libjpeg keeps for the whole picture when the JPEG is progressive or its first
    scan lacks components (several scans): 2 bytes each, 64 per 8 x 8 block of each component, whatever
    the reduced scale of `draft`; 0 for a single-scan baseline JPEG, which is decoded row by row."""
    if not image.info.get("progressive"):
        # one component is always one scan; more are one scan when the first scan holds them all
        if image.layers <= 1 or _jpeg_scan_components(image.fp, getattr(image, "offset", 0)) == image.layers:
            return 0
    layers = image.layer or [(0, 1, 1, 0)]
    h_max, v_max = max(h for _, h, _, _ in layers), max(v for _, _, v, _ in layers)
    width, height = image.size
    return sum(math.ceil(width * h / h_max / 8) * math.ceil(height * v / v_max / 8) * 128
               for _, h, v, _ in layers)


def _tiff_buffer_bytes(image) -> int:
    """The strip (or tile) PIL's libtiff decoder holds besides PIL's image: a single-strip TIFF holds the
    whole picture twice (counted at 4 bytes a pixel or more: a YCbCr TIFF is decoded as RGBA)."""
    tags, (width, height) = image.tag_v2, image.size
    bits = tags.get(258, (1,))
    bits = tuple(bits) if isinstance(bits, tuple) else (bits,)
    if len(bits) == 1:  # one value for every sample, as PIL reads it
        bits *= max(int(tags.get(277, 1)), 1)
    per_pixel = max(4, math.ceil(sum(bits) / 8))
    if 322 in tags and 323 in tags:
        return int(tags[322]) * int(tags[323]) * per_pixel
    return width * min(int(tags.get(278, height)), height) * per_pixel


def decode_problem(image, name: str) -> str:
    """Why the default mode refuses to decode `image` (opened, not loaded): too many pixels for its
    format, or a decoder buffer that would take the image past DECODE_BUDGET; None when it may go on."""
    width, height = image.size
    limit = pixel_limit(image.format)
    if width * height > limit:
        kind = f" for {image.format} images" if limit < MAX_PIXELS else ""
        return f"{name}: {width} x {height} pixels is more than the {limit // 1_000_000} megapixels accepted{kind}"
    if image.format in ("JPEG", "MPO"):
        cost, what = _jpeg_buffer_bytes(image), "a progressive or multi-scan JPEG"
        advice = "save it as a baseline JPEG or smaller"
    elif image.format == "TIFF":
        try:
            cost = 4 * width * height + _tiff_buffer_bytes(image)
        except (TypeError, ValueError) as e:
            return f"{name}: the TIFF header is damaged ({e})"
        what = "this TIFF (its strips or tiles)"
        advice = "save it as PNG, or as a TIFF with smaller strips"
    else:
        return None
    if cost > DECODE_BUDGET:
        return (f"{name}: decoding {what} of {width} x {height} pixels in {image.mode} would take "
                f"{cost // 2**20} MB, more than the {DECODE_BUDGET // 2**20} MB an image may take; {advice}")
    return None


def _decode(image: Image.Image, name: str, reduce_to: int = None) -> Image.Image:
    """Decode the first frame (a JPEG at the smallest DCT scale that keeps the shorter side >= reduce_to)."""
    try:
        image.seek(0)  # first frame of an animation (an MPO re-reads its header here: draft after it)
        if reduce_to and image.format in ("JPEG", "MPO"):
            image.draft(None, (reduce_to, reduce_to))
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: the image file is damaged or truncated ({e})")
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{name}: the image has no pixels")
    return image


# ---------------------------------------------------------------------------------------------------
# Default mode: reduce while decoding, upright, RGB.

def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    """16-bit grayscale -> 8 bits, scaled (not clipped to white above 255), in integer arithmetic."""
    array = np.asarray(image).astype(np.uint32)
    array *= 255
    array += 32767
    array //= 65535
    return Image.fromarray(array.astype(np.uint8), mode="L")


def _eight_bit(image: Image.Image) -> Image.Image:
    """A mode `reduce` cannot take (palette, 1-bit, 16-bit...) -> an 8-bit one it can."""
    if image.mode in REDUCIBLE or image.mode in ("LA", "RGBA"):
        return image
    if image.mode.startswith("I;16"):
        return _sixteen_to_eight(image)
    if image.mode == "1":
        return image.convert("L")
    return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")


def _shrink(image: Image.Image, keep: int) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps the shorter side >= keep. Other modes go band
    by band (converted to 8 bits where `reduce` cannot take them), so no full-size copy ever exists."""
    factor = max(1, min(image.size) // keep)
    if image.mode in REDUCIBLE:
        return image.reduce(factor) if factor > 1 else image
    width, height = image.size
    rows = max(factor, BAND_PIXELS // width // factor * factor)  # whole boxes per band
    out = None
    for top in range(0, height, rows):
        band = _eight_bit(image.crop((0, top, width, min(top + rows, height))))
        band = band.reduce(factor) if factor > 1 else band
        if out is None:
            out = Image.new(band.mode, (math.ceil(width / factor), math.ceil(height / factor)))
        out.paste(band, (0, top // factor))
    return out


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 32-bit and float grayscale scaled to 8 bits, transparency composited on white."""
    if image.mode.startswith("I;16"):
        image = _sixteen_to_eight(image)
    elif image.mode == "I":
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
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


def _checked_header(source, name: str) -> Image.Image:
    """The image's header (nothing decoded), or ImageError when the default mode refuses it: a format whose
    decoding cannot be bounded, too many pixels, or a decoder buffer past the budget."""
    image = _open_header(_readable_source(source, MAX_BYTES), name, FORMATS)
    problem = decode_problem(image, name)
    if problem:
        image.close()
        raise ImageError(problem)
    return image


def check_image(source) -> tuple:
    """(format, width, height) of an image the default mode accepts, read from its header alone (nothing
    is decoded, so a server can refuse a huge picture at once); ImageError saying why not."""
    with _checked_header(source, _name(source)) as image:
        return image.format, image.width, image.height


def open_image(source, reduce_to: int = REDUCED_SIDE) -> Image.Image:
    """A path, bytes or PIL image -> an upright RGB PIL image, or ImageError saying why not.

    An image larger than needed is reduced while decoding, its shorter side kept >= `reduce_to`
    (None: full size)."""
    if isinstance(source, Image.Image):
        image, name = source, "the image"
        if image.width < 1 or image.height < 1:
            raise ImageError("the image has no pixels")
    else:
        name = _name(source)
        image = _decode(_checked_header(source, name), name, reduce_to)
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        small = _shrink(image, reduce_to) if reduce_to else image
        if orientation in UPRIGHT:
            small = small.transpose(UPRIGHT[orientation])
        return _to_rgb(small)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: could not convert the image to RGB ({e})")


# ---------------------------------------------------------------------------------------------------
# Authors' mode.

def open_image_as_authors(source, size: int = 224) -> Image.Image:
    """Image.open(source).resize((size, size), LANCZOS), as their data module does; ImageError for any
    failure (their bare `except`), or for an image their feature extractor cannot normalise."""
    name = _name(source)
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            image = _open_header(_readable_source(source), name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = image.resize((size, size), Image.Resampling.LANCZOS)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - their bare except: anything that goes wrong gives zeros
        raise ImageError(f"{name}: could not be read or resized ({type(e).__name__}: {e})")
    if len(image.getbands()) != 3:
        raise ImageError(f"{name}: mode {image.mode} has {len(image.getbands())} band(s), not 3: the authors' "
                         f"pipeline (transformers 4.18, no RGB conversion) cannot normalise it")
    return image


# ---------------------------------------------------------------------------------------------------
# What a file will go through in each mode, read from its header (for `data check`).

@dataclass
class ImageFacts:
    """What the two modes make of one image file, from its header (and its pixels if `decode`)."""
    exists: bool
    readable: bool = False
    format: str = None
    mode: str = None
    pixels: int = None  # None when PIL refused the header as a decompression bomb, or the format
    size_bytes: int = 0
    orientation: int = 1
    problem: str = None
    too_costly: bool = False  # the default mode refuses to decode it (decode_problem)

    @property
    def rotated(self) -> bool:
        return self.orientation in UPRIGHT

    @property
    def non_rgb(self) -> bool:
        return self.readable and self.mode != "RGB"

    @property
    def over_cap(self) -> bool:
        """Refused by the default mode for its size (pixels, bytes, a decoder's buffer) or its format."""
        return self.readable and (self.pixels is None or self.too_costly or self.size_bytes > MAX_BYTES)

    @property
    def default_ok(self) -> bool:
        return self.readable and not self.over_cap

    @property
    def authors_ok(self) -> bool:
        return self.readable and self.pixels is not None and Image.getmodebands(self.mode) == 3

    @property
    def modes_differ(self) -> bool:
        """The two modes give different pixels: one gives zeros and not the other, or the default mode
        converts (non-RGB) or turns (EXIF) what the authors' takes as stored."""
        if self.default_ok != self.authors_ok:
            return True
        return self.default_ok and (self.mode != "RGB" or self.rotated)


def inspect_image(path: str, decode: bool = False) -> ImageFacts:
    """The facts of one image file without decoding it (unless `decode`: then truncation is caught too)."""
    if not os.path.isfile(path):
        return ImageFacts(exists=False, problem="file not found")
    facts = ImageFacts(exists=True, size_bytes=os.path.getsize(path))
    name = _name(path)
    try:
        # Only the default mode's formats: PIL decodes an ICO in Image.open, whatever its size.
        image = _open_header(_readable_source(path), name, FORMATS)
    except (TooManyPixels, FormatRefused) as e:
        facts.readable, facts.problem = True, str(e)
        return facts
    except ImageError as e:
        facts.problem = str(e)
        return facts
    with image:
        facts.readable, facts.format, facts.mode = True, image.format, image.mode
        facts.pixels = image.width * image.height
        problem = decode_problem(image, name)
        facts.too_costly, facts.problem = bool(problem), problem
        try:
            if decode and not problem:  # an image the default mode refuses is never decoded here
                _decode(image, name)
            # A PNG may keep its EXIF after the pixels; reading it there would decode the whole image.
            if image.format != "PNG" or "exif" in image.info or decode:
                facts.orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        except (ImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            facts.readable, facts.problem = False, str(e)
    return facts


# ---------------------------------------------------------------------------------------------------
# Pixels.

def load_image_processor(name_or_path: str) -> CLIPImageProcessorPil:
    """The CLIP image processor of a local model folder, or OpenAI CLIP's settings."""
    if os.path.isfile(os.path.join(name_or_path, "preprocessor_config.json")):
        return CLIPImageProcessorPil.from_pretrained(name_or_path)
    return CLIPImageProcessorPil()


class ImagePipeline:
    """Image (path, bytes, PIL or None) -> pixel tensor [3, S, S]; zeros when there is no usable image.
    `mode`: "default" or "authors" (see the module's docstring). It counts the images it had to replace
    by zeros (`unusable`, read and reset with `take_unusable`)."""

    def __init__(self, processor: CLIPImageProcessorPil, mode: str = "default"):
        self.processor = processor
        self.size = processor.crop_size["height"]
        self.mode = "default"
        self.set_mode(mode)
        self.unusable = []

    def set_mode(self, mode: str):
        if check_image_mode(mode) == "authors" and not isinstance(self.processor, CLIPImageProcessorPil):
            raise ImageError("--image-mode authors reproduces the authors' transformers CLIP image processor; "
                             "this backbone has its own image transform (use --image-mode default)")
        self.mode = mode

    def zeros(self) -> torch.Tensor:
        return torch.zeros(3, self.size, self.size)

    def pixels(self, image: Image.Image, convert_rgb: bool = True) -> torch.Tensor:
        resized = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        return self.processor(resized, return_tensors="pt", do_convert_rgb=convert_rgb)["pixel_values"][0]

    def __call__(self, source) -> torch.Tensor:
        """Pixels of `source`; a missing or unusable image gives zeros (and a log line), as in the authors' code."""
        if source is None:
            return self.zeros()
        try:
            if self.mode == "authors":
                # already 224 x 224 and 3 bands: the processor's resize and crop leave it as it is
                return self.pixels(open_image_as_authors(source, self.size), convert_rgb=False)
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
