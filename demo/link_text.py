"""/link_text: every mention of a text found and linked (`Linker.link_text`), an API-only endpoint for
gradio_client. Bounded as /link is: the text's length and Top k are checked when the request joins the
queue and again here, the picture is opened safely, at most MAX_SPANS spans are linked (the rest are
counted as skipped), and a visitor sees a refusal or one sentence, never a traceback or a server path."""
import gradio as gr

from mimic.kb.mentions import MAX_SPANS
from mimic.linker import QueryError

from .handlers import LINK_FAILED, visitor_errors
from .inputs import check_inputs, input_validator, uploaded_image


def api_link_text(app, sentence, image_path, top_k, request: gr.Request = None) -> dict:
    """-> {"sentence", "model", "zero_shot", "mentions": [{"start", "end", "text", "support", "context",
    "nil", "results"}], "skipped"}; the session's added entities are found and linked too."""
    check_inputs(sentence=sentence, top_k=top_k)
    linker = app._linker()
    image = uploaded_image(image_path)
    overlay = app.sessions.overlay(getattr(request, "session_hash", None))
    with visitor_errors(LINK_FAILED, QueryError, logged="/link_text failed"):
        result = linker.link_text(sentence, image, int(top_k), extra=overlay, max_spans=MAX_SPANS)
    return {"sentence": sentence, "model": app.loaded.description, "zero_shot": app.loaded.zero_shot, **result}


def register(app, sentence, image, top_k, out):
    """A hidden button publishing /link_text over the page's own sentence, image and Top k inputs."""
    def link_text(sentence, image_path, top_k, request: gr.Request = None):
        return api_link_text(app, sentence, image_path, top_k, request)

    gr.Button(visible=False).click(link_text, [sentence, image, top_k], out, api_name="link_text",
                                   concurrency_id="model", validator=input_validator("sentence", None, "top_k"))
