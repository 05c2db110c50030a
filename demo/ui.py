"""The Gradio page: inputs, ranked entities, unit scores, the explanation panel (relevance maps over
patches and words, CMFU α, TGLU token attention), and the /link, /explain and /add_entity APIs."""
import contextlib
import itertools
import json
import logging
import os
import re

import gradio as gr

from mimic.explain.relevance import UnsupportedBackbone, tracer_for
from mimic.kb.overlay import MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS
from mimic.linker import Query, QueryError, check_query
from mimic.model.images import ImageError, open_image
from mimic.model.processing import mention_text

from . import heatmap, plots
from .kb import DEMO_KB, NO_IMAGE, DemoKB, compact_picture
from .models import load_demo_model
from .safe_text import markdown_literal
from .sessions import PER_SESSION, SessionEntities, open_picture

log = logging.getLogger(__name__)


LINK_FAILED = "Something went wrong while linking; the details are in the server log."


@contextlib.contextmanager
def visitor_errors(failure: str, expected=(), logged: str = ""):
    """What a visitor sees of an error: a refusal (gr.Error) or an `expected` error as its own message; any
    other error only as `failure`, its traceback kept in the server log under `logged`."""
    try:
        yield
    except gr.Error:
        raise
    except expected as e:
        raise gr.Error(str(e))
    except Exception:
        log.exception(logged)
        raise gr.Error(failure)


TABLE_HEADERS = ["Rank", "Image", "Entity", "Description", "S"]
MAX_SENTENCE_CHARS = 100_000
MAX_MENTION_CHARS = 1_000
MAX_OCCURRENCES = 50  # occurrences of the mention offered in the chooser
MAX_TOP_K = 20
MAX_ENTITY_CHARS = 40  # an entity for /explain: a KB index or a session id ("session:N")
MAX_UPLOAD = "20mb"  # per file, refused by the server before it is stored
DELETE_CACHE = (600, 3600)  # Gradio's temporary files: every 10 minutes, remove those older than an hour
# Gradio keeps each browser session's state (the last linked mention, its explanation: about 0.2 MB) for
# this many sessions, dropping the oldest beyond: bounded memory (its own default, 10,000, is about 2 GB)
SESSION_STATES = 2000
SESSION_MARK = " (added in this session)"
LIMITS = {"sentence": MAX_SENTENCE_CHARS, "mention": MAX_MENTION_CHARS, "name": MAX_NAME_CHARS,
          "description": MAX_DESCRIPTION_CHARS, "entity": MAX_ENTITY_CHARS}
UNIT_NAMES = {"s": "S", "s_t": "S_T", "s_v": "S_V", "s_c": "S_C"}
PATCH_UNITS = [("S (overall)", "s"), ("S_V (vision)", "s_v"), ("S_C (cross-modal)", "s_c")]  # S_T reads no image
WORD_UNITS = [("S (overall)", "s"), ("S_T (text)", "s_t")]
INTRO = """# 🔗 MIMIC entity linking
Type a sentence, mark the **mention** (the words that name something), optionally add an image, and press
**Link**. MIMIC ranks the entities of a small demo knowledge base and shows its evidence: the text unit
**S_T**, the vision unit **S_V**, the cross-modal unit **S_C** and their mean **S**, where it looked in
the images, and which words it matched. Click a ranked entity to inspect it."""


class ImageFile(gr.Image):
    """Gradio's image input, handing the uploaded file over unopened: mimic.model.images opens it safely
    and says what is wrong with a bad file (Gradio's own conversion would fail with a bare error)."""
    is_template = True  # the page draws it with Gradio's image widget

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # a pasted or webcam image
            return super().preprocess(payload)
        return str(payload.path) if payload.path else None


class TopK(gr.Slider):
    """Gradio's slider without its own range check on the server, which answers a bad value with a bare
    HTTP 400 once a validator runs: `input_validator` checks the range instead and says so."""
    is_template = True  # the page draws it with Gradio's slider widget

    def preprocess(self, payload):
        return payload


def input_problem(what: str, value) -> str:
    """What is wrong with `value` as the input `what` ("sentence", "mention", "name", "description",
    "entity" or "top_k"), or "" when it is within its limits."""
    if what == "top_k":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == int(value)
        return "" if ok and 1 <= value <= MAX_TOP_K else f"Top k must be a whole number from 1 to {MAX_TOP_K}."
    limit = LIMITS[what]
    if value is not None and not isinstance(value, str):
        return f"The {what} must be text."
    if value and len(value) > limit:
        return f"The {what} is {len(value):,} characters long; the limit is {limit:,} characters."
    return ""


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


