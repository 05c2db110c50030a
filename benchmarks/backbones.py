"""Backbones side by side: widths, parameters and start-up cost (build + first encode), random weights.

    python benchmarks/backbones.py                       # about 2 minutes; writes benchmarks/results/backbones.json
    python benchmarks/backbones.py --models open_clip:ViT-H-14 open_clip:ViT-B-16

Each backbone is measured in a fresh process (so one model's memory and warm caches do not help the
next): `import` of the library, then `MIMIC.from_encoder(pretrained=False)` (the architecture with random
weights, its tokenizer and image pipeline: the work a start does apart from reading weights), then the
first encode of one mention with an image. Pretrained weights only add reading them from disk. A model
whose tokenizer cannot be built here (offline) is listed with the reason instead of figures.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = ["openai/clip-vit-base-patch32", "open_clip:ViT-B-32", "open_clip:ViT-B-16", "open_clip:ViT-L-14",
          "open_clip:ViT-B-16-SigLIP"]
IMAGE = os.path.join(ROOT, "assets", "demo_kb", "mention_image", "hopper_face_crop.jpg")

MEASURE = """
import json, os, resource, sys, time
t0 = time.perf_counter()
import torch
from mimic.model.encoder import EncoderUnavailable
from mimic.model.mimic import MIMIC, MIMICConfig
torch.set_num_threads(2)
imported = time.perf_counter() - t0
spec, image = sys.argv[1], sys.argv[2]
try:
    t = time.perf_counter()
    model = MIMIC.from_encoder(MIMICConfig(encoder=spec), pretrained=False).eval()
    built = time.perf_counter() - t
except EncoderUnavailable as e:
    print(json.dumps({"encoder": spec, "unavailable": str(e).split(", which")[0].split(". ")[0]}))
    sys.exit(0)
t = time.perf_counter()
with torch.no_grad():
    x = model.encode(model.processor(["Hopper [SEP] A portrait of Hopper was unveiled at the gallery."], [image]))
encoded = time.perf_counter() - t
clip = model.encoder.clip
print(json.dumps({
    "encoder": spec, "import_s": round(imported, 2), "build_s": round(built, 2), "first_encode_s": round(encoded, 2),
    "startup_s": round(built + encoded, 2), "clip_parameters_m": round(sum(p.numel() for p in clip.parameters()) / 1e6, 1),
    "t_g": x.t_g.shape[-1], "t_l": list(x.t_l.shape[1:]), "image_tokens": x.v_l.shape[1],
    "image_token_width": model.encoder.image_token_dim, "image_size": model.processor.images.size,
    "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def measure(spec: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "OMP_NUM_THREADS": "2",
           "PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", MEASURE, spec, IMAGE], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=1800)
    if out.returncode != 0:
        return {"encoder": spec, "unavailable": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list) -> str:
    lines = ["| backbone | t_G | T_L (tokens x width) | V_L (tokens x width) | CLIP parameters | build | first encode "
             "| start-up |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "unavailable" in r:
            lines.append(f"| `{r['encoder']}` | not measured here: {r['unavailable']} | | | | | | |")
            continue
        lines.append(f"| `{r['encoder']}` | {r['t_g']} | {r['t_l'][0]} x {r['t_l'][1]} | {r['image_tokens']} x "
                     f"{r['image_token_width']} | {r['clip_parameters_m']} M | {r['build_s']} s | "
                     f"{r['first_encode_s']} s | {r['startup_s']} s |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help="backbone names (--encoder values)")
    args = parser.parse_args()
    rows = []
    for spec in args.models:
        rows.append(measure(spec))
        print(json.dumps(rows[-1]), flush=True)
    from mimic.fileio import write_json
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    write_json(os.path.join(ROOT, "benchmarks", "results", "backbones.json"), {"rows": rows, "cpu_count": os.cpu_count()})
    print(table(rows))


if __name__ == "__main__":
    main()
