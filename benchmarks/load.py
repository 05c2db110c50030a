"""Load on the demo: concurrent gradio_client clients, then a long sequential run (loopback only).

    python benchmarks/load.py     # about 5 minutes; writes benchmarks/results/load.json

1. 32 concurrent clients send 200 /link requests in all, each a different (sentence, mention, image)
   query. Every answer must come back without error and belong to its own request: it echoes the
   request's sentence and mention, and its ranking equals the one the same query got when sent alone.
   Reported: errors, mismatches, p50/p95 latency (queueing included).
2. 1,000 sequential requests; the server's resident memory is sampled every 100: it must not keep
   growing (reported: RSS after warm-up, at the end, and the least-squares slope over the samples).

The app runs with full-size CLIP ViT-B/32 (the offline stand-in: random weights, real sizes) on the
demo KB, in its own process, with the queue settings of app.py. Bounded: 1,200 requests, and every
request has a 60 s timeout.
"""
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.app_start import start  # noqa: E402
from mimic.fileio import write_json  # noqa: E402

MENTION_IMAGES = sorted(os.path.join(ROOT, "assets", "demo_kb", "mention_image", f)
                        for f in os.listdir(os.path.join(ROOT, "assets", "demo_kb", "mention_image")))
NAMES = ["Hopper", "Chelsea", "Java", "Mercury", "Washington", "Tesla", "Turing", "Newton", "Apple", "Python"]
PLACES = ["in the museum", "on the news", "at the conference", "in the old photograph", "in my notes"]


def queries(n):
    """n different queries: a name in a varying sentence, with or without one of the demo images."""
    out = []
    for i in range(n):
        name = NAMES[i % len(NAMES)]
        sentence = f"Request {i}: we talked about {name} {PLACES[i % len(PLACES)]}."
        image = MENTION_IMAGES[i % len(MENTION_IMAGES)] if i % 3 else None
        out.append((sentence, name, image))
    return out


def main():
    from gradio_client import Client, handle_file
    cache = tempfile.mkdtemp(prefix="mimic-load-cache-")
    process, client, ready = start(cache, 7873)
    server = psutil.Process(process.pid)
    url = "http://127.0.0.1:7873/"
    load = queries(200)
    # what each query gets when it is alone
    alone = [client.predict(s, m, handle_file(i) if i else None, 5, api_name="/link") for s, m, i in load]

    # 1. 32 concurrent clients, 200 requests
    latencies, errors, mismatches = [], [], []
    lock = threading.Lock()
    next_request = iter(range(len(load)))

    def worker():
        own = Client(url, verbose=False)
        while True:
            with lock:
                i = next(next_request, None)
            if i is None:
                return
            s, m, image = load[i]
            t = time.perf_counter()
            try:
                job = own.submit(s, m, handle_file(image) if image else None, 5, api_name="/link")
                answer = job.result(timeout=60)
            except Exception as e:  # every failure is counted and reported
                with lock:
                    errors.append(f"{i}: {e}")
                continue
            elapsed = time.perf_counter() - t
            same = (answer["sentence"] == s and answer["mention"] == m and
                    [r["index"] for r in answer["results"]] == [r["index"] for r in alone[i]["results"]])
            with lock:
                latencies.append(elapsed)
                if not same:
                    mismatches.append(i)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    t0 = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    concurrent_seconds = time.time() - t0

    # 2. 1,000 sequential requests, resident memory sampled every 100
    samples = []
    sequential = queries(1000)
    for i, (s, m, image) in enumerate(sequential):
        client.predict(s, m, handle_file(image) if image else None, 5, api_name="/link")
        if i % 100 == 99:
            samples.append(server.memory_info().rss / 2 ** 20)
    slope = float(np.polyfit(np.arange(len(samples)) * 100, samples, 1)[0])  # MB per request
    process.terminate()
    process.wait(30)
    result = {
        "ready_seconds": round(ready, 1),
        "concurrent": {"clients": 32, "requests": len(load), "errors": len(errors), "mismatched_answers": len(mismatches),
                       "p50_s": round(statistics.median(latencies), 3),
                       "p95_s": round(float(np.percentile(latencies, 95)), 3),
                       "wall_seconds": round(concurrent_seconds, 1), "first_errors": errors[:3]},
        "sequential": {"requests": len(sequential), "rss_mb_every_100": [round(x) for x in samples],
                       "rss_growth_mb_per_1000_requests": round(slope * 1000, 1)},
    }
    write_json(os.path.join(ROOT, "benchmarks", "results", "load.json"), result)
    print(json.dumps(result, indent=1))
    if errors or mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
