"""The Gradio page: inputs, ranked entities, unit scores, patch heatmaps, token attention, and /link."""
import json
import logging
import os
import re

import gradio as gr

from mimic.images import ImageError, open_image
from mimic.linker import Query, QueryError, check_query

from . import heatmap, plots
from .kb import DEMO_KB, DemoKB
from .models import load_demo_model

log = logging.getLogger(__name__)
TABLE_HEADERS = ["Rank", "Image", "Entity", "Description", "S"]
INTRO = """# 🔗 MIMIC entity linking
Type a sentence, mark the **mention** (the words that name something), optionally add an image, and press
**Link**. MIMIC ranks the entities of a small demo knowledge base and shows its evidence: the text unit
**S_T**, the vision unit **S_V**, the cross-modal unit **S_C** and their mean **S**, where it looked in
the images, and which words it matched. Click a ranked entity to inspect it."""


class ImageFile(gr.Image):
    """Gradio's image input, handing the uploaded file over unopened: mimic.images opens it safely
    and says what is wrong with a bad file (Gradio's own conversion would fail with a bare error)."""
    is_template = True  # the page draws it with Gradio's image widget

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # a pasted or webcam image
            return super().preprocess(payload)
        return str(payload.path) if payload.path else None


def occurrences(sentence: str, mention: str) -> list:
    if not sentence or not mention or not mention.strip():
        return []
    return [m.span() for m in re.finditer(re.escape(mention.strip()), sentence, flags=re.IGNORECASE)]


def describe_mention(sentence: str, mention: str, chosen=0):
    """The sentence with the chosen occurrence of the mention highlighted, and the occurrence chooser."""
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