def _description(text: str, limit: int = 140) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def candidate_key(row: dict):
    """What "Inspect candidate" holds for a row: the KB index, or the id of a session entity."""
    return row["index"] if row.get("index") is not None else row["id"]


def verdict_markdown(result: dict) -> str:
    rows = result["results"]
    if result["nil"]:
        return ("### ∅ No matching entity in the KB\nThe best score is below the NIL threshold calibrated "
                "for this checkpoint; the closest entities are listed anyway.")
    if not rows:
        return ""
    top = rows[0]
    where = SESSION_MARK if top.get("session") else (
        f" ({markdown_literal(top['qid'])})" if top.get("qid") else "")
    return f"### → {markdown_literal(top['name'])}{where}"


def uploaded_image(image_path):
    """The visitor's image, upright RGB, or None; a file that cannot be used is a gr.Error saying why."""
    if not image_path:
        return None
    try:
        return open_image(image_path)
    except ImageError as e:
        raise gr.Error(f"The image cannot be used: {e}. Try a JPEG, PNG or WebP photo, or remove it.")


def _session(request) -> str:
    """Gradio's session hash: one browser tab, or one gradio_client Client."""
    return getattr(request, "session_hash", None)


class DemoApp:
    def __init__(self, loaded=None, kb: DemoKB = None, sessions: SessionEntities = None):
        self.loaded = loaded or load_demo_model()
        self.kb = (kb or DemoKB(self.loaded)).start()
        self.sessions = sessions or SessionEntities()
        # relevance maps depend only on the model's encoder: decided once, not tried again on each request
        try:
            tracer_for(self.loaded.model)
            self.no_relevance = None
        except UnsupportedBackbone as e:
            self.no_relevance = f"Relevance maps are not available here: {e}."

    # -- status -----------------------------------------------------------------------------------
    def status_markdown(self) -> str:
        lines = [f"**Model:** {self.loaded.description}"]
        lines += [f"⚠️ **{w}**" for w in self.loaded.warnings]
        lines.append(f"**Knowledge base:** {self.kb.status}")
        return "\n\n".join(lines)

    def _linker(self):
        if self.kb.error:
            raise gr.Error(self.kb.error)
        if not self.kb.ready:
            raise gr.Error(f"{self.kb.status} Please try again in a few seconds.")
        self.kb.linker.refresh()  # a `kb add/update/remove` on the served store shows up at once
        return self.kb.linker

    # -- linking ----------------------------------------------------------------------------------
    def _query(self, sentence, mention, image_path, top_k, request):
        """Checked inputs -> (result, upright image or None, the mention's terms, the session's overlay);
        every problem as a gr.Error."""
        check_inputs(sentence=sentence, mention=mention, top_k=top_k)
        linker = self._linker()
        image = uploaded_image(image_path)
        overlay = self.sessions.overlay(_session(request))
        try:
            sentence, mention = check_query(sentence, mention)
            terms = linker.mention_terms([Query(sentence, mention, image)])
            result = linker.link_terms(terms, int(top_k), extra=overlay)
        except QueryError as e:
            raise gr.Error(str(e))
        return result, image, terms, overlay

    def api_link(self, sentence, mention, image_path, top_k, request: gr.Request = None):
        """/link: the ranked entities with every unit score (the `link` command's fields)."""
        with visitor_errors(LINK_FAILED, logged="/link failed"):
            result, _, _, _ = self._query(sentence, mention, image_path, top_k, request)
        return {"sentence": sentence, "mention": mention, "model": self.loaded.description,
                "zero_shot": self.loaded.zero_shot, **result}

    def _entity(self, key, overlay) -> dict:
        """The record of a KB index or a session entity id."""
        return self.kb.linker.entity_record(key, overlay)[1]

    def _thumbnail(self, record: dict) -> str:
        return record.get("thumbnail", NO_IMAGE) if record.get("session") else self.kb.thumbnail(record)

    def ui_link(self, sentence, mention, image_path, top_k, request: gr.Request = None):
        with visitor_errors(LINK_FAILED, logged="linking failed"):
            result, image, terms, overlay = self._query(sentence, mention, image_path, top_k, request)
            rows = result["results"]
            records = [self._entity(candidate_key(r), overlay) for r in rows]
        table = [[r["rank"], self._thumbnail(meta), r["name"] + (SESSION_MARK if r.get("session") else ""),
                  _description(meta.get("description", "")), round(r["score"], 3)] for r, meta in zip(rows, records)]
        choices = [(f"{r['rank']}. {r['name']}", candidate_key(r)) for r in rows]
        # what explain needs: the encoded mention, and its picture shrunk (never the upload or its path)
        state = {"sentence": sentence, "mention": mention, "rows": rows, "terms": terms,
                 "picture": compact_picture(image) if image is not None else None}
        chosen = candidate_key(rows[0]) if rows else None
        return (table, plots.score_chart(rows), gr.update(choices=choices, value=chosen), state,
                verdict_markdown(result))

    def add_entity(self, name, description, image_path, request: gr.Request = None):
        """/add_entity: encode a new entity for this session only; it is linkable at once in this session."""
        check_inputs(name=name, description=description)
        linker = self._linker()
        image = uploaded_image(image_path)
        precision = linker.store.manifest.get("precision", "mixed")  # the session's terms rounded like the KB's
        # QueryError: a limit, or an empty name
        with visitor_errors("The entity could not be added; the details are in the server log.", QueryError,
                            logged="adding an entity failed"):
            record = self.sessions.add(_session(request), self.loaded.model, precision, name, description, image)
        count, limit = len(self.sessions.overlay(_session(request))), self.sessions.per_session
        message = (f"Added “{record['name']}” for this session ({count} of {limit}): it can be linked right away, "
                   "by you only, until you close the page.")
        return {"added": {k: record[k] for k in ("id", "name", "description", "has_image")}, "count": count,
                "limit": limit, "message": message}

    def end_session(self, request: gr.Request = None):
        """The page was closed (or the client went away): forget the session's entities."""
        self.sessions.end(_session(request))

    def select_row(self, state, evt: gr.SelectData):
        rows = (state or {}).get("rows") or []
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not rows or not isinstance(row, int) or not 0 <= row < len(rows):
            return gr.update()
        return gr.update(value=candidate_key(rows[row]))

    def ui_explain(self, state, entity_key, patch_unit="s", word_unit="s", request: gr.Request = None):
        """The evidence for the selected candidate (a KB entity or one of the session's): the relevance of
        each patch of both pictures and of each word, and, with a trained checkpoint, CMFU's α and TGLU's
        token attention. -> the panel's updates, then the explanation kept to redraw another unit."""
        hidden = gr.update(visible=False)
        if not state or entity_key is None:
            return (*[hidden] * 6, gr.update(value="", visible=False), None)
        overlay = self.sessions.overlay(_session(request))
        linker, notes = self.kb.linker, []
        with visitor_errors("Could not explain this candidate; the details are in the server log.",
                            (QueryError, ImageError), logged="explanation failed"):
            image = open_picture(state["picture"]) if state.get("picture") else None
            sentence, mention = check_query(state["sentence"], state["mention"])
            out = linker.explain(sentence, mention, image, entity_key, state.get("terms"), extra=overlay,
                                 relevance=self.no_relevance is None)
            if self.no_relevance:
                notes.append(self.no_relevance)
            meta = self._entity(entity_key, overlay)
        entity_image = self._entity_picture(meta)
        explanation = {"name": meta["name"], "text": mention_text(mention, sentence),
                       "max_tokens": linker.model.processor.max_length, "mention_picture": state.get("picture"),
                       "entity_picture": compact_picture(entity_image) if entity_image is not None else None,
                       **{k: out[k] for k in ("mention_relevance", "entity_relevance", "token_relevance") if k in out}}
        if image is None:
            notes.append("The mention has no image: the model sees all-zero pixels.")
        if entity_image is None:
            notes.append(f"{markdown_literal(meta['name'])} has no image.")
        if self.loaded.zero_shot:  # α and the token attention carry nothing then
            notes.append("Under the zero-shot initialisation the CMFU patch attention α is uniform and the TGLU "
                         "token attention is untrained (G2L does not enter the score): they are not drawn. The "
                         "relevance maps hold under any initialisation.")
            attention = [hidden] * 3
        else:
            attention = [self._alpha(image, out["mention_alpha"], "Mention image"),
                         self._alpha(entity_image, out["entity_alpha"], meta["name"]),
                         gr.update(value=plots.token_attention(out["attention"], out["entity_tokens"],
                                                               out["mention_tokens"], meta["name"]), visible=True)]
        return (*self.patch_relevance(explanation, patch_unit), self.word_relevance(explanation, word_unit),
                *attention, gr.update(value=" ".join(notes), visible=bool(notes)), explanation)

    @staticmethod
    def _alpha(picture, alpha, label: str):
        if picture is None:
            return gr.update(value=heatmap.blank(), visible=True, label=f"{label}: no image (zeros)")
        return gr.update(value=heatmap.overlay(picture, alpha.tolist()), visible=True,
                         label=f"{label}: CMFU patch attention α (where CMFU pooled)")

    @staticmethod
    def patch_relevance(explanation, unit):
        """The relevance maps of both pictures for one unit ("s", "s_v" or "s_c")."""
        if not explanation or "mention_relevance" not in explanation:
            return gr.update(visible=False), gr.update(visible=False)
        unit = unit if unit in UNIT_NAMES else "s"
        updates = []
        for side, label in (("mention", "Mention image"), ("entity", explanation["name"])):
            grids, picture = explanation[f"{side}_relevance"], explanation[f"{side}_picture"]
            if grids is None or picture is None:
                updates.append(gr.update(value=heatmap.blank(), visible=True, label=f"{label}: no image"))
            else:
                updates.append(gr.update(value=heatmap.overlay_grid(open_picture(picture), grids[unit]),
                                         visible=True, label=f"{label}: relevance for {UNIT_NAMES[unit]}"))
        return tuple(updates)

    @staticmethod
    def word_relevance(explanation, unit):
        """The words the model read, coloured by their relevance for one unit ("s" or "s_t")."""
        if not explanation or "token_relevance" not in explanation:
            return gr.update(visible=False)
        unit = unit if unit in ("s", "s_t") else "s"
        words = explanation["token_relevance"]
        return gr.update(value=heatmap.word_highlights(explanation["text"], words["tokens"], words[unit]),
                         visible=True, label=f"Words: relevance for {UNIT_NAMES[unit]} (the model reads the mention, "
                                             f"[SEP], then the sentence: {explanation['max_tokens']} tokens at most)")

    def api_explain(self, sentence, mention, image_path, entity, request: gr.Request = None):
        """/explain: the evidence for one (mention, entity) pair, as Linker.explain returns it."""
        check_inputs(sentence=sentence, mention=mention, entity=entity)
        if entity is None or not str(entity).strip():
            raise gr.Error("Please give the entity: its \"index\" in /link's results, or the \"id\" of an entity "
                           "added in this session.")
        linker = self._linker()
        image = uploaded_image(image_path)
        overlay = self.sessions.overlay(_session(request))
        key = entity.strip()  # a session entity's id, else a KB index (checked as Linker.explain checks it)
        with visitor_errors("Something went wrong while explaining; the details are in the server log.",
                            (QueryError, UnsupportedBackbone), logged="/explain failed"):
            out = linker.explain(sentence, mention, image, key, extra=overlay)
            index, meta = linker.entity_record(key, overlay)
        record = {"index": index, "id": meta.get("id"), "qid": meta.get("qid"),
                  "name": meta.get("name"), "session": bool(meta.get("session"))}
        return {"sentence": sentence, "mention": mention, "entity": record, "model": self.loaded.description,
                "zero_shot": self.loaded.zero_shot,
                **{k: v.tolist() if hasattr(v, "tolist") else v for k, v in out.items()}}

    @staticmethod
    def _entity_picture(meta: dict):
        if meta.get("picture"):
            return open_picture(meta["picture"])
        if meta.get("image"):
            try:
                return open_image(meta["image"])
            except ImageError:
                return None
        return None


