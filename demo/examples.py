"""The examples gallery: assets/demo_kb/examples.json as cards (the sentence with its mention marked, a
thumbnail when there is a picture, the one-line note) and what a click puts in the form."""
import json
import os

from mimic.model.images import ImageError, open_image

from .inputs import occurrences
from .kb import DEMO_KB, thumbnail_tag
from .safe_text import html_literal

THUMBNAIL = 64  # px
NOTE_CHARS = 120


def load_examples(kb_dir: str = DEMO_KB) -> list:
    """The examples, each with its image as a path in the KB folder (or None)."""
    with open(os.path.join(kb_dir, "examples.json"), encoding="utf-8") as f:
        examples = json.load(f)
    return [{**e, "image": os.path.join(kb_dir, e["image"]) if e.get("image") else None} for e in examples]


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def card(example: dict) -> str:
    """One example as HTML: thumbnail, the sentence with the mention in <mark>, the note (all escaped)."""
    sentence, mention = example["sentence"], example["mention"]
    spans = occurrences(sentence, mention, limit=1)
    if spans:
        start, end = spans[0]
        text = (html_literal(sentence[:start]) + f"<mark>{html_literal(sentence[start:end])}</mark>"
                + html_literal(sentence[end:]))
    else:
        text = html_literal(sentence)
    picture = '<div class="ex-pic ex-none">text only</div>'
    if example.get("image"):
        try:
            picture = f'<div class="ex-pic">{thumbnail_tag(open_image(example["image"]), THUMBNAIL)}</div>'
        except ImageError:
            pass
    note = html_literal(_short(example.get("note", ""), NOTE_CHARS))
    return f'<div class="ex">{picture}<div class="ex-text"><div class="ex-s">{text}</div>' \
           f'<div class="ex-note">{note}</div></div></div>'
