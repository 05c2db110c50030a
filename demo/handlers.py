"""What the page and the API do: link, explain, add an entity for the session; every error a visitor may
see is said plainly (never a traceback), and nothing a visitor does reaches another visitor."""
import contextlib
import logging
import re
import threading

import gradio as gr

from mimic.explain.relevance import UnsupportedBackbone, tracer_for
from mimic.linker import Query, QueryError, check_query
from mimic.model.images import ImageError, open_image
from mimic.model.processing import mention_text

from . import heatmap, plots
from .answer import best_card, ranked_list
from .batching import LinkBatcher, batching_on
from .inputs import check_inputs, uploaded_image
from .kb import NO_IMAGE, DemoKB, compact_picture
from .models import load_demo_model
from .safe_text import markdown_literal
from .sessions import SessionEntities, open_picture

log = logging.getLogger(__name__)

LINK_FAILED = "Something went wrong while linking; the details are in the server log."


def refused(message: str, what: str = "request") -> gr.Error:
    """A refusal: one line in the server log (what was refused, and why), no traceback there, the message
    for the visitor."""
    log.info("refused %s: %s", what, message)
    return gr.Error(message, print_exception=False)


@contextlib.contextmanager
def visitor_errors(failure: str, expected=(), logged: str = "", what: str = "request"):
    """What a visitor sees of an error: a refusal (gr.Error) or an `expected` error as its own message, logged
    as one line; any other error only as `failure`, its traceback kept once in the server log under `logged`."""
    try:
        yield
    except gr.Error as e:
        if e.print_exception:  # a refusal from the input checks: one line, not Gradio's traceback
            log.info("refused %s: %s", what, e.message)
            e.print_exception = False
        raise
    except expected as e:
        raise refused(str(e), what) from None
    except Exception:
        log.exception(logged)
        raise gr.Error(failure, print_exception=False) from None

SESSION_MARK = " (added in this session)"
UNIT_NAMES = {"s": "S", "s_t": "S_T", "s_v": "S_V", "s_c": "S_C"}
MAP_CAPTION = {"s": "what moved S", "s_v": "what moved S_V", "s_c": "what moved S_C"}


def candidate_key(row: dict):
    """What "Inspect candidate" holds for a row: the KB index, or the id of a session entity."""
    return row["index"] if row.get("index") is not None else row["id"]


def preparing(status: str) -> str:
    """The Link button's text while the KB is prepared: "Preparing the knowledge base (n of N)…"."""
    count = re.search(r"(\d+) of (\d+)", status or "")
    return f"Preparing the knowledge base ({count[1]} of {count[2]})…" if count else "Preparing the knowledge base…"

def _session(request) -> str:
    """Gradio's session hash: one browser tab, or one gradio_client Client."""
    return getattr(request, "session_hash", None)


