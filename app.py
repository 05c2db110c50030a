"""Entry point of the demo (Hugging Face Spaces runs this): python app.py

Honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; MIMIC_CHECKPOINT, MIMIC_ENCODER and MIMIC_CACHE
choose the weights, the CLIP and the cache folder (see README); MIMIC_KB (a store, an entity file with
MIMIC_KB_IMAGES, or a Hub dataset owner/name) the KB the page serves (docs/wikidata.md).
"""
import logging
import os
import sys
import threading
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not sys.stderr.isatty():
    # a server log (a Space's, a file) keeps every redraw of a progress bar: a few, not one per batch (the
    # page shows the KB's progress as it goes, and the log says when it is ready)
    os.environ.setdefault("TQDM_MININTERVAL", "30")

from tqdm import tqdm  # noqa: E402  (reads TQDM_* when imported)

from demo.bodies import body_limit_middleware  # noqa: E402
from demo.inputs import MAX_UPLOAD  # noqa: E402
from demo.layout import CSS_PATH, SESSION_STATES, build_app  # noqa: E402
from demo.sessions import heartbeat_middleware  # noqa: E402


class OwnLine(logging.StreamHandler):
    """Each log record on a line of its own, even while a progress bar (drawn without a newline until it
    ends, e.g. the KB's encoding in its thread) is on the current line of a log file."""

    def emit(self, record):
        if not self.stream.isatty() and len(getattr(tqdm, "_instances", ())):
            self.stream.write("\n")
        super().emit(record)


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[OwnLine()])
log = logging.getLogger("app")
started = time.monotonic()

demo = build_app()


def report_ready(kb):
    """One line once the knowledge base can be linked against (or why it cannot)."""
    kb.wait()
    if kb.ready:
        log.info("ready: %d entities in %.1f s", len(kb.linker.store), time.monotonic() - started)
    else:
        log.error("not ready: %s", kb.error)


if __name__ == "__main__":
    threading.Thread(target=report_ready, args=(demo.app_state.kb,), name="report-ready", daemon=True).start()
    # uploads past MAX_UPLOAD are refused while they arrive, before anything is stored, and so are other
    # bodies past demo.bodies.MAX_BODY_BYTES; the pages' heartbeats keep their sessions' added entities
    demo.queue(default_concurrency_limit=1, max_size=256).launch(
        show_error=False, max_file_size=MAX_UPLOAD, state_session_capacity=SESSION_STATES, css_paths=[CSS_PATH],
        app_kwargs={"middleware": body_limit_middleware() + heartbeat_middleware(demo.app_state.sessions)})
