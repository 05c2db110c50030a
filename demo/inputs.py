"""What a visitor sends, bounded on the server: the limits of every input, their checks (as a Gradio
validator when the request joins the queue, and again in the handler), the image and Top k components
that leave the checking to us, and the mention's occurrences in the sentence."""
import itertools
import math
import re

import gradio as gr
from gradio.utils import is_in_or_equal

from mimic.kb.overlay import MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS
from mimic.model.images import ImageError, open_image

from .pictures import data_url_image, example_thumbnail, picture_data, unusable
from .safe_text import markdown_literal

MAX_SENTENCE_CHARS = 100_000
MAX_MENTION_CHARS = 1_000
MAX_OCCURRENCES = 50  # occurrences of the mention offered in the chooser
MAX_TOP_K = 20
MAX_ENTITY_CHARS = 40  # an entity for /explain: a KB index or a session id ("session:N")
MAX_UPLOAD = "20mb"  # per file, refused by the server before it is stored (pictures.MAX_UPLOAD_BYTES)
MAX_NOTE_CHARS = 1_000  # the message of an added entity (name and description are bounded before it)
LIMITS = {"sentence": MAX_SENTENCE_CHARS, "mention": MAX_MENTION_CHARS, "name": MAX_NAME_CHARS,
          "description": MAX_DESCRIPTION_CHARS, "entity": MAX_ENTITY_CHARS, "message": MAX_NOTE_CHARS}


class ImageProblem(str):
    """Why the image a client sent cannot be used: what ImageFile hands over in its place."""


class ImageFile(gr.Image):
    """Gradio's image input, handing the picture over unopened: mimic.model.images opens it safely and says
    what is wrong with a bad file (Gradio's own conversion would fail with a bare error). A picture sent
    as a data URL is bounded like an upload and handed over as its bytes (Gradio would decode it at full
    size); a path is taken only inside Gradio's upload folder (a client may name any path); an example's
    picture is sent to the page as a data URL (a thumbnail in the examples table), not as a server path."""
    is_template = True  # the page draws it with Gradio's image widget

    def preprocess(self, payload):
        """-> an uploaded file's path, a data URL's bytes, None, or an ImageProblem (refused by the
        validator as the request joins the queue, with the other limits, and again by the handler)."""
        if payload is None:
            return None
        try:
            if payload.url and payload.url.startswith("data:"):  # a pasted or webcam image, or an API client's
                return data_url_image(payload.url)
            if not payload.path:
                return None
            if not is_in_or_equal(payload.path, self.GRADIO_CACHE):
                raise unusable("it was not uploaded (upload the file, or send it as a data URL)")
        except gr.Error as e:
            return ImageProblem(e.message)
        return str(payload.path)

    def postprocess(self, value):
        return picture_data(value, self.format)

    def process_example(self, value):
        return example_thumbnail(value)


class TopK(gr.Slider):
    """Gradio's slider without its own range check on the server, which answers a bad value with a bare
    HTTP 400 once a validator runs: `input_validator` checks the range instead and says so."""
    is_template = True  # the page draws it with Gradio's slider widget

    def preprocess(self, payload):
        return payload


def input_problem(what: str, value) -> str:
    """What is wrong with `value` as the input `what` ("sentence", "mention", "name", "description",
    "entity", "message", "image" or "top_k"), or "" when it is within its limits."""
    if what == "image":
        return str(value) if isinstance(value, ImageProblem) else ""
    if what == "top_k":
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and value == int(value))
        return "" if ok and 1 <= value <= MAX_TOP_K else f"Top k must be a whole number from 1 to {MAX_TOP_K}."
    limit = LIMITS[what]
    if value is not None and not isinstance(value, str):
        return f"The {what} must be text."
    if value and len(value) > limit:
        return f"The {what} is {len(value):,} characters long; the limit is {limit:,} characters."
    return ""


def added_note(result) -> str:
    """The note under "Add an entity", from /add_entity's answer (the page passes it back: a client of the
    page's endpoints may pass anything, so its length is bounded and anything else shows nothing)."""
    message = result.get("message") if isinstance(result, dict) else None
    check_inputs(message=message)
    return markdown_literal(message) if message else ""


def check_inputs(**values):
    """Refuse, before any work, an input past its limit (the page's boxes say the same; a client of the
    API, or of the page's own endpoints, can send anything)."""
    for what, value in values.items():
        if input_problem(what, value):
            raise gr.Error(input_problem(what, value))


def input_validator(*names):
    """A Gradio validator for a handler whose inputs are `names` (None: an input it does not check).
    Gradio runs it when the request joins the queue, so a refusal comes at once, without waiting for
    the model's turn; the handler checks again (check_inputs) should it be called another way."""
    def validate(*values):
        return [gr.validate(not input_problem(name, value), input_problem(name, value)) if name
                else gr.validate(True, "") for name, value in zip(names, values)]
    return validate


def occurrences(sentence: str, mention: str, limit: int = MAX_OCCURRENCES) -> list:
    """The (start, end) of the mention's first `limit` occurrences in the sentence, case-insensitive."""
    if not sentence or not mention or not mention.strip():
        return []
    found = re.finditer(re.escape(mention.strip()), sentence, flags=re.IGNORECASE)
    return [m.span() for m in itertools.islice(found, limit)]


def describe_mention(sentence: str, mention: str, chosen=0):
    """The sentence with the chosen occurrence of the mention highlighted, and the occurrence chooser."""
    check_inputs(sentence=sentence, mention=mention)
    spans = occurrences(sentence or "", mention or "")
    if not spans:
        note = [(sentence or "", None)] if sentence else []
        if sentence and mention and mention.strip():
            note = [(sentence, None), ("  ← the mention does not occur in the sentence", "problem")]
        return note, gr.update(choices=[], value=None, visible=False)
    chosen = chosen if isinstance(chosen, int) and 0 <= chosen < len(spans) else 0
    start, end = spans[chosen]
    highlighted = [(sentence[:start], None), (sentence[start:end], "mention"), (sentence[end:], None)]
    choices = []
    for i, (s, e) in enumerate(spans):
        left, right = sentence[max(0, s - 20):s], sentence[e:e + 20]
        choices.append((f"{i + 1}: …{left}[{sentence[s:e]}]{right}…", i))
    return highlighted, gr.update(choices=choices, value=chosen, visible=len(spans) > 1)


def uploaded_image(image_path):
    """The visitor's image (an uploaded file's path, or a data URL's bytes), upright RGB, or None; a file
    that cannot be used is a gr.Error saying why."""
    if not image_path:
        return None
    if isinstance(image_path, ImageProblem):
        raise gr.Error(str(image_path))
    try:
        return open_image(image_path)
    except ImageError as e:
        raise unusable(e)