class DemoApp:
    def __init__(self, loaded=None, kb: DemoKB = None, sessions: SessionEntities = None, batch: bool = None):
        self.loaded = loaded or load_demo_model()
        # held by whatever runs the model: links run in the batcher's thread beside the "model" handlers
        self.model_lock = threading.RLock()
        self.batcher = LinkBatcher(lock=self.model_lock) if (batching_on() if batch is None else batch) else None
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
        """One line (what runs, the KB's state), the details on demand: a long warning must not fill a phone's
        first screen."""
        loaded = self.loaded
        kind = {"stand-in": "stand-in CLIP with random weights"}.get(loaded.kind, loaded.kind)
        line = f"**Model:** MIMIC, {kind} · **Knowledge base:** {self.kb.status}"
        if loaded.stand_in:
            summary = "⚠️ Random weights: the results are NOT meaningful (details)"
        elif loaded.warnings:
            summary = f"⚠️ {len(loaded.warnings)} note{'s' * (len(loaded.warnings) > 1)} about the model (details)"
        else:
            summary = "About the model"
        details = "\n\n".join([loaded.description] + [f"⚠️ **{w}**" for w in loaded.warnings])
        return f"{line}\n\n<details><summary>{summary}</summary>\n\n{details}\n\n</details>"

    def link_button(self):
        """Link, or a disabled "Preparing the knowledge base (n of N)…" while it is prepared."""
        if self.kb.ready or self.kb.error:
            return gr.update(value="Link", interactive=True)
        return gr.update(value=preparing(self.kb.status), interactive=False)

    def page_state(self):
        """On each page load and timer tick: the status, the Link button, and whether to keep polling."""
        done = bool(self.kb.ready or self.kb.error)
        return self.status_markdown(), self.link_button(), gr.Timer(active=not done)

    def still_preparing(self, what: str, action: str) -> bool:
        """While the KB is prepared, a page action changes nothing: a grey notice (never a red Error) says
        when `action` works, and the log has one line. False once the KB is ready (or failed)."""
        if self.kb.ready or self.kb.error:
            return False
        gr.Info(f"{preparing(self.kb.status)} {action} works in a few seconds.")
        log.info("refused %s: the knowledge base is being prepared", what)
        return True

    def _linker(self):
        if self.kb.error:
            raise gr.Error(self.kb.error)  # logged as a refusal by visitor_errors, like every gr.Error here
        if not self.kb.ready:
            raise gr.Error(f"{preparing(self.kb.status)} Please try again in a few seconds.")
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
            query = Query(*check_query(sentence, mention), image)
            if self.batcher:  # waits with the other requests for one shared encoder pass
                result, terms = self.batcher.link(linker, query, int(top_k), overlay)
            else:
                terms = linker.mention_terms([query])
                result = linker.link_terms(terms, int(top_k), extra=overlay)
        except QueryError as e:
            raise gr.Error(str(e)) from None
        return result, image, terms, overlay

    def api_link(self, sentence, mention, image_path=None, top_k=5, request: gr.Request = None):
        """/link: the ranked entities with every unit score (the `link` command's fields)."""
        with visitor_errors(LINK_FAILED, logged="/link failed", what="/link"):
            result, _, _, _ = self._query(sentence, mention, image_path, top_k, request)
        return {"sentence": sentence, "mention": mention, "model": self.loaded.description,
                "zero_shot": self.loaded.zero_shot, **result}

    def _entity(self, key, overlay) -> dict:
        """The record of a KB index or a session entity id."""
        return self.kb.linker.entity_record(key, overlay)[1]

    def _thumbnail(self, record: dict) -> str:
        return record.get("thumbnail", NO_IMAGE) if record.get("session") else self.kb.thumbnail(record)

    def ui_link(self, sentence, mention, image_path, top_k, request: gr.Request = None):
        """The page's Link: -> the ranked list, the chart, the candidate to explain, the session's state, the
        best-match card, the answer's section shown. While the KB is prepared: a notice, nothing changes."""
        if self.still_preparing("a link", "Link"):
            return (gr.skip(),) * 6
        with visitor_errors(LINK_FAILED, logged="linking failed", what="a link"):
            result, image, terms, overlay = self._query(sentence, mention, image_path, top_k, request)
        return self.answer(result, image, terms, overlay, sentence, mention)

    def answer(self, result, image, terms, overlay, sentence, mention):
        """A linked mention on the page: the ranked list, the chart, the candidate to explain, the session's
        state, the best-match card, the answer's section shown. `terms`: the mention's, or None (explain
        encodes it again)."""
        with visitor_errors(LINK_FAILED, logged="showing a link failed", what="a link"):
            rows = result["results"]
            records = [self._entity(candidate_key(r), overlay) for r in rows]
            card = best_card(result, records, image is not None, SESSION_MARK)
        table = ranked_list(rows, records, [self._thumbnail(meta) for meta in records], SESSION_MARK)
        choices = [(f"{r['rank']}. {r['name']}", candidate_key(r)) for r in rows]
        # what explain needs: the encoded mention, and its picture shrunk (never the upload or its path)
        state = {"sentence": sentence, "mention": mention, "rows": rows, "terms": terms,
                 "picture": compact_picture(image) if image is not None else None}
        chosen = candidate_key(rows[0]) if rows else None
        chart = plots.score_chart(rows, image is not None, [bool(m.get("image") or m.get("picture")) for m in records])
        return table, chart, gr.update(choices=choices, value=chosen), state, card, gr.update(visible=True)

    def add_entity(self, name, description="", image_path=None, request: gr.Request = None):
        """/add_entity: encode a new entity for this session only; it is linkable at once in this session."""
        with visitor_errors("The entity could not be added; the details are in the server log.",
                            logged="adding an entity failed", what="/add_entity"):
            check_inputs(name=name, description=description)
            linker = self._linker()
            image = uploaded_image(image_path)
        precision = linker.store.manifest.get("precision", "mixed")  # the session's terms rounded like the KB's
        # QueryError: a limit, or an empty name
        with visitor_errors("The entity could not be added; the details are in the server log.", QueryError,
                            logged="adding an entity failed", what="/add_entity"):
            with self.model_lock:
                record = self.sessions.add(_session(request), self.loaded.model, precision, name, description, image)
        count, limit = len(self.sessions.overlay(_session(request))), self.sessions.per_session
        message = (f"Added “{record['name']}” for this session ({count} of {limit}): it can be linked right away, "
                   "by you only, until you close the page.")
        return {"added": {k: record[k] for k in ("id", "name", "description", "has_image")}, "count": count,
                "limit": limit, "message": message}

    def end_session(self, request: gr.Request = None):
        """The page was closed (or the client went away): forget the session's entities."""
        self.sessions.end(_session(request))

    @staticmethod
    def select_row(state, evt: gr.SelectData):
        """A click on a ranked row: that row's entity goes to "Explain candidate" (a bad index changes nothing)."""
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
                            (QueryError, ImageError), logged="explanation failed", what="an explanation"):
            image = open_picture(state["picture"]) if state.get("picture") else None
            sentence, mention = check_query(state["sentence"], state["mention"])
            with self.model_lock:
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
        return gr.update(value=heatmap.scaled_map(picture, heatmap.patch_grid(alpha.tolist()), "where CMFU pooled"),
                         visible=True, label=f"{label}: CMFU patch attention α (where CMFU pooled)")

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
                updates.append(gr.update(value=heatmap.scaled_map(open_picture(picture), grids[unit], MAP_CAPTION[unit]),
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
                         visible=True, label=f"Words: relevance for {UNIT_NAMES[unit]} (redder = more; the model reads "
                                             f"the mention, ·, then the sentence: {explanation['max_tokens']} tokens "
                                             "at most)")

    def api_explain(self, sentence, mention, image_path=None, entity=None, request: gr.Request = None):
        """/explain: the evidence for one (mention, entity) pair, as Linker.explain returns it."""
        with visitor_errors("Something went wrong while explaining.", logged="/explain failed", what="/explain"):
            check_inputs(sentence=sentence, mention=mention, entity=entity)
            if entity is None or not str(entity).strip():
                raise refused("Please give the entity: its \"index\" in /link's results, or the \"id\" of an "
                              "entity added in this session.", "/explain")
            linker = self._linker()
            image = uploaded_image(image_path)
        overlay = self.sessions.overlay(_session(request))
        key = entity.strip()  # a session entity's id, else a KB index (checked as Linker.explain checks it)
        with visitor_errors("Something went wrong while explaining; the details are in the server log.",
                            (QueryError, UnsupportedBackbone), logged="/explain failed", what="/explain"):
            with self.model_lock:
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
