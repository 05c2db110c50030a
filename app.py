"""Entry point of the demo (Hugging Face Spaces runs this): python app.py

Honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; MIMIC_CHECKPOINT, MIMIC_ENCODER and MIMIC_CACHE
choose the weights, the CLIP and the cache folder (see README).
"""
import logging
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from demo.bodies import body_limit_middleware  # noqa: E402
from demo.inputs import MAX_UPLOAD  # noqa: E402
from demo.layout import SESSION_STATES, build_app  # noqa: E402
from demo.sessions import heartbeat_middleware  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

demo = build_app()

if __name__ == "__main__":
    # uploads past MAX_UPLOAD are refused while they arrive, before anything is stored, and so are other
    # bodies past demo.bodies.MAX_BODY_BYTES; the pages' heartbeats keep their sessions' added entities
    demo.queue(default_concurrency_limit=1, max_size=256).launch(
        show_error=False, max_file_size=MAX_UPLOAD, state_session_capacity=SESSION_STATES,
        app_kwargs={"middleware": body_limit_middleware() + heartbeat_middleware(demo.app_state.sessions)})
