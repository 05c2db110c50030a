"""The answer as HTML: the best-match card and the ranked list (every row readable on a phone), with
each picture's credit. All text from the KB or a visitor is escaped; only http(s) links are made."""
import functools

from mimic.model.images import ImageError, open_image

from .kb import NO_IMAGE, thumbnail_tag
from .safe_text import html_literal, http_url
from .sessions import open_picture

CARD_PICTURE = 160  # px, the best match's picture
SCORE_NOTE = ("S is the mean of the three units' scores, similarities on a scale the model defines (about 100 × a "
              "cosine for CLIP): compare candidates by it; it is not a probability.")
NO_IMAGE_NOTE = "No image was given, so S_V (vision) carries nothing here: S rests on S_T and S_C."


@functools.lru_cache(maxsize=256)
def _kb_picture(path: str) -> str:
    try:
        return thumbnail_tag(open_image(path), CARD_PICTURE)
    except ImageError:
        return NO_IMAGE


def picture_tag(record: dict) -> str:
    """The entity's picture at card size: a session entity's kept picture, or the KB's image file."""
    if record.get("picture"):
        return thumbnail_tag(open_picture(record["picture"]), CARD_PICTURE)
    return _kb_picture(record["image"]) if record.get("image") else NO_IMAGE


def credit_html(credit) -> str:
    """"licence · artist" under a picture: the licence linked to its text, the artist to the source; only
    http(s) addresses become links, everything is escaped."""
    if not isinstance(credit, dict):
        return ""
    parts = []
    for text, url in ((credit.get("licence"), credit.get("licence_url")), (credit.get("artist"), credit.get("source"))):
        if text:
            href = http_url(url)
            text = html_literal(str(text)[:120])
            parts.append(f'<a href="{href}" target="_blank" rel="noopener nofollow">{text}</a>' if href else text)
    return f'<div class="credit">{" · ".join(parts)}</div>' if parts else ""


def _name(row: dict, session_mark: str) -> str:
    qid = f' <span class="qid">({html_literal(row["qid"])})</span>' if row.get("qid") and not row.get("session") else ""
    return html_literal(row["name"]) + (html_literal(session_mark) if row.get("session") else "") + qid


def best_card(result: dict, records: list, has_image: bool, session_mark: str) -> str:
    """The best match: picture, name, description, S and its margin over the runner-up; under the NIL rule,
    "no matching entity" with the closest one."""
    rows = result["results"]
    if not rows:
        return '<div class="best"><div class="best-text">No entity to rank.</div></div>'
    top, meta = rows[0], records[0]
    if result.get("nil"):
        head = ('<div class="nil">∅ No matching entity in the KB: the best score is below the NIL threshold '
                'calibrated for this checkpoint. The closest:</div>')
    else:
        head = '<div class="best-label">Best match →</div>'
    margin = ""
    if len(rows) > 1:
        margin = (f' · <b>{top["score"] - rows[1]["score"]:+.2f}</b> over the runner-up, '
                  f'{html_literal(rows[1]["name"])}')
    notes = [SCORE_NOTE] + ([] if has_image else [NO_IMAGE_NOTE])
    if has_image and not (meta.get("image") or meta.get("picture")):
        notes.append(f"{top['name']} has no picture, so its S_V (vision) is about 0.")
    return (f'<div class="best"><div class="best-pic">{picture_tag(meta)}{credit_html(top.get("image_credit"))}</div>'
            f'<div class="best-text">{head}<div class="best-name">{_name(top, session_mark)}</div>'
            f'<div class="best-desc">{html_literal(meta.get("description", ""))}</div>'
            f'<div class="best-score">S = <b>{top["score"]:.2f}</b>{margin}</div>'
            + "".join(f'<div class="note">{html_literal(n)}</div>' for n in notes) + "</div></div>")


def ranked_list(rows: list, records: list, thumbnails: list, session_mark: str) -> str:
    """Every ranked entity in one table that fits a phone: rank, picture, name with its description, S and
    its distance to the best."""
    body = []
    for row, meta, thumb in zip(rows, records, thumbnails):
        gap = row["score"] - rows[0]["score"]
        description = meta.get("description", "")
        description = description if len(description) <= 160 else description[:159].rsplit(" ", 1)[0] + "…"
        body.append(f'<tr data-row="{row["rank"] - 1}" title="Explain this candidate"><td class="rank">{row["rank"]}</td><td class="thumb">{thumb}'
                    f'{credit_html(row.get("image_credit"))}</td><td class="entity"><b>{_name(row, session_mark)}'
                    f'</b><div class="desc">{html_literal(description)}</div></td><td class="score">'
                    f'{row["score"]:.2f}' + (f'<div class="gap">{gap:+.2f}</div>' if row["rank"] > 1 else "")
                    + "</td></tr>")
    return ('<table class="ranked-table"><thead><tr><th>#</th><th>Picture</th><th>Entity</th><th>S</th></tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table>')
