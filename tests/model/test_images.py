"""The two image modes, per kind of image, against a plain numpy re-statement of the authors' pipeline
(transformers 4.18's CLIPFeatureExtractor as their data module calls it); memory of one image."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mimic.model import images as images_module
from mimic.model.images import ImageError, ImagePipeline, inspect_image, load_image_processor, open_image
from tests.conftest import EXAMPLE_IMAGE

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def authors_reference(path) -> torch.Tensor:
    """Their data module, step by step, with transformers 4.18's feature extractor written out in numpy."""
    try:
        image = Image.open(path).resize((224, 224), Image.Resampling.LANCZOS)
        # CLIPFeatureExtractor.resize: shortest side to 224, bicubic; returns the image as is when it already is
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        if short != 224:
            new_long = int(224 * long / short)
            image = image.resize((224, new_long) if width <= height else (new_long, 224), Image.Resampling.BICUBIC)
        # center_crop(224)
        width, height = image.size
        top, left = int((height - 224 + 1) * 0.5), int((width - 224 + 1) * 0.5)
        image = image.crop((left, top, left + 224, top + 224))
        # normalize -> to_numpy_array(rescale if integer, channel first if 3-D), then (x - mean) / std
        array = np.array(image)
        if isinstance(array.flat[0], np.integer):
            array = array.astype(np.float32) / 255.0
        if array.ndim == 3:
            array = array.transpose(2, 0, 1)
        mean, std = np.array(MEAN).astype(array.dtype), np.array(STD).astype(array.dtype)
        if array.ndim == 3 and array.shape[0] in (1, 3):
            array = (array - mean[:, None, None]) / std[:, None, None]
        else:
            array = (array - mean) / std  # broadcasting fails unless the last axis has 3 values
        return torch.tensor(np.stack([array])).squeeze()  # BatchFeature(..., "pt"), then their .squeeze()
    except:  # noqa: E722 - their bare except
        return torch.zeros((3, 224, 224))


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """One file of each kind the two modes are compared on."""
    d = tmp_path_factory.mktemp("kinds")
    photo = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((320, 240))
    out = {}

    def save(name, image, **kwargs):
        out[name] = str(d / name)
        image.save(out[name], **kwargs)
    save("rgb.jpg", photo, quality=92)
    save("l.png", photo.convert("L"))
    save("p.png", photo.convert("P"))
    rgba = photo.convert("RGBA")
    rgba.putalpha(160)
    save("rgba.png", rgba)
    save("la.png", photo.convert("LA"))
    save("cmyk.jpg", photo.convert("CMYK"), quality=92)
    save("i16.png", Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257)))
    save("one_bit.png", photo.convert("1"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    save("exif.jpg", photo.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes(), quality=92)
    save("upright.png", Image.open(out["exif.jpg"]).transpose(Image.Transpose.ROTATE_270))
    return out


@pytest.fixture(scope="module")
def pipelines():
    processor = load_image_processor("openai/clip-vit-base-patch32")
    return ImagePipeline(processor, "default"), ImagePipeline(processor, "authors")


ZEROS = torch.zeros(3, 224, 224)


def test_authors_mode_equals_the_numpy_reference_for_every_kind(kinds, pipelines):
    _, authors = pipelines
    for name in ["rgb.jpg", "l.png", "p.png", "rgba.png", "la.png", "cmyk.jpg", "i16.png", "one_bit.png", "exif.jpg"]:
        torch.testing.assert_close(authors(kinds[name]), authors_reference(kinds[name]), atol=1e-6, rtol=0,
                                   msg=name)


def test_rgb_is_the_same_in_both_modes(kinds, pipelines):
    default, authors = pipelines
    pixels = authors(kinds["rgb.jpg"])
    assert pixels.abs().sum() > 0
    torch.testing.assert_close(default(kinds["rgb.jpg"]), pixels, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,mode", [("l.png", "L"), ("p.png", "P"), ("rgba.png", "RGBA"), ("la.png", "LA"),
                                       ("cmyk.jpg", "CMYK"), ("i16.png", "I;16"), ("one_bit.png", "1")])
def test_non_rgb_is_zeros_in_authors_mode_and_converted_in_default_mode(kinds, pipelines, name, mode):
    default, authors = pipelines
    assert Image.open(kinds[name]).mode == mode
    assert torch.equal(authors(kinds[name]), ZEROS)
    assert f"mode {mode} has" in authors.take_unusable()[0]
    converted = default(kinds[name])
    assert converted.abs().sum() > 0 and not default.take_unusable()
    torch.testing.assert_close(converted, default.pixels(open_image(kinds[name])))


def test_exif_rotation_is_applied_only_in_default_mode(kinds, pipelines):
    default, authors = pipelines
    upright = default(kinds["upright.png"])
    assert (default(kinds["exif.jpg"]) - upright).abs().mean() < 0.02  # turned upright (JPEG noise aside)
    as_stored = authors(kinds["exif.jpg"])
    torch.testing.assert_close(as_stored, authors_reference(kinds["exif.jpg"]), atol=1e-6, rtol=0)
    assert (as_stored - upright).abs().mean() > 0.2  # taken sideways, as stored


def test_oversized_images(kinds, pipelines, monkeypatch, tmp_path):
    """Over the default cap: refused (zeros) by default, used by the authors' mode; over PIL's own limit
    (twice Image.MAX_IMAGE_PIXELS): zeros in both, as the authors' code gets them."""
    default, authors = pipelines
    monkeypatch.setattr(images_module, "MAX_PIXELS", 320 * 240 - 1)
    assert torch.equal(default(kinds["rgb.jpg"]), ZEROS)
    assert "320 x 240 pixels is more than" in default.take_unusable()[0]
    torch.testing.assert_close(authors(kinds["rgb.jpg"]), authors_reference(kinds["rgb.jpg"]), atol=1e-6, rtol=0)
    assert authors(kinds["rgb.jpg"]).abs().sum() > 0
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 320 * 240 // 2 - 1)  # PIL's error from 2x this
    assert torch.equal(authors_reference(kinds["rgb.jpg"]), ZEROS)
    assert torch.equal(authors(kinds["rgb.jpg"]), ZEROS)
    assert "PIL refuses it as a decompression bomb" in authors.take_unusable()[0]
    assert torch.equal(default(kinds["rgb.jpg"]), ZEROS)


def test_pil_limit_is_left_as_pil_sets_it():
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # PIL's default, untouched by mimic


def test_header_facts_predict_which_images_the_modes_treat_differently(kinds, pipelines, tmp_path):
    default, authors = pipelines
    (tmp_path / "junk.jpg").write_text("not an image")
    paths = list(kinds.values()) + [str(tmp_path / "junk.jpg"), str(tmp_path / "gone.jpg")]
    for path in paths:
        facts = inspect_image(path)
        differs = not torch.allclose(default(path), authors(path), atol=1e-5)
        assert facts.modes_differ == differs, os.path.basename(path)
    assert inspect_image(kinds["exif.jpg"]).rotated and not inspect_image(kinds["rgb.jpg"]).rotated
    assert inspect_image(kinds["cmyk.jpg"]).non_rgb and not inspect_image(str(tmp_path / "gone.jpg")).exists
    assert not inspect_image(str(tmp_path / "junk.jpg")).readable


def test_header_facts_of_hostile_files_cost_nothing_and_decode_catches_truncation(tmp_path, kinds):
    import resource

    from tests.product.test_robustness import png_bomb
    png_bomb(tmp_path / "bomb.png", 30_000)  # 100 kB on disk, 900 MB decoded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    facts = inspect_image(str(tmp_path / "bomb.png"), decode=True)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB: nothing was decoded
    assert facts.readable and facts.over_cap and not facts.modes_differ  # zeros in both modes
    data = open(kinds["rgb.jpg"], "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert inspect_image(str(tmp_path / "cut.jpg")).readable  # the header is whole
    cut = inspect_image(str(tmp_path / "cut.jpg"), decode=True)
    assert not cut.readable and "damaged or truncated" in cut.problem


def test_large_images_are_reduced_while_decoding_without_visible_change(tmp_path, pipelines):
    default, _ = pipelines
    rng = np.random.default_rng(0)
    smooth = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((2400, 1800), Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(smooth, dtype=np.int16) + rng.integers(-20, 20, (1800, 2400, 3)), 0, 255)
    for name, image in (("big.jpg", Image.fromarray(noisy.astype(np.uint8))), ("big.png", smooth.convert("P"))):
        path = str(tmp_path / name)
        image.save(path)
        reduced = open_image(path)
        assert min(reduced.size) >= images_module.REDUCED_SIDE and min(reduced.size) < 1800  # decoded smaller
        full = default.pixels(open_image(path, reduce_to=None))
        difference = (default(path) - full).abs()
        # in normalised units (1/255 of the range is about 0.015): the same picture to the eye and to CLIP
        assert difference.mean() < 0.01 and difference.max() < 0.1, name


def test_16_bit_grayscale_is_scaled_band_by_band(tmp_path):
    ramp = (np.arange(3000 * 1600, dtype=np.uint32).reshape(1600, 3000) * 65535 // (3000 * 1600 - 1))
    path = str(tmp_path / "deep.png")
    Image.fromarray(ramp.astype(np.uint16)).save(path)
    image = open_image(path)
    expected = Image.fromarray((ramp * 255 // 65535).astype(np.uint8)).reduce(1600 // images_module.REDUCED_SIDE)
    assert image.size == expected.size
    assert np.abs(np.asarray(image)[..., 0].astype(int) - np.asarray(expected, dtype=int)).max() <= 1


def test_webp_and_other_costly_formats_have_a_smaller_cap(tmp_path):
    path = str(tmp_path / "wide.webp")
    Image.new("RGB", (4200, 4200), (10, 20, 30)).save(path, quality=50)
    with pytest.raises(ImageError, match="more than the 16 megapixels accepted for WEBP images"):
        open_image(path)
    assert inspect_image(path).over_cap


def test_memory_of_one_image_stays_bounded(tmp_path):
    """Issue 10: a 31 kB 16-bit 4000 x 4000 PNG cost 428 MB of RSS (float64 copies). Measured in a fresh
    process: the peak RSS the pipeline adds over its warm state."""
    from benchmarks.image_memory import image_work_mb
    deep = str(tmp_path / "deep.png")
    Image.fromarray(np.full((4000, 4000), 30000, dtype=np.uint16)).save(deep)
    rgba = str(tmp_path / "rgba.png")
    Image.new("RGBA", (4000, 4000), (200, 100, 50, 128)).save(rgba)
    decoded = {deep: 4000 * 4000 * 2 / 2**20, rgba: 4000 * 4000 * 4 / 2**20}  # PIL's own image: 31 and 61 MB
    for path, size in decoded.items():
        result = image_work_mb(path)
        assert not result["zeros"] and result["work_mb"] < size + 25, (path, result)


def test_authors_mode_is_refused_for_a_backbone_with_its_own_image_transform():
    from mimic.model.open_clip_encoder import ImageSettings, OpenCLIPImagePipeline
    settings = ImageSettings({"size": 224, "mean": MEAN, "std": STD, "interpolation": "bicubic",
                              "resize_mode": "shortest", "fill_color": 0})
    pipeline = OpenCLIPImagePipeline(settings)
    with pytest.raises(ImageError, match="--image-mode authors reproduces the authors' transformers CLIP image"):
        pipeline.set_mode("authors")
    assert pipeline.mode == "default"
