"""Load on the demo: concurrent gradio_client clients, then a long sequential run (loopback only).

    python benchmarks/load.py                # about 5 minutes; writes benchmarks/results/load.json
    python benchmarks/load.py --throughput   # about 6 minutes; writes benchmarks/results/load_batching.json

1. 32 concurrent clients send 200 /link requests in all, each a different (sentence, mention, image)
   query. Every answer must come back without error and belong to its own request: it echoes the
   request's sentence and mention, and its ranking equals the one the same query got when sent alone.
   Reported: errors, mismatches, p50/p95 latency (queueing included).
2. 1,000 sequential requests; the server's resident memory is sampled every 100: it must not keep
   growing (reported: RSS after warm-up, at the end, and the least-squares slope over the samples).

The app runs with full-size CLIP ViT-B/32 (the offline stand-in: random weights, real sizes) on the
demo KB, in its own process, with the queue settings of app.py. Bounded: 1,200 requests, and every
request has a 60 s timeout.

--throughput: requests/s and p50/p95 latency at 1, 4, 16 and 32 concurrent clients, for the app with
batched linking (MIMIC_BATCH=1, the default) and without (MIMIC_BATCH=0), one app at a time on the same
cache. A short run: 40 /link requests per level (after 4 of warm-up), two thirds with an image; every
answer must echo its own sentence and mention.
"""
import argparse
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


LEVELS = (1, 4, 16, 32)
PER_LEVEL = 40


def run_clients(url, load, clients, check=None):
    """`load` sent by `clients` concurrent gradio_client clients -> (wall seconds, latencies, errors, mismatches).
    An answer must echo its request's sentence and mention (else it is an error: another request's answer);
    `check(i, answer)`, when given, must also hold (else request i is a mismatch)."""
    from gradio_client import Client, handle_file
    latencies, errors, mismatches, lock = [], [], [], threading.Lock()
    next_request = iter(range(len(load)))
    own = [Client(url, verbose=False) for _ in range(clients)]  # made before the clock starts

    def worker(client):
        while True:
            with lock:
                i = next(next_request, None)
            if i is None:
                return
            s, m, image = load[i]
            t = time.perf_counter()
            try:
                answer = client.submit(s, m, handle_file(image) if image else None, 5, api_name="/link").result(60)
                assert answer["sentence"] == s and answer["mention"] == m, "another request's answer"
            except Exception as e:  # every failure is counted and reported
                with lock:
                    errors.append(f"{i}: {e}")
                continue
            elapsed = time.perf_counter() - t
            same = check is None or check(i, answer)
            with lock:
                latencies.append(elapsed)
                if not same:
                    mismatches.append(i)

    threads = [threading.Thread(target=worker, args=(c,)) for c in own]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - t0, latencies, errors, mismatches


def throughput():
    """Batched and unbatched apps, one after the other: requests/s, p50 and p95 at each level."""
    cache = tempfile.mkdtemp(prefix="mimic-load-cache-")
    result = {"requests_per_level": PER_LEVEL, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    for name, flag in (("batched", "1"), ("one_by_one", "0")):
        process, client, ready = start(cache, 7874, extra_env={"MIMIC_BATCH": flag})
        url = "http://127.0.0.1:7874/"
        run_clients(url, queries(4), 4)  # warm-up
        rows = {}
        for clients in LEVELS:
            wall, latencies, errors, _ = run_clients(url, queries(PER_LEVEL), clients)
            rows[clients] = {"requests_per_s": round(len(latencies) / wall, 2),
                             "p50_s": round(statistics.median(latencies), 3),
                             "p95_s": round(float(np.percentile(latencies, 95)), 3),
                             "errors": len(errors), "first_errors": errors[:2]}
            print(name, clients, rows[clients], flush=True)
        result[name] = rows
        process.terminate()
        process.wait(30)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(os.path.join(ROOT, "benchmarks", "results", "load_batching.json"), result)
    print(json.dumps(result, indent=1))
    print("| clients | batched req/s | p50 s | p95 s | one by one req/s | p50 s | p95 s |\n|---|---|---|---|---|---|---|")
    for clients in LEVELS:
        b, o = result["batched"][clients], result["one_by_one"][clients]
        print(f"| {clients} | {b['requests_per_s']} | {b['p50_s']} | {b['p95_s']} | {o['requests_per_s']} | "
              f"{o['p50_s']} | {o['p95_s']} |")
    if any(row["errors"] for name in ("batched", "one_by_one") for row in result[name].values()):
        sys.exit(1)


def main():
    from gradio_client import handle_file
    cache = tempfile.mkdtemp(prefix="mimic-load-cache-")
    process, client, ready = start(cache, 7873)
    server = psutil.Process(process.pid)
    url = "http://127.0.0.1:7873/"
    load = queries(200)
    # what each query gets when it is alone
    alone = [client.predict(s, m, handle_file(i) if i else None, 5, api_name="/link") for s, m, i in load]

    # 1. 32 concurrent clients, 200 requests; each answer's ranking must be the one its query got alone
    def ranked_as_alone(i, answer):
        return [r["index"] for r in answer["results"]] == [r["index"] for r in alone[i]["results"]]

    concurrent_seconds, latencies, errors, mismatches = run_clients(url, load, 32, check=ranked_as_alone)

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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--throughput", action="store_true", help="batched against one-by-one linking")
    throughput() if parser.parse_args().throughput else main()