def _examples():
    path = os.path.join(DEMO_KB, "examples.json")
    with open(path, encoding="utf-8") as f:
        examples = json.load(f)
    rows = [[e["sentence"], e["mention"], os.path.join(DEMO_KB, e["image"]) if e.get("image") else None, 5]
            for e in examples]
    labels = [e.get("note", "")[:80] or e["sentence"][:80] for e in examples]
    return rows, labels


def build_app(app: DemoApp = None) -> gr.Blocks:
    app = app or DemoApp()
    # Gradio keeps uploads in its temporary folder: files older than an hour go, checked every 10 minutes
    # (the app keeps no upload: the pictures it needs are decoded and shrunk into the session's state).
    with gr.Blocks(title="MIMIC entity linking", delete_cache=DELETE_CACHE) as page:
        gr.Markdown(INTRO)
        status = gr.Markdown(app.status_markdown(), elem_id="status")
        timer = gr.Timer(1.0, active=not app.kb.ready)
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                sentence = gr.Textbox(label="Sentence", lines=3, max_length=MAX_SENTENCE_CHARS,
                                      placeholder="e.g. Hopper painted Nighthawks in 1942.")
                mention = gr.Textbox(label="Mention", placeholder="e.g. Hopper", max_length=MAX_MENTION_CHARS)
                occurrence = gr.Radio(label="Which occurrence? (MIMIC reads the mention's words and the whole "
                                            "sentence; the position only changes the highlight; the first "
                                            f"{MAX_OCCURRENCES} are listed)",
                                      choices=[], type="value", visible=False)
                highlight = gr.HighlightedText(label="Mention in context", color_map={"mention": "#fbbf24",
                                                                                      "problem": "#f87171"},
                                               show_legend=False, combine_adjacent=False)
                image = ImageFile(label="Image", type="filepath", image_mode=None,
                                  sources=["upload", "clipboard", "webcam"], height=240)
                top_k = TopK(label="Top k", minimum=1, maximum=MAX_TOP_K, step=1, value=5)
                link = gr.Button("Link", variant="primary")
            with gr.Column(scale=3):
                table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["number", "html", "str", "str", "number"],
                                     label="Ranked entities (click a row to inspect it)", interactive=False,
                                     wrap=True, elem_id="ranked", column_widths=["8%", "14%", "22%", "44%", "12%"])
                verdict = gr.Markdown(elem_id="verdict")
                chart = gr.Plot(label="Unit scores", elem_id="scores")
        with gr.Row():
            candidate = gr.Dropdown(label="Inspect candidate", choices=[], interactive=True, elem_id="candidate")
        explanation = gr.State(None)
        gr.Markdown(RELEVANCE_HELP)
        patch_unit = gr.Radio(PATCH_UNITS, value="s", label="Patch relevance for (S_T reads no image)",
                              elem_id="patch-unit")
        with gr.Row():
            mention_relevance = gr.Image(label="Mention image: relevance", visible=False, interactive=False,
                                         elem_id="mention-relevance", height=300)
            entity_relevance = gr.Image(label="Candidate image: relevance", visible=False, interactive=False,
                                        elem_id="entity-relevance", height=300)
        word_unit = gr.Radio(WORD_UNITS, value="s", label="Word relevance for", elem_id="word-unit")
        words = gr.HighlightedText(label="Words: relevance", visible=False, show_legend=False,
                                   combine_adjacent=False, elem_id="word-relevance")
        gr.Markdown(ATTENTION_HELP)
        explain_note = gr.Markdown(visible=False)
        with gr.Row():
            mention_map = gr.Image(label="Mention image: CMFU patch attention α", visible=False, interactive=False,
                                   elem_id="mention-heatmap", height=300)
            entity_map = gr.Image(label="Candidate image: CMFU patch attention α", visible=False, interactive=False,
                                  elem_id="entity-heatmap", height=300)
        tokens = gr.Plot(label="TGLU token-to-token attention", visible=False, elem_id="token-attention")
        rows, labels = _examples()
        gr.Examples(rows, inputs=[sentence, mention, image, top_k], example_labels=labels,
                    label="Examples (the image or the context decides between entities that share a name)")
        with gr.Accordion("Add an entity (for this session only)", open=False):
            gr.Markdown(ADD_HELP)
            with gr.Row():
                new_name = gr.Textbox(label="Name", max_length=MAX_NAME_CHARS)
                new_description = gr.Textbox(label="Description", lines=2, max_length=MAX_DESCRIPTION_CHARS)
                new_image = ImageFile(label="Entity image", type="filepath", image_mode=None,
                                      sources=["upload", "clipboard"], height=160)
            add_button = gr.Button("Add entity")
            added = gr.JSON(label="Added", visible=False)
            add_note = gr.Markdown()
        with gr.Accordion("API", open=False):
            gr.Markdown(API_HELP)
        api_out = gr.JSON(visible=False)
        api_button = gr.Button(visible=False)
        api_entity = gr.Textbox(visible=False, label="Entity", max_length=MAX_ENTITY_CHARS)
        api_explain_button = gr.Button(visible=False)

        # the highlighted sentence and the occurrence chooser follow the two text boxes
        for box in (sentence, mention):
            box.change(describe_mention, [sentence, mention], [highlight, occurrence], api_visibility="private",
                       validator=input_validator("sentence", "mention"))
        occurrence.input(describe_mention, [sentence, mention, occurrence], [highlight, occurrence],
                         api_visibility="private", validator=input_validator("sentence", "mention", None))
        timer.tick(lambda: (app.status_markdown(), gr.Timer(active=not (app.kb.ready or app.kb.error))),
                   outputs=[status, timer], api_visibility="private")
        explain_inputs = [state, candidate, patch_unit, word_unit]
        explain_outputs = [mention_relevance, entity_relevance, words, mention_map, entity_map, tokens, explain_note,
                           explanation]
        query_limits = input_validator("sentence", "mention", None, "top_k")
        gr.on([link.click, sentence.submit, mention.submit], app.ui_link, [sentence, mention, image, top_k],
              [table, chart, candidate, state, verdict], api_visibility="private", concurrency_id="model",
              validator=query_limits).then(
            app.ui_explain, explain_inputs, explain_outputs, api_visibility="private", concurrency_id="model")
        table.select(app.select_row, [state], [candidate], api_visibility="private")
        candidate.change(app.ui_explain, explain_inputs, explain_outputs, api_visibility="private",
                         concurrency_id="model", trigger_mode="always_last")
        # another unit: redrawn from the explanation kept in the session, without the model
        patch_unit.change(app.patch_relevance, [explanation, patch_unit], [mention_relevance, entity_relevance],
                          api_visibility="private")
        word_unit.change(app.word_relevance, [explanation, word_unit], words, api_visibility="private")
        api_button.click(app.api_link, [sentence, mention, image, top_k], api_out, api_name="link",
                         concurrency_id="model", validator=query_limits)
        api_explain_button.click(app.api_explain, [sentence, mention, image, api_entity], api_out, api_name="explain",
                                 concurrency_id="model", validator=input_validator("sentence", "mention", None,
                                                                                   "entity"))
        add_button.click(app.add_entity, [new_name, new_description, new_image], added, api_name="add_entity",
                         concurrency_id="model", validator=input_validator("name", "description", None)).then(lambda r: markdown_literal(r["message"]) if r else "", added,
                                                      add_note, api_visibility="private")
        page.unload(app.end_session)  # the tab is closed: its entities are forgotten
    page.app_state = app
    return page


