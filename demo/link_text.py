"""Every mention of a text found and linked (`Linker.link_text`): the API's /link_text for gradio_client, and
the page's "Find every mention" (the text with each linked span highlighted under its best entity; a click
on a span links it as the mention, with its ranking and evidence). Bounded as /link is: the text's length and Top k are checked when the request joins the
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
        with app.model_lock:
            result = linker.link_text(sentence, image, int(top_k), extra=overlay, max_spans=MAX_SPANS)
    return {"sentence": sentence, "model": app.loaded.description, "zero_shot": app.loaded.zero_shot, **result}


def register(app, sentence, image, top_k, out):
    """A hidden button publishing /link_text over the page's own sentence, image and Top k inputs."""
    def link_text(sentence, image_path, top_k, request: gr.Request = None):
        return api_link_text(app, sentence, image_path, top_k, request)

    gr.Button(visible=False).click(link_text, [sentence, image, top_k], out, api_name="link_text",
                                   concurrency_id="model", validator=input_validator("sentence", "image", "top_k"))


NIL_LABEL = "not in the KB"


def highlighted(sentence: str, mentions: list) -> tuple:
    """The text as HighlightedText's (piece, label) pairs, each found span labelled with its best entity's
    name (or NIL_LABEL), the text between spans unlabelled; and the mention each piece is (None between).
    Spans are sorted and never overlap."""
    pieces, owners, at = [], [], 0
    for i, m in enumerate(mentions):
        if m["start"] > at:
            pieces.append((sentence[at:m["start"]], None))
            owners.append(None)
        best = m["results"][0]["name"] if m["results"] and not m["nil"] else NIL_LABEL
        pieces.append((sentence[m["start"]:m["end"]], best or NIL_LABEL))
        owners.append(i)
        at = m["end"]
    if at < len(sentence):
        pieces.append((sentence[at:], None))
        owners.append(None)
    return pieces, owners


def ui_link_text(app, sentence, image_path, top_k, request: gr.Request = None):
    """The page's "Find every mention": -> the highlighted text (shown), a line saying what was found."""
    if app.still_preparing("finding every mention", "Finding mentions"):
        return gr.skip(), gr.skip()
    result = api_link_text(app, sentence, image_path, top_k, request)
    mentions = result["mentions"]
    linked = sum(not m["nil"] for m in mentions)
    if not mentions:
        note = "No name of the knowledge base occurs in this text."
    else:
        note = (f"{len(mentions)} mention{'s' if len(mentions) != 1 else ''} found, {linked} linked"
                + (f"; {result['skipped']} more skipped (at most {MAX_SPANS} a text)" if result["skipped"] else "")
                + ". Click one for its ranking and evidence.")
    return gr.update(value=highlighted(sentence, mentions)[0], visible=bool(mentions)), note


def span_answer(app, sentence, image_path, top_k, index, words, request=None):
    """The answer for the span shown as piece `index` (its `words`) of the highlighted text: the text is
    linked again (the same spans, candidates and scores as shown) and that span's own ranking is drawn as a
    link's, MIMIC having read its context as the sentence. None for a piece that is no span (any more)."""
    result = api_link_text(app, sentence, image_path, top_k, request)
    pieces, owners = highlighted(sentence, result["mentions"])
    if not isinstance(index, int) or not 0 <= index < len(pieces) or owners[index] is None \
            or pieces[index][0] != words:
        return None
    m = result["mentions"][owners[index]]
    start, end = m["context"]
    overlay = app.sessions.overlay(getattr(request, "session_hash", None))
    return app.answer(m, uploaded_image(image_path), None, overlay, sentence[start:end], m["text"])


def every_mention_view():
    """The highlighted text and its note (the layout places them above the answer)."""
    note = gr.Markdown(elem_id="mentions-note")
    view = gr.HighlightedText(label="Every mention, labelled with its best entity (click one for its ranking and "
                                    "evidence)", visible=False, show_legend=False, combine_adjacent=False,
                              elem_id="mentions", interactive=False)
    return view, note


def wire_every_mention(app, button, view, note, sentence, mention, image, top_k, link_outputs, then_explain):
    """Find every mention -> the highlighted text; a click on a span puts its words in Mention and links them as
    Link does (the card, the ranking, the evidence; the whole text as the sentence)."""
    def find(sentence, image_path, top_k, request: gr.Request = None):
        return ui_link_text(app, sentence, image_path, top_k, request)

    def link_span(sentence, image_path, top_k, evt: gr.SelectData, request: gr.Request = None):
        value = evt.value if isinstance(evt.value, (list, tuple)) and len(evt.value) == 2 else (None, None)
        outputs = span_answer(app, sentence, image_path, top_k, evt.index, value[0], request) \
            if value[1] is not None else None
        if outputs is None:
            return (gr.skip(),) * (1 + len(link_outputs))
        return (value[0], *outputs)

    limits = input_validator("sentence", "image", "top_k")
    button.click(find, [sentence, image, top_k], [view, note], api_visibility="private", concurrency_id="model",
                 validator=limits)
    then_explain(view.select(link_span, [sentence, image, top_k], [mention, *link_outputs], api_visibility="private",
                             concurrency_id="model", validator=limits))
