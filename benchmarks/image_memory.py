"""Memory of one image through the pipeline: the peak RSS it adds, measured in a fresh process per image.

    python benchmarks/image_memory.py            # about 4 minutes; writes benchmarks/results/image_memory.json
    python benchmarks/image_memory.py --quick    # only the 16-bit 4000 x 4000 PNG of issue 10
    python benchmarks/image_memory.py --hostile  # only the formats of issue 18 (bombs, animations, multi-frame)

Each image is written once (small on disk: flat colours compress well), then a new Python process imports
mimic, warms the pipeline up on a small photo, resets the kernel's peak-RSS counter, runs the pipeline
on the image, and reports peak RSS minus RSS before: the memory one request's image work costs.
"""
import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mimic.fileio import write_json  # noqa: E402

PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
from mimic.model.images import ImagePipeline
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from PIL import Image

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # MB
pipeline = ImagePipeline(CLIPImageProcessorPil(), mode=sys.argv[2])
pipeline(Image.new("RGB", (640, 480), (90, 120, 30)))  # warm-up: the processor's first call allocates
results = []
for path in json.loads(sys.argv[1]):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    before = status("VmRSS")
    pixels = pipeline(path)
    results.append({"work_mb": status("VmHWM") - before, "zeros": bool(pixels.abs().sum() == 0),
                    "unusable": pipeline.take_unusable()})
print(json.dumps(results))
"""


def images_work_mb(paths: list, mode: str = "default") -> list:
    """[{"work_mb", "zeros", "unusable"}] of each of `paths` in turn through one fresh process's pipeline
    (the peak is reset before each image: each figure is the memory that image's work added)."""
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(paths), mode, ROOT], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def image_work_mb(path: str, mode: str = "default") -> dict:
    """{"work_mb", "zeros", "unusable"} of `path` through a fresh process's pipeline."""
    return images_work_mb([path], mode)[0]


# -- hostile files, small on disk (issue 18) ----------------------------------------------------------

def flat_png(side: int) -> bytes:
    """A real side x side black grayscale PNG, compressed row by row (100 kB for 30,000 x 30,000)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", body) + chunk(b"IEND", b""))


def ico_around(png: bytes) -> bytes:
    """An ICO whose one entry (declared 256 x 256) is `png`: PIL decodes the PNG, whatever its size, in
    Image.open."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def jpeg_resized_header(width: int, height: int, mode: str = "CMYK", **save) -> bytes:
    """A 64 x 64 JPEG whose frame header (SOF) says width x height: under a kB, and libjpeg allocates
    for the size the header says before it finds the data short."""
    buffer = io.BytesIO()
    Image.new(mode, (64, 64), (10, 100, 50, 0)[:len(mode)]).save(buffer, "JPEG", **save)
    data, i = bytearray(buffer.getvalue()), 2
    while True:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a SOFn
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        i += 2 + length


def jpeg_one_component_first_scan(data: bytes) -> bytes:
    """`data` (a 3-component baseline JPEG) with its first scan cut to one component: a multi-scan JPEG,
    which libjpeg decodes through a buffer of the whole picture's coefficients (the scan data is junk)."""
    i = 2
    while data[i + 1] != 0xDA:
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    length = struct.unpack(">H", data[i + 2:i + 4])[0]
    first = data[i + 5:i + 7]  # component id and its tables
    return data[:i] + b"\xff\xda" + struct.pack(">HB", 8, 1) + first + b"\x00\x3f\x00" + data[i + 2 + length:]


