"""Issue 18, item 3: the default mode holds one image to DECODE_BUDGET for every format it opens, and
refuses the others by name before PIL's plugin decodes anything. The hostile files are built here, small
on disk (benchmarks/image_memory.py builds the same ones, with the figures measured at full size)."""
import io
import resource

import pytest
from PIL import Image

from benchmarks import image_memory as hostile
from mimic.model import images as images_module
from mimic.model.images import FORMATS, FormatRefused, ImageError, decode_problem, inspect_image, open_image


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    files = {"ico": hostile.ico_around(hostile.flat_png(13000)),  # 0.16 MB; PIL decoded 169 MB of it in Image.open
             "progressive.jpg": hostile.jpeg_resized_header(8000, 8000, progressive=True),  # 0.8 kB; +490 MB before
             "multiscan.jpg": hostile.jpeg_one_component_first_scan(
                 hostile.jpeg_resized_header(8000, 8000, "RGB", subsampling=0)),
             "one_strip.tif": hostile.tiff_resized_header(8000, 8000, rows_per_strip=8000)}
    out = {}
    for name, data in files.items():
        out[name] = str(d / name)
        (d / name).write_bytes(data)
    return out


def test_ico_is_refused_by_name_before_pil_decodes_it(bombs):
    assert open(bombs["ico"], "rb").read(4) == b"\x00\x00\x01\x00" and len(open(bombs["ico"], "rb").read()) < 200_000
    with pytest.raises(FormatRefused, match=r"ico: ICO images are not accepted .* save the picture as JPEG, PNG"):
        open_image(bombs["ico"])
    with pytest.raises(FormatRefused, match="ICO images are not accepted"):
        open_image(open(bombs["ico"], "rb").read())  # bytes, as the page and the API send them
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    facts = inspect_image(bombs["ico"], decode=True)  # `data check` reads headers of a whole dataset
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB: nothing was decoded
    assert facts.readable and facts.over_cap and not facts.default_ok and "ICO images are not accepted" in facts.problem


@pytest.mark.parametrize("name,save", [("x.ico", {}), ("x.icns", {}), ("x.jp2", {}), ("x.pcx", {}),
                                       ("x.ppm", {}), ("x.sgi", {})])
def test_other_formats_pil_reads_are_refused_by_name(tmp_path, name, save):
    path = tmp_path / name
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path, **save)
    image = Image.open(path)
    assert image.format not in FORMATS  # PIL reads it ...
    with pytest.raises(FormatRefused, match=f"{name}: ([A-Z0-9]+ or )*{image.format}( or [A-Z0-9]+)* images are not "
                                            f"accepted"):
        open_image(str(path))  # ... the default mode does not (formats sharing a signature are all named)


def test_buffered_jpegs_are_refused_from_the_header(bombs):
    with pytest.raises(ImageError, match=r"progressive.jpg: decoding a progressive or multi-scan JPEG of "
                                         r"8000 x 8000 pixels in CMYK would take 488 MB, more than the 256 MB"):
        open_image(bombs["progressive.jpg"])
    # one component in the first scan of three: 2 bytes x 64 coefficients x 3 full-size components
    with pytest.raises(ImageError, match=r"multi-scan JPEG of 8000 x 8000 pixels in RGB would take 366 MB"):
        open_image(bombs["multiscan.jpg"])


def test_jpegs_within_the_budget_are_accepted_and_costed_from_their_sampling(tmp_path):
    def problem(data):
        with Image.open(io.BytesIO(data)) as image:
            return decode_problem(image, "x.jpg")
    assert problem(hostile.jpeg_resized_header(8000, 8000)) is None  # baseline CMYK: decoded row by row, reduced
    # progressive 4:2:0 colour: 1.5 full-size components, 192 MB at the 64 MP cap
    assert problem(hostile.jpeg_resized_header(8000, 8000, "RGB", progressive=True)) is None
    full_chroma = hostile.jpeg_resized_header(8000, 8000, "RGB", progressive=True, subsampling=0)
    assert "would take 366 MB" in problem(full_chroma)
    assert problem(hostile.jpeg_resized_header(8000, 8000, "L", progressive=True)) is None  # one component: 61 MB
    with Image.open(io.BytesIO(hostile.jpeg_resized_header(8000, 8000, "L"))) as gray:
        assert images_module._jpeg_buffer_bytes(gray) == 0  # baseline, one component: one scan, no buffer
    with Image.open(io.BytesIO(hostile.jpeg_resized_header(8000, 8000, "L", progressive=True))) as gray:
        assert images_module._jpeg_buffer_bytes(gray) == 1000 * 1000 * 128
    # a real progressive JPEG is decoded and reduced as before
    path = tmp_path / "real.jpg"
    Image.new("RGB", (1600, 1200), (200, 100, 50)).save(path, progressive=True)
    assert open_image(str(path), reduce_to=300).size == (400, 300)  # drafted at 1/4


