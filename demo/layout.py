"""The page: its layout, and which handler each event runs (demo/handlers.py), with the APIs it publishes
(/link, /explain, /add_entity)."""
import os

import gradio as gr

from mimic.kb.overlay import MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS

from .examples import card, load_examples
from .handlers import DemoApp
from .inputs import (
    MAX_ENTITY_CHARS,
    MAX_MENTION_CHARS,
    MAX_OCCURRENCES,
    MAX_SENTENCE_CHARS,
    MAX_TOP_K,
    ImageFile,
    TopK,
    added_note,
    describe_mention,
    input_validator,
)
from .link_text import every_mention_view, wire_every_mention
from .link_text import register as register_link_text
from .pictures import Picture
from .sessions import PER_SESSION

DELETE_CACHE = (600, 3600)  # Gradio's temporary files: every 10 minutes, remove those older than an hour
# Gradio keeps each browser session's state (the last linked mention, its explanation: about 0.2 MB) for
# this many sessions, dropping the oldest beyond: bounded memory (its own default, 10,000, is about 2 GB)
SESSION_STATES = 2000
EXAMPLES_PER_PAGE = 8  # a laptop's first screen holds them beside the form; a phone's Link stays within two screens
CSS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.css")  # given to launch()
PATCH_UNITS = [("S (overall)", "s"), ("S_V (vision)", "s_v"), ("S_C (cross-modal)", "s_c")]  # S_T reads no image
WORD_UNITS = [("S (overall)", "s"), ("S_T (text)", "s_t")]
INTRO = """# MIMIC entity linking
Which entity does a word in a sentence name? MIMIC ranks a knowledge base's entities by the sentence **and**
a picture. Type or pick an example, then press **Link**."""
# after an answer, bring it into view (the examples sit beside the form, the answer below it)
SCROLL_TO_ANSWER = "() => document.getElementById('answer')?.scrollIntoView({behavior: 'smooth', block: 'start'})"
# a click on a ranked row selects it (its index, the row's place in the list) to be explained
ROW_CLICK = """element.addEventListener('click', (event) => {
  const row = event.target.closest('tr[data-row]');
  if (row) trigger('select', {index: Number(row.dataset.row), value: null});
});"""
# what "Use via API" shows as example values (Gradio takes them from each component's example_inputs)
API_EXAMPLES = {"sentence": "Hopper painted Nighthawks in 1942.", "mention": "Hopper"}


def _api_example(component, value):
    component.example_inputs = lambda: value  # Gradio's default for a Textbox is "Hello!!"
    return component


