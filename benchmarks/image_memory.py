"""Memory of one image through the pipeline: the peak RSS it adds, measured in a fresh process per image.

    python benchmarks/image_memory.py            # about 4 minutes; writes benchmarks/results/image_memory.json
    python benchmarks/image_memory.py --quick    # only the 16-bit 4000 x 4000 PNG of issue 10

Each image is written once (small on disk: flat colours compress well), then a new Python process imports
mimic, warms the pipeline up on a small photo, resets the kernel's peak-RSS counter, runs the pipeline
on the image, and reports peak RSS minus RSS before: the memory one request's image work costs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

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
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (peak RSS) to the current RSS
before = status("VmRSS")
pixels = pipeline(sys.argv[1])
print(json.dumps({"work_mb": status("VmHWM") - before, "zeros": bool(pixels.abs().sum() == 0),
                  "unusable": pipeline.take_unusable()}))
"""


def image_work_mb(path: str, mode: str = "default") -> dict:
    """{"work_mb", "zeros", "unusable"} of `path` through a fresh process's pipeline."""
    out = subprocess.run([sys.executable, "-c", PROBE, path, mode, ROOT], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the 16-bit 4000 x 4000 PNG")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mimic-image-memory-") as folder:
        for name, path in cases(folder, args.quick).items():
            for mode in ("default", "authors"):
                result = image_work_mb(path, mode)
                rows.append({"image": name, "bytes": os.path.getsize(path), "mode": mode, **result})
                print(f"{name:<18} {os.path.getsize(path) / 1024:9.0f} kB  {mode:<8} "
                      f"{result['work_mb']:7.0f} MB{'  (zero image)' if result['zeros'] else ''}", flush=True)
    write_json(os.path.join(ROOT, "benchmarks", "results", "image_memory.json"), {"rows": rows})


if __name__ == "__main__":
    main()
