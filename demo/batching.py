"""Requests that wait share one encoder pass: the demo's /link and Link hand their checked query to a
`LinkBatcher`, whose one worker thread encodes every waiting mention at once (Linker.mention_terms) and
then ranks each against the KB with its own Top k and its own session's overlay.

Gradio's own `batch=True` fails every request of a batch when one fails; here a query's error reaches that
query's caller only, and the worker goes on. The answers equal one-by-one linking (scores to float
rounding: a batched CLIP pass may differ in the last bits). MIMIC_BATCH=0 turns batching off.
"""
import logging
import os
import queue
import threading
from concurrent.futures import Future

from mimic.model.matcher import map_terms

log = logging.getLogger(__name__)
MAX_BATCH = 8


def batching_on() -> bool:
    return os.environ.get("MIMIC_BATCH", "1").strip() != "0"


class LinkBatcher:
    """One worker thread; `link` blocks its caller until its own answer (or its own error) is ready.
    `lock`: held while a batch runs, so that nothing else uses the model meanwhile (explanations hook
    into it). At most `max_waiting` requests wait (the callers are bounded by their concurrency limit)."""

    def __init__(self, max_batch: int = MAX_BATCH, max_waiting: int = 2 * MAX_BATCH, lock=None):
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.lock = lock or threading.RLock()
        self.passes = 0  # encoder passes so far (the tests check that requests were batched)
        self._queue = queue.Queue(maxsize=max_waiting)
        threading.Thread(target=self._work, name="link-batcher", daemon=True).start()

    def link(self, linker, query, top_k: int, overlay=None, timeout: float = 120):
        """One checked Query -> (result, the mention's terms), as linker.link_terms(mention_terms([query]))."""
        future = Future()
        self._queue.put((linker, query, top_k, overlay, future), timeout=timeout)
        return future.result(timeout)

    def _work(self):
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:  # what is waiting now joins; nothing waits for more
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._run(batch)
            except Exception as e:  # never dies: whoever still waits hears of it
                log.exception("a batch of links failed")
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(e)

    def _run(self, batch):
        with self.lock:
            for linker in {id(item[0]): item[0] for item in batch}.values():  # one linker in practice
                self._link([item for item in batch if item[0] is linker])

    def _link(self, items):
        try:
            self.passes += 1
            terms = items[0][0].mention_terms([item[1] for item in items])
        except Exception as e:  # one query spoils the pass: each is encoded alone, so only it fails
            if len(items) == 1:
                items[0][-1].set_exception(e)
            else:
                for item in items:
                    self._link([item])
            return
        for i, (linker, _, top_k, overlay, future) in enumerate(items):
            # its own copy: a view would keep the whole batch alive in the session's state (explain reuses it)
            own = map_terms(lambda t: t[i:i + 1].clone(), terms)
            try:
                future.set_result((linker.link_terms(own, top_k, extra=overlay), own))
            except Exception as e:  # this query's error (e.g. Top k 0): its caller's alone
                future.set_exception(e)
