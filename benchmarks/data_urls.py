"""Images sent to the demo as data URLs: what a refusal costs the server (issue 18, item 2).

    python benchmarks/data_urls.py     # about 3 minutes; writes benchmarks/results/data_urls.json

The app runs as `python app.py` does (full-size CLIP ViT-B/32 stand-in on the demo KB). Sent to /link
through the page's queue protocol, as `{"url": "data:image/png;base64,..."}` without an upload: a 140 kB
PNG of 12000 x 12000 pixels (alone, three at once, and with a 1,000,000-character sentence), a 21 MB
and a 27 MB picture. Reported: seconds from joining the queue to the refusal, and the server's peak
memory (VmHWM) before and after each kind. Before the fix the filer measured +1.5 GB and 15 s per
bomb, +4.6 GB for three at once, 10.6 s to refuse the long sentence, and the 27 MB picture accepted.
"""
import base64
import io
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.app_start import start  # noqa: E402
from mimic.fileio import write_json  # noqa: E402
from tests.demo.test_demo_limits import GOOD, HUGE, RawSession  # noqa: E402

PORT = 7876


def peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def bomb_url() -> str:
    buffer = io.BytesIO()
    from PIL import Image
    Image.new("L", (12_000, 12_000)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def send(url: str, image_url: str, sentence: str = GOOD[0]) -> tuple:
    """-> (HTTP status of queue/join, seconds, the answer's first 160 characters)."""
    raw = RawSession(url)
    dependency = next(d for d in raw.config["dependencies"] if d["api_name"] == "link")
    values = {raw.component(label="Sentence"): sentence, raw.component(label="Mention"): GOOD[1],
              raw.component(label="Image"): {"url": image_url}, raw.component(label="Top k"): 5}
    t = time.perf_counter()
    answer = raw.http.post(f"{raw.url}/gradio_api/queue/join", json={
        "data": [values.get(i) for i in dependency["inputs"]], "fn_index": dependency["id"], "trigger_id": None,
        "session_hash": raw.session, "event_data": None})
    return answer.status_code, round(time.perf_counter() - t, 3), answer.text[:160]


def main():
    cache = tempfile.mkdtemp(prefix="mimic-data-urls-cache-")
    process, _, _ = start(cache, PORT)
    url = f"http://127.0.0.1:{PORT}/"
    bomb = bomb_url()
    cases = {"bomb (140 kB, 144 MP)": [(bomb, GOOD[0])],
             "three bombs at once": [(bomb, GOOD[0])] * 3,
             "bomb with a 1,000,000-character sentence": [(bomb, HUGE)],
             "21 MB picture": [("data:image/png;base64," + "iVBORw0K" * (21 * 2**20 // 6), GOOD[0])],
             "27 MB picture": [("data:image/png;base64," + "iVBORw0K" * (27 * 2**20 // 6), GOOD[0])]}
    rows = []
    try:
        for name, requests in cases.items():
            before = peak_mb(process.pid)
            answers = [None] * len(requests)

            def one(i, image, sentence):
                answers[i] = send(url, image, sentence)
            threads = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(requests)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rows.append({"case": name, "status": [a[0] for a in answers], "seconds": max(a[1] for a in answers),
                         "peak_mb_before": round(before), "peak_mb_after": round(peak_mb(process.pid)),
                         "answer": answers[0][2]})
    finally:
        process.terminate()
        process.wait(30)
    write_json(os.path.join(ROOT, "benchmarks", "results", "data_urls.json"), {"cases": rows})
    for r in rows:
        print(f"{r['case']:<42} HTTP {r['status']} in {r['seconds']:.3f} s; server peak {r['peak_mb_before']} -> "
              f"{r['peak_mb_after']} MB; {r['answer'][:90]}")


if __name__ == "__main__":
    main()