def build_app(app: DemoApp = None) -> gr.Blocks:
    app = app or DemoApp()
    examples = load_examples()
    # Gradio keeps uploads in its temporary folder: files older than an hour go, checked every 10 minutes
    # (the app keeps no upload: the pictures it needs are decoded and shrunk into the session's state).
    with gr.Blocks(title="MIMIC entity linking", delete_cache=DELETE_CACHE) as page:
        gr.Markdown(INTRO, elem_id="intro")
        status = gr.Markdown(app.status_markdown(), elem_id="status")
        timer = gr.Timer(1.0, active=not app.kb.ready)
        state = gr.State(None)
        with gr.Row(elem_id="top"):
            with gr.Column(scale=5, min_width=320, elem_id="form"):
                sentence = _api_example(gr.Textbox(label="Sentence", lines=2, max_length=MAX_SENTENCE_CHARS,
                                                   placeholder="e.g. Hopper painted Nighthawks in 1942."),
                                        API_EXAMPLES["sentence"])
                mention = _api_example(gr.Textbox(label="Mention", placeholder="the words that name something, e.g. Hopper",
                                                  max_length=MAX_MENTION_CHARS),
                                       API_EXAMPLES["mention"])
                occurrence = gr.Radio(label="Which occurrence? (only the highlight changes; the first "
                                            f"{MAX_OCCURRENCES} are listed)",
                                      choices=[], type="value", visible=False)
                highlight = gr.HighlightedText(label="Mention in context", color_map={"mention": "#fbbf24",
                                                                                      "problem": "#f87171"},
                                               show_legend=False, combine_adjacent=False, elem_id="highlight")
                with gr.Row():
                    image = _api_example(ImageFile(label="Image (optional)", type="filepath", image_mode=None,
                                                   sources=["upload", "clipboard", "webcam"], height=150,
                                                   min_width=160), None)
                    with gr.Column(min_width=140):
                        top_k = _api_example(TopK(label="Top k", minimum=1, maximum=MAX_TOP_K, step=1, value=5), 5)
                        link = gr.Button("Link", variant="primary", elem_id="link", interactive=app.kb.ready)
                        every = gr.Button("Find every mention", size="sm", elem_id="every-mention")
            with gr.Column(scale=6, min_width=320, elem_id="examples-col"):
                gallery = gr.Dataset(components=[gr.HTML(visible=False)], samples=[[card(e)] for e in examples],
                                     type="index", layout="gallery", samples_per_page=EXAMPLES_PER_PAGE,
                                     label="Examples: one click links (the picture or the context decides "
                                           "between entities that share a name)", elem_id="examples")
        mentions_view, mentions_note = every_mention_view()
        with gr.Column(visible=False, elem_id="answer") as answer:
            best = gr.HTML(elem_id="verdict")
            with gr.Row():
                with gr.Column(scale=5, min_width=300):
                    table = gr.HTML(label="Ranked entities", elem_id="ranked", js_on_load=ROW_CLICK)
                with gr.Column(scale=6, min_width=300):
                    chart = gr.Plot(label="Unit scores (hover for their parts)", elem_id="scores")
            gr.Markdown(RELEVANCE_HELP)
            candidate = gr.Dropdown(label="Explain candidate", choices=[], interactive=True, elem_id="candidate")
            explanation = gr.State(None)
            explain_note = gr.Markdown(visible=False, elem_id="explain-note")
            patch_unit = gr.Radio(PATCH_UNITS, value="s", label="Patch relevance for (S_T reads no image)",
                                  elem_id="patch-unit")
            with gr.Row():
                mention_relevance = Picture(label="Mention image: relevance", visible=False, interactive=False,
                                             elem_id="mention-relevance", height=340, show_label=True)
                entity_relevance = Picture(label="Candidate image: relevance", visible=False, interactive=False,
                                            elem_id="entity-relevance", height=340)
            word_unit = gr.Radio(WORD_UNITS, value="s", label="Word relevance for", elem_id="word-unit")
            words = gr.HighlightedText(label="Words: relevance", visible=False, show_legend=False,
                                       combine_adjacent=False, elem_id="word-relevance")
            # under the zero-shot initialisation α is uniform and the token attention untrained: no section
            with gr.Column(visible=not app.loaded.zero_shot, elem_id="attention"):
                gr.Markdown(ATTENTION_HELP)
                with gr.Row():
                    mention_map = Picture(label="Mention image: CMFU patch attention α", visible=False,
                                           interactive=False, elem_id="mention-heatmap", height=340)
                    entity_map = Picture(label="Candidate image: CMFU patch attention α", visible=False,
                                          interactive=False, elem_id="entity-heatmap", height=340)
                tokens = gr.Plot(label="TGLU token-to-token attention", visible=False, elem_id="token-attention")
        with gr.Accordion("Add an entity (for this session only)", open=False):
            gr.Markdown(ADD_HELP)
            with gr.Row():
                new_name = _api_example(gr.Textbox(label="Name", max_length=MAX_NAME_CHARS), "Ada Lovelace")
                new_description = _api_example(gr.Textbox(label="Description", lines=2,
                                                          max_length=MAX_DESCRIPTION_CHARS),
                                               "Wrote the first published algorithm.")
                new_image = ImageFile(label="Entity image", type="filepath", image_mode=None,
                                      sources=["upload", "clipboard"], height=160)
            add_button = gr.Button("Add entity")
            added = gr.JSON(label="Added", visible=False)
            add_note = gr.Markdown()
        with gr.Accordion("API", open=False):
            gr.Markdown(API_HELP)
        api_out = gr.JSON(visible=False)
        api_button = gr.Button(visible=False)
        api_entity = _api_example(gr.Textbox(visible=False, label="Entity", max_length=MAX_ENTITY_CHARS), "0")
        api_explain_button = gr.Button(visible=False)

        # the highlighted sentence and the occurrence chooser follow the two text boxes
        for box in (sentence, mention):
            box.change(describe_mention, [sentence, mention], [highlight, occurrence], api_visibility="private",
                       validator=input_validator("sentence", "mention"))
        occurrence.input(describe_mention, [sentence, mention, occurrence], [highlight, occurrence],
                         api_visibility="private", validator=input_validator("sentence", "mention", None))
        # the status line and the Link button follow the KB's preparation, from each page load
        page.load(app.page_state, outputs=[status, link, timer], api_visibility="private")
        timer.tick(app.page_state, outputs=[status, link, timer], api_visibility="private")
        explain_inputs = [state, candidate, patch_unit, word_unit]
        explain_outputs = [mention_relevance, entity_relevance, words, mention_map, entity_map, tokens, explain_note,
                           explanation]
        query_limits = input_validator("sentence", "mention", "image", "top_k")
        link_outputs = [table, chart, candidate, state, best, answer]
        # batched, links wait together in the batcher (demo/batching.py), up to its bound; else one at a time
        linking = dict(concurrency_id="link", concurrency_limit=app.batcher.max_waiting) if app.batcher \
            else dict(concurrency_id="model")

        def then_explain(linked):
            linked.then(None, js=SCROLL_TO_ANSWER).then(
                app.ui_explain, explain_inputs, explain_outputs, api_visibility="private", concurrency_id="model")

        then_explain(gr.on([link.click, sentence.submit, mention.submit], app.ui_link, [sentence, mention, image, top_k],
                           link_outputs, api_visibility="private", validator=query_limits, **linking))
        # an example: fill the form, link it, show the answer
        then_explain(gallery.click(lambda i: fill_example(examples, i), gallery, [sentence, mention, image, top_k],
                                   api_visibility="private").success(
            app.ui_link, [sentence, mention, image, top_k], link_outputs, api_visibility="private",
            validator=query_limits, **linking))
        table.select(app.select_row, [state], [candidate], api_visibility="private").then(
            app.ui_explain, explain_inputs, explain_outputs, api_visibility="private", concurrency_id="model")
        # the visitor's choice only (.input): after a link, the chain above explains the best match once
        candidate.input(app.ui_explain, explain_inputs, explain_outputs, api_visibility="private",
                        concurrency_id="model", trigger_mode="always_last")
        # another unit: redrawn from the explanation kept in the session, without the model
        patch_unit.change(app.patch_relevance, [explanation, patch_unit], [mention_relevance, entity_relevance],
                          api_visibility="private")
        word_unit.change(app.word_relevance, [explanation, word_unit], words, api_visibility="private")
        api_button.click(app.api_link, [sentence, mention, image, top_k], api_out, api_name="link",
                         validator=query_limits, **linking)
        register_link_text(app, sentence, image, top_k, api_out)  # /link_text (docs/mentions.md)
        wire_every_mention(app, every, mentions_view, mentions_note, sentence, mention, image, top_k, link_outputs,
                           then_explain)
        api_explain_button.click(app.api_explain, [sentence, mention, image, api_entity], api_out, api_name="explain",
                                 concurrency_id="model", validator=input_validator("sentence", "mention", "image",
                                                                                   "entity"))
        add_button.click(app.add_entity, [new_name, new_description, new_image], added, api_name="add_entity",
                         concurrency_id="model", validator=input_validator("name", "description", "image")).then(added_note, added,
                                                      add_note, api_visibility="private")
        page.unload(app.end_session)  # the tab is closed: its entities are forgotten
    page.app_state = app
    return page


def fill_example(examples: list, index) -> tuple:
    """What a click on example `index` puts in the form (an index out of range changes nothing)."""
    if not isinstance(index, int) or not 0 <= index < len(examples):
        return (gr.skip(),) * 4
    example = examples[index]
    return example["sentence"], example["mention"], example["image"], 5


RELEVANCE_HELP = """### Why this candidate
How much each 32-px patch of the two pictures, and each word, moved the candidate's score: gradient-weighted
attention relevance (Chefer et al., ICCV 2021) through both CLIP towers. On the maps dark = less, bright
yellow = more (the bar under each map gives the range); words: redder = more."""
ATTENTION_HELP = """### Where the units pooled: attention
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
