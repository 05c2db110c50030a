"""What the explanation panel draws: patch grids (relevance maps, CMFU α) over the pictures the model
saw (mimic/explain/heatmap.py, which the `explain` command uses too), and relevance over the words it read."""
from mimic.explain.heatmap import blank, overlay, overlay_grid, patch_grid  # noqa: F401
from mimic.explain.relevance import token_spans
from mimic.model.processing import MAX_TEXT_CHARS

MAX_TAIL_CHARS = 200  # of the text past the words the model read, shown uncoloured


def word_highlights(text: str, tokens: list, relevance: list) -> list:
    """`text` as (piece, value) pairs for gr.HighlightedText: each token's characters with its relevance
    scaled to 0..1 (1 = the most relevant token), the text between and after the tokens with None. The
    model reads 40 tokens at most: the rest of a long text is shown uncoloured, cut after MAX_TAIL_CHARS."""
    text = text[:MAX_TEXT_CHARS]  # the model never reads further (mimic/model/processing.py)
    top = max(relevance, default=0.0) or 1.0
    pieces, cursor = [], 0
    for span, value in zip(token_spans(text, tokens), relevance):
        if span is None:
            continue
        start, end = span
        if start > cursor:
            pieces.append((text[cursor:start], None))
        pieces.append((text[start:end], round(max(value, 0.0) / top, 3)))
        cursor = end
    tail = text[cursor:]
    if tail:
        pieces.append((tail if len(tail) <= MAX_TAIL_CHARS else tail[:MAX_TAIL_CHARS] + "…", None))
    return pieces