class DemoApp:
    def __init__(self, loaded=None, kb: DemoKB = None):
        self.loaded = loaded or load_demo_model()
        self.kb = (kb or DemoKB(self.loaded)).start()

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
    def _query(self, sentence, mention, image_path, top_k):
        """Checked inputs -> (result, upright image or None, the mention's terms); every problem as a gr.Error."""
        linker = self._linker()
        image = None
        if image_path:
            try:
                image = open_image(image_path)
            except ImageError as e:
                raise gr.Error(f"The image cannot be used: {e}. Try a JPEG, PNG or WebP photo, or remove it.")
        try:
            sentence, mention = check_query(sentence, mention)
            terms = linker.mention_terms([Query(sentence, mention, image)])
            result = linker.link_terms(terms, top_k)
        except QueryError as e:
            raise gr.Error(str(e))
        return result, image, terms

    def api_link(self, sentence, mention, image_path, top_k):
        """/link: the ranked entities with every unit score (the `link` command's fields)."""
        try:
            result, _, _ = self._query(sentence, mention, image_path, top_k)
        except gr.Error:
            raise
        except Exception:
            log.exception("/link failed")
            raise gr.Error("Something went wrong while linking; the details are in the server log.")
        return {"sentence": sentence, "mention": mention, "model": self.loaded.description,
                "zero_shot": self.loaded.zero_shot, **result}

    def ui_link(self, sentence, mention, image_path, top_k):
        try:
            result, image, terms = self._query(sentence, mention, image_path, top_k)
            rows = result["results"]
        except gr.Error:
            raise
        except Exception:
            log.exception("linking failed")
            raise gr.Error("Something went wrong while linking; the details are in the server log.")
        entities = self.kb.linker.store.entities
        table = [[r["rank"], self.kb.thumbnail(entities[r["index"]]), r["name"],
                  _description(entities[r["index"]].get("description", "")), round(r["score"], 3)] for r in rows]
        choices = [(f"{r['rank']}. {r['name']}", r["index"]) for r in rows]
        state = {"sentence": sentence, "mention": mention, "image": image_path if image is not None else None,
                 "rows": rows, "terms": terms}  # the encoded mention, reused by explain
        if result["nil"]:
            verdict = ("### ∅ No matching entity in the KB\nThe best score is below the NIL threshold calibrated "
                       "for this checkpoint; the closest entities are listed anyway.")
        else:
            verdict = f"### → {rows[0]['name']}" + (f" ({rows[0]['qid']})" if rows[0].get("qid") else "")
        return (table, plots.score_chart(rows), gr.update(choices=choices, value=rows[0]["index"] if rows else None),
                state, verdict)

    def add_entity(self, name, description, image_path):
        """/add_entity: encode a new entity into the demo KB; it is linkable at once."""
        self._linker()
        name, description = (name or "").strip(), (description or "").strip()
        if not name:
            raise gr.Error("Please give the new entity a name.")
        if len(name) > 200 or len(description) > 5000:
            raise gr.Error("The name (200 characters) or the description (5,000 characters) is too long.")
        if image_path:
            try:
                open_image(image_path)
            except ImageError as e:
                raise gr.Error(f"The image cannot be used: {e}.")
        try:
            record = self.kb.add_entity(name, description, image_path or None)
        except Exception:
            log.exception("adding an entity failed")
            raise gr.Error("The entity could not be added; the details are in the server log.")
        return {"added": record, "count": len(self.kb.linker.store),
                "message": f"Added “{record['name']}”: the KB now has {len(self.kb.linker.store)} entities, "
                           "and the new one can be linked right away."}

    def select_row(self, state, evt: gr.SelectData):
        rows = (state or {}).get("rows") or []
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not rows or not isinstance(row, int) or not 0 <= row < len(rows):
            return gr.update()
        return gr.update(value=rows[row]["index"])

    def explain(self, state, entity_index):
        """Heatmaps and token attention of the selected candidate."""
        hide = gr.update(visible=False)
        if not state or entity_index is None:
            return hide, hide, hide, gr.update(value="", visible=False)
        if self.loaded.zero_shot:
            note = ("Under the zero-shot initialisation the CMFU patch attention is uniform and the TGLU token "
                    "attention is untrained (G2L does not enter the score), so there is nothing to draw. Load or "
                    "train a checkpoint to see where MIMIC looks.")
            return hide, hide, hide, gr.update(value=note, visible=True)
        try:
            image = open_image(state["image"]) if state.get("image") else None
            out = self.kb.linker.explain(state["sentence"], state["mention"], image, int(entity_index),
                                         state.get("terms"))
        except (QueryError, ImageError) as e:
            raise gr.Error(str(e))
        except Exception:
            log.exception("explanation failed")
            raise gr.Error("Could not compute the attention for this entity; the details are in the server log.")
        meta = self.kb.linker.store.entities[int(entity_index)]
        notes = []
        if image is not None:
            mention_map = gr.update(value=heatmap.overlay(image, out["mention_alpha"].tolist()), visible=True,
                                    label="Mention image: CMFU patch attention α")
        else:
            mention_map = gr.update(value=heatmap.blank(), visible=True, label="No mention image (zeros)")
            notes.append("The mention has no image: the model sees all-zero pixels.")
        entity_image = None
        if meta.get("image"):
            try:
                entity_image = open_image(meta["image"])
            except ImageError:
                entity_image = None
        if entity_image is not None:
            entity_map = gr.update(value=heatmap.overlay(entity_image, out["entity_alpha"].tolist()), visible=True,
                                   label=f"{meta['name']}: CMFU patch attention α")
        else:
            entity_map = gr.update(value=heatmap.blank(), visible=True, label=f"{meta['name']}: no image (zeros)")
            notes.append(f"{meta['name']} has no image.")
        tokens = plots.token_attention(out["attention"], out["entity_tokens"], out["mention_tokens"], meta["name"])
        return mention_map, entity_map, gr.update(value=tokens, visible=True), gr.update(value=" ".join(notes),
                                                                                       visible=bool(notes))


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
    with gr.Blocks(title="MIMIC entity linking") as page:
        gr.Markdown(INTRO)
        status = gr.Markdown(app.status_markdown(), elem_id="status")
        timer = gr.Timer(1.0, active=not app.kb.ready)
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                sentence = gr.Textbox(label="Sentence", lines=3, max_length=100_000,
                                      placeholder="e.g. Hopper painted Nighthawks in 1942.")
                mention = gr.Textbox(label="Mention", placeholder="e.g. Hopper", max_length=1000)
                occurrence = gr.Radio(label="Which occurrence? (MIMIC reads the mention's words and the whole "
                                            "sentence; the position only changes the highlight)",
                                      choices=[], type="value", visible=False)
                highlight = gr.HighlightedText(label="Mention in context", color_map={"mention": "#fbbf24",
                                                                                      "problem": "#f87171"},
                                               show_legend=False, combine_adjacent=False)
                image = ImageFile(label="Image", type="filepath", image_mode=None,
                                  sources=["upload", "clipboard", "webcam"], height=240)
                top_k = gr.Slider(label="Top k", minimum=1, maximum=20, step=1, value=5)
                link = gr.Button("Link", variant="primary")
            with gr.Column(scale=3):
                table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["number", "html", "str", "str", "number"],
                                     label="Ranked entities (click a row to inspect it)", interactive=False,
                                     wrap=True, elem_id="ranked", column_widths=["8%", "14%", "22%", "44%", "12%"])
                verdict = gr.Markdown(elem_id="verdict")
                chart = gr.Plot(label="Unit scores", elem_id="scores")
        with gr.Row():
            candidate = gr.Dropdown(label="Inspect candidate", choices=[], interactive=True, elem_id="candidate")
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
        with gr.Accordion("Add an entity to the demo KB", open=False):
            gr.Markdown("The new entity is encoded now and can be linked at once (it stays in this server's KB "
                        "cache).")
            with gr.Row():
                new_name = gr.Textbox(label="Name", max_length=200)
                new_description = gr.Textbox(label="Description", lines=2, max_length=5000)
                new_image = ImageFile(label="Entity image", type="filepath", image_mode=None,
                                      sources=["upload", "clipboard"], height=160)
            add_button = gr.Button("Add entity")
            added = gr.JSON(label="Added", visible=False)
            add_note = gr.Markdown()
        with gr.Accordion("API", open=False):
            gr.Markdown(API_HELP)
        api_out = gr.JSON(visible=False)
        api_button = gr.Button(visible=False)

        # the highlighted sentence and the occurrence chooser follow the two text boxes
        for box in (sentence, mention):
            box.change(describe_mention, [sentence, mention], [highlight, occurrence], api_visibility="private")
        occurrence.input(describe_mention, [sentence, mention, occurrence], [highlight, occurrence],
                         api_visibility="private")
        timer.tick(lambda: (app.status_markdown(), gr.Timer(active=not (app.kb.ready or app.kb.error))),
                   outputs=[status, timer], api_visibility="private")
        explain_outputs = [mention_map, entity_map, tokens, explain_note]
        gr.on([link.click, sentence.submit, mention.submit], app.ui_link, [sentence, mention, image, top_k],
              [table, chart, candidate, state, verdict], api_visibility="private", concurrency_id="model").then(
            app.explain, [state, candidate], explain_outputs, api_visibility="private", concurrency_id="model")
        table.select(app.select_row, [state], [candidate], api_visibility="private")
        candidate.change(app.explain, [state, candidate], explain_outputs, api_visibility="private",
                         concurrency_id="model", trigger_mode="always_last")
        api_button.click(app.api_link, [sentence, mention, image, top_k], api_out, api_name="link",
                         concurrency_id="model")
        add_button.click(app.add_entity, [new_name, new_description, new_image], added, api_name="add_entity",
                         concurrency_id="model").then(lambda r: r["message"] if r else "", added, add_note,
                                                      api_visibility="private")
    page.app_state = app
    return page


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
client.predict("Ada Lovelace", "Wrote the first published algorithm.", None, api_name="/add_entity")
```
Bad input raises an error whose message says what to fix."""