def tiff_resized_header(width: int, height: int, rows_per_strip: int) -> bytes:
    """A 64 x 64 RGB LZW TIFF whose header says width x height and rows_per_strip (a few hundred bytes)."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 50)).save(buffer, "TIFF", compression="tiff_lzw")
    data = bytearray(buffer.getvalue())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    values = {256: width, 257: height, 278: rows_per_strip}
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", data, at)
        if tag in values:
            struct.pack_into("<H" if kind == 3 else "<I", data, at + 8, values[tag])
    return bytes(data)


def flat(mode: str, side: int, value):
    return Image.new(mode, (side, side), value)


def cases(folder: str, quick: bool) -> dict:
    """name -> path; written once."""
    out = {}

    def save(name, image, **kwargs):
        out[name] = os.path.join(folder, name)
        image.save(out[name], **kwargs)

    save("png16_4000.png", Image.fromarray(np.full((4000, 4000), 30000, dtype=np.uint16)))
    if quick:
        return out
    side = 8000  # the 64-megapixel cap
    save("png16_8000.png", Image.fromarray(np.full((side, side), 30000, dtype=np.uint16)))
    save("rgb_8000.jpg", flat("RGB", side, (200, 100, 50)), quality=90)
    save("cmyk_8000.jpg", flat("CMYK", side, (10, 100, 50, 0)), quality=90)
    save("rgb_8000.png", flat("RGB", side, (200, 100, 50)))
    save("rgba_8000.png", flat("RGBA", side, (200, 100, 50, 128)))
    save("palette_8000.png", flat("RGB", side, (200, 100, 50)).convert("P"))
    save("gray_8000.png", flat("L", side, 77))
    save("rgb_4000.webp", flat("RGB", 4000, (200, 100, 50)), quality=80)  # WebP's cap is 16 MP
    return out


def hostile_cases(folder: str) -> dict:
    """Issue 18: formats that decoded more than their pixels before the size check, and animations and
    multi-frame files at the caps. name -> path; written once."""
    out = {}

    def write(name, data):
        out[name] = os.path.join(folder, name)
        with open(out[name], "wb") as f:
            f.write(data)

    def save(name, image, **kwargs):
        out[name] = os.path.join(folder, name)
        image.save(out[name], **kwargs)

    side = 8000
    write("ico_png_13000.ico", ico_around(flat_png(13000)))
    save("cmyk_progressive_8000.jpg", flat("CMYK", side, (10, 100, 50, 0)), quality=90, progressive=True)
    write("cmyk_progressive_header.jpg", jpeg_resized_header(side, side, progressive=True))
    save("rgb_progressive_8000.jpg", flat("RGB", side, (200, 100, 50)), quality=90, progressive=True)
    write("rgb444_multiscan_header.jpg",
          jpeg_one_component_first_scan(jpeg_resized_header(side, side, "RGB", subsampling=0)))
    write("tiff_one_strip_header.tif", tiff_resized_header(side, side, side))
    save("rgb_one_strip_8000.tif", flat("RGB", side, (200, 100, 50)), compression="tiff_lzw",
         strip_size=2**31 - 1)
    frames = [flat("RGB", side, (200, 100, 50)), flat("RGB", side, (50, 100, 200))]
    save("rgb_2pages_8000.tif", frames[0], compression="tiff_lzw", save_all=True, append_images=frames[1:])
    save("rgb_2frames_8000.png", frames[0], save_all=True, append_images=frames[1:])  # APNG
    save("rgb_2frames_8000.mpo", frames[0], format="MPO", save_all=True, append_images=frames[1:], quality=90)
    save("p_2frames_8000.gif", frames[0].convert("P"), save_all=True, append_images=[frames[1].convert("P")])
    small = [f.resize((4000, 4000)) for f in frames]  # WebP's cap is 16 MP
    save("rgb_2frames_4000.webp", small[0], save_all=True, append_images=small[1:], quality=80)
    save("rgb_lossless_4000.webp", small[0], lossless=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the 16-bit 4000 x 4000 PNG")
    parser.add_argument("--hostile", action="store_true", help="only issue 18's formats (bombs, animations)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mimic-image-memory-") as folder:
        files = hostile_cases(folder) if args.hostile else {**cases(folder, args.quick),
                                                            **({} if args.quick else hostile_cases(folder))}
        for name, path in files.items():
            for mode in ("default", "authors"):
                result = image_work_mb(path, mode)
                rows.append({"image": name, "bytes": os.path.getsize(path), "mode": mode, **result})
                print(f"{name:<28} {os.path.getsize(path) / 1024:9.0f} kB  {mode:<8} "
                      f"{result['work_mb']:7.0f} MB{'  (zero image)' if result['zeros'] else ''}", flush=True)
    name = "image_memory_hostile.json" if args.hostile else "image_memory.json"
    write_json(os.path.join(ROOT, "benchmarks", "results", name), {"rows": rows})


if __name__ == "__main__":
    main()
