"""Entry point of the demo (Hugging Face Spaces runs this): python app.py

Honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; MIMIC_CHECKPOINT, MIMIC_ENCODER and MIMIC_CACHE
choose the weights, the CLIP and the cache folder (see README); MIMIC_KB (a store, an entity file with
MIMIC_KB_IMAGES, or a Hub dataset owner/name) the KB the page serves (docs/wikidata.md).
"""
import logging
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from demo.inputs import MAX_UPLOAD  # noqa: E402
from demo.layout import SESSION_STATES, build_app  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

demo = build_app()

if __name__ == "__main__":
    # uploads past MAX_UPLOAD are refused while they arrive, before anything is stored
    demo.queue(default_concurrency_limit=1, max_size=256).launch(show_error=False, max_file_size=MAX_UPLOAD,
                                                                  state_session_capacity=SESSION_STATES)