RELEVANCE_HELP = """### Why this candidate: relevance
How much each 32-px patch of the two pictures and each word moved the score of the candidate
(bright / red = more): gradient-weighted attention relevance (Chefer et al., ICCV 2021) through every layer
of both CLIP towers, under any initialisation. Choose the score it explains: S, or one unit's."""
ATTENTION_HELP = """### Where the units pooled: attention (trained checkpoints)
CMFU's patch attention α and TGLU's token-to-token attention: where the units looked, which is not the
same as what moved the score."""

API_HELP = """Call the linker from Python with `gradio_client`:

```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/")   # or the Space's name, e.g. "owner/mimic-el"
result = client.predict("Hopper painted Nighthawks in 1942.", "Hopper",
                        None,               # or handle_file("photo.jpg")
                        5, api_name="/link")
result["nil"]          # True: no matching entity in the KB (with a calibrated checkpoint)
result["results"][0]   # {"rank", "index", "qid", "name", "score", "s_t", "s_t_g2g", "s_t_g2l",
                       #  "s_v", "s_v_e2m", "s_v_m2e", "s_c"}
# an entity for this Client's session only: linkable by the next calls of the same Client
client.predict("Ada Lovelace", "Wrote the first published algorithm.", None, api_name="/add_entity")
# why an entity: relevance maps (patch grids, word relevance) and attention; the entity is a row's
# "index", or the "id" of an entity added in this session
why = client.predict("Hopper painted Nighthawks in 1942.", "Hopper", None, "3", api_name="/explain")
why["mention_relevance"]   # {"s", "s_t", "s_v", "s_c"}: 7 x 7 grids (rows of floats), null without an image
why["entity_relevance"]    # the same over the entity's picture
why["token_relevance"]     # {"tokens", "s", "s_t"} over the mention's words
why["scores"]              # the pair's S, S_T, S_V, S_C in that pass
```
Also in the answer: "attention" (TGLU, 40 x 40), "mention_alpha" and "entity_alpha" (CMFU α over CLS + 49
patches; uniform, and the attention untrained, when "zero_shot" is true).
Rows of entities added in the session have `"session": true`, `"index": null` and an `"id"` of the form
`"session:N"`. Bad input raises an error whose message says what to fix, and every limit is named."""

ADD_HELP = f"""The entity is encoded now and can be linked at once, **in this browser session only**: other
visitors never see it, it is not saved, and it is forgotten when you close the page (at most
{PER_SESSION} per session). The shared knowledge base changes only when whoever runs the server edits it
with `python -m mimic kb add / update / remove`."""