def test_tiff_strip_buffer_is_counted(bombs):
    with pytest.raises(ImageError, match=r"one_strip.tif: decoding this TIFF \(its strips or tiles\) of 8000 x 8000 "
                                         r"pixels in RGB would take 488 MB"):
        open_image(bombs["one_strip.tif"])
    with Image.open(io.BytesIO(hostile.tiff_resized_header(8000, 8000, rows_per_strip=16))) as image:
        assert decode_problem(image, "x.tif") is None  # 244 MB of PIL's image, 0.5 MB of strip
    with Image.open(io.BytesIO(hostile.tiff_resized_header(8000, 8000, rows_per_strip=65535))) as image:
        assert "would take 488 MB" in decode_problem(image, "x.tif")  # a hostile count: capped at the height


def test_accepted_formats_still_open(tmp_path):
    """Every format of FORMATS, a camera's MPO and an animation's first frame included, opens as before."""
    frames = [Image.new("RGB", (900, 700), (200, 30, 30)), Image.new("RGB", (900, 700), (30, 30, 200))]
    for name, save in (("a.jpg", {}), ("a.png", {}), ("a.bmp", {}), ("a.tif", {}), ("a.webp", {}),
                       ("anim.gif", {"save_all": True, "append_images": frames[1:]}),
                       ("anim.webp", {"save_all": True, "append_images": frames[1:]}),
                       ("anim.png", {"save_all": True, "append_images": frames[1:]}),
                       ("pages.tif", {"save_all": True, "append_images": frames[1:]}),
                       ("camera.mpo", {"format": "MPO", "save_all": True, "append_images": frames[1:]})):
        frames[0].save(tmp_path / name, **save)
        image = open_image(str(tmp_path / name), reduce_to=300)
        assert image.mode == "RGB" and image.size[0] >= 300, name
        red, _, blue = image.getpixel((10, 10))
        assert red > 150 and blue < 80, name  # the first frame
    assert Image.open(tmp_path / "camera.mpo").format == "MPO"
    assert open_image(str(tmp_path / "camera.mpo"), reduce_to=300).size == (450, 350)  # reduced while decoded


def test_bombs_cost_no_memory_in_a_fresh_process(bombs):
    """Peak RSS each adds in a fresh process (benchmarks/image_memory.py): before the fix the ICO cost
    160 MB and the progressive JPEG 490 MB."""
    paths = [bombs["ico"], bombs["progressive.jpg"], bombs["multiscan.jpg"], bombs["one_strip.tif"]]
    for path, result in zip(paths, hostile.images_work_mb(paths)):
        assert result["zeros"] and result["work_mb"] < 20, (path, result)
        assert "not accepted" in result["unusable"][0] or "would take" in result["unusable"][0]


def test_hostile_jpeg_and_tiff_headers(tmp_path, monkeypatch):
    """Cut, looping or nonsense headers give a named refusal or a damaged-file error, never a crash."""
    data = hostile.jpeg_resized_header(8000, 8000, "RGB")
    for cut in (data[:40], data[:-20], b"\xff\xd8" + b"\xff" * 400, data[:2] + b"\x00" * 64):
        with pytest.raises(ImageError):
            open_image(cut)
    with pytest.raises(ImageError, match="damaged or truncated"):
        open_image(hostile.tiff_resized_header(64, 64, rows_per_strip=0))  # a zero count
    monkeypatch.setattr(images_module, "DECODE_BUDGET", 64 * 64 * 4 + 100)  # one strip of 64 rows is over it
    with pytest.raises(ImageError, match="would take 0 MB, more than the 0 MB"):
        open_image(hostile.tiff_resized_header(64, 64, rows_per_strip=64))
