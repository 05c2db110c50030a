"""What the explanation panel draws: patch grids (relevance maps, CMFU α) over the pictures the model
saw, each with its colour bar and caption, or "no evidence from this picture" for a flat grid
(mimic/explain/heatmap.py, which the `explain` command uses too), and relevance over the words it read."""
from mimic.explain.heatmap import blank, is_flat, overlay_grid, patch_grid, with_scale  # noqa: F401
from mimic.explain.relevance import SEPARATOR, words_of
from mimic.model.processing import MAX_TEXT_CHARS

MAX_TAIL_CHARS = 200  # of the text past the words the model read, shown uncoloured
SHOWN_SEPARATOR = "·"  # the [SEP] marker between mention and sentence: not a word a visitor wrote


def scaled_map(picture, grid, caption: str):
    """The picture with the grid over it, its colour bar (inferno: dark = less, bright yellow = more) and a
    caption; a flat grid (e.g. all zeros) leaves the picture untinted and says there is no evidence."""
    return with_scale(overlay_grid(picture, grid), grid, caption)


def word_highlights(text: str, tokens: list, relevance: list) -> list:
    """`text` as (piece, value) pairs for gr.HighlightedText: each word (sub-word pieces joined) with its
    relevance scaled to 0..1 (1 = the most relevant word), the text between and after the words with None,
    the [SEP] marker shown as a dot. The model reads 40 tokens at most: the rest of a long text is shown
    uncoloured, cut after MAX_TAIL_CHARS."""
    text = text[:MAX_TEXT_CHARS]  # the model never reads further (mimic/model/processing.py)
    words = words_of(text, tokens, {"v": relevance})
    top = max((w["v"] for w in words), default=0.0) or 1.0
    pieces, cursor = [], 0
    for word in words:
        if word["start"] > cursor:
            pieces.append((text[cursor:word["start"]].replace(SEPARATOR, SHOWN_SEPARATOR), None))
        pieces.append((word["word"], round(max(word["v"], 0.0) / top, 3)))
        cursor = word["end"]
    tail = text[cursor:].replace(SEPARATOR, SHOWN_SEPARATOR)
    if tail:
        pieces.append((tail if len(tail) <= MAX_TAIL_CHARS else tail[:MAX_TAIL_CHARS] + "…", None))
    return pieces
