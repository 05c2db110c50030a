"""Oversized input on the public demo: how long a refusal takes, and what it costs everyone else.

    python benchmarks/refusals.py     # about 2 minutes; writes benchmarks/results/refusals.json

The app runs as `python app.py` does, with full-size CLIP ViT-B/32 (the offline stand-in: random
weights, real sizes) on the demo KB. A 1,000,000-character text goes into each text input of each
handler that reads one, the page's private ones included (highlighter, occurrence chooser), through the
page's own queue protocol, 5 times each: reported, the slowest and median time from joining the queue
to the refusal. Then the largest accepted inputs (100,000 characters, the mention in it 50,000 times)
through the highlighter and /link. Meanwhile another client links without pause: its latency alone and
during the flood of refusals is reported.
"""
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.app_start import start  # noqa: E402
from mimic.fileio import write_json  # noqa: E402
from tests.demo.test_demo_limits import GOOD, HUGE, RawSession  # noqa: E402

REPEATS = 5
LIMITS = {"Sentence": "100,000", "Mention": "1,000", "Name": "200", "Description": "5,000"}


class Bystander(threading.Thread):
    """A client that links without pause; `take()` returns the latencies since the last call."""

    def __init__(self, url):
        super().__init__(daemon=True)
        from gradio_client import Client
        self.client = Client(url, verbose=False)
        self.latencies, self.errors, self.stop = [], [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                self.client.predict(*GOOD, None, 5, api_name="/link")
            except Exception as e:  # counted and reported
                self.errors.append(repr(e))
            self.latencies.append(time.perf_counter() - t)

    def take(self) -> list:
        taken, self.latencies = self.latencies, []
        return taken


def ms(values) -> dict:
    return {"n": len(values), "p50_ms": round(statistics.median(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1)} if values else {"n": 0}


def main():
    cache = tempfile.mkdtemp(prefix="mimic-refusals-cache-")
    process, _, _ = start(cache, 7874)
    url = "http://127.0.0.1:7874/"
    try:
        raw = RawSession(url)
        ids = {label: raw.component(label=label) for label in LIMITS}
        valid = {ids["Sentence"]: GOOD[0], ids["Mention"]: GOOD[1], ids["Name"]: "Ada", ids["Description"]: "",
                 raw.component(label="Top k"): 5}
        bystander = Bystander(url)
        bystander.start()
        time.sleep(5)
        alone = bystander.take()
        rows = []
        for label, limit in LIMITS.items():
            for dependency in raw.dependencies_reading(ids[label]):
                times = []
                for _ in range(REPEATS):
                    success, message, seconds, _ = raw.call(dependency, {**valid, ids[label]: HUGE})
                    if success is not False or f"limit is {limit}" not in str(message):
                        raise SystemExit(f"{dependency['api_name']} did not refuse {label}: {str(message)[:200]}")
                    times.append(seconds)
                rows.append({"handler": dependency["api_name"], "input": label, **ms(times)})
        during = bystander.take()
        sentence, mention = ids["Sentence"], ids["Mention"]
        largest = {sentence: "a " * 50_000, mention: "a"}
        accepted = {}
        for name in ("describe_mention", "link"):
            dependency = next(d for d in raw.config["dependencies"] if d["api_name"] == name)
            times = []
            for _ in range(REPEATS):
                success, _, seconds, _ = raw.call(dependency, {**valid, **largest})
                assert success, name
                times.append(seconds)
            accepted[name] = ms(times)
        bystander.stop.set()
        bystander.join(60)
    finally:
        process.terminate()
        process.wait(30)
    slowest = max(rows, key=lambda r: r["max_ms"])
    result = {"text_characters": len(HUGE), "repeats": REPEATS, "refusals": rows,
              "slowest_refusal_ms": slowest["max_ms"], "slowest_refusal": f"{slowest['handler']} ({slowest['input']})",
              "largest_accepted_input": accepted, "other_client_alone": ms(alone),
              "other_client_during_refusals": ms(during), "other_client_errors": bystander.errors[:3]}
    write_json(os.path.join(ROOT, "benchmarks", "results", "refusals.json"), result)
    print(f"{'handler':<20} {'input':<12} {'p50 ms':>8} {'max ms':>8}")
    for r in rows:
        print(f"{r['handler']:<20} {r['input']:<12} {r['p50_ms']:>8} {r['max_ms']:>8}")
    for name, figures in accepted.items():
        print(f"{name:<20} {'100,000 ch.':<12} {figures['p50_ms']:>8} {figures['max_ms']:>8}  (accepted)")
    print(f"other client /link: alone p50 {result['other_client_alone'].get('p50_ms')} ms, during the refusals "
          f"p50 {result['other_client_during_refusals'].get('p50_ms')} ms, max "
          f"{result['other_client_during_refusals'].get('max_ms')} ms; errors: {len(bystander.errors)}")
    if bystander.errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
