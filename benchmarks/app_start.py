"""Demo start-up and query latency: `python app.py` with full-size CLIP ViT-B/32 on the demo KB.

    python benchmarks/app_start.py        # about 2 minutes; writes benchmarks/results/app_start.json

Without network the pretrained CLIP cannot be downloaded, so the app runs its stand-in (same
architecture, random weights): the same amount of work as the real model. The first start encodes
the demo KB into a fresh cache; the second start loads it. Reported: seconds from `python app.py` to
the first answered /link request, for both starts, and the end-to-end latency of /link queries
(gradio_client on loopback: upload, encoding, search, response) with and without an image.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mimic.fileio import write_json  # noqa: E402

IMAGE = os.path.join(ROOT, "assets", "demo_kb", "mention_image", "hopper_face_crop.jpg")


def start(cache: str, port: int, timeout: float = 600, extra_env: dict = None):
    from gradio_client import Client
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "MIMIC_CACHE": cache,
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2", **(extra_env or {})}
    t0 = time.time()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while time.time() - t0 < timeout:
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            client.predict("Hopper painted Nighthawks.", "Hopper", None, 5, api_name="/link")
            return process, client, time.time() - t0
        except Exception:
            time.sleep(0.25)
    process.kill()
    raise SystemExit("the app did not become ready")


def main():
    from gradio_client import handle_file
    cache = tempfile.mkdtemp(prefix="mimic-app-cache-")
    result = {}
    process, _, result["first_start_seconds"] = start(cache, 7871)  # encodes the demo KB into the cache
    process.terminate()
    process.wait(30)
    process, client, result["cached_start_seconds"] = start(cache, 7872)
    for name, image in (("text_only", None), ("with_image", IMAGE)):
        times = []
        for _ in range(20):
            t = time.perf_counter()
            client.predict("A portrait of Hopper was unveiled at the gallery opening.", "Hopper",
                           handle_file(image) if image else None, 5, api_name="/link")
            times.append(time.perf_counter() - t)
        result[f"query_{name}_p50_s"] = round(statistics.median(times), 3)
        result[f"query_{name}_max_s"] = round(max(times), 3)
    process.terminate()
    process.wait(30)
    result = {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
    write_json(os.path.join(ROOT, "benchmarks", "results", "app_start.json"), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
