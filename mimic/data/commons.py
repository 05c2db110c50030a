"""Entity pictures from Wikimedia Commons, with the credit their licences ask for (`kb fetch-images`).

For every entity with a "commons_file" (what `kb from-wikidata` writes), the Commons API is asked for the
file's thumbnail and licence, 50 titles a request (action=query&prop=imageinfo&iiprop=url|extmetadata
&iiurlwidth=W); the thumbnail is downloaded from the upload host only, bounded in size, checked as an
image (mimic/model/images.py), and saved under the image folder with a name made from the file's title
(never the title itself: a title is not a safe path). The entity gets "image" (that name, inside the
folder) and "image_credit": {"licence", "licence_url", "artist" (plain text), "source" (the file's
description page)}.

Resumable: each outcome is appended to a journal in the image folder (JOURNAL), so a second run (after an
interruption, or to finish what failed) asks only for what is still missing. A file Commons does not
have is counted and its entity kept without a picture.
"""
import collections
import hashlib
import html.parser
import io
import json
import logging
import os
import re
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from ..fileio import atomic_file, make_dirs
from ..model.images import ImageError, open_image
from .web import WebError

log = logging.getLogger(__name__)
API = "https://commons.wikimedia.org/w/api.php"
UPLOAD_HOSTS = frozenset({"upload.wikimedia.org"})
BATCH = 50  # titles per request: the API's limit for clients without the bot right
MAX_THUMBNAIL = 20 * 2**20  # bytes; a 336 px thumbnail is tens of kB
MAX_CREDIT = 300  # characters of a credit field (an Artist field can hold a whole HTML table)
JOURNAL = ".mimic-commons.jsonl"
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp"}
_UNSAFE_TITLE = re.compile(r"[#<>\[\]{}|\x00-\x1f\x7f]")


def file_title(name) -> str:
    """A P18 value ("Mona Lisa.jpg", or "File:Mona_Lisa.jpg") -> its page title "File:Mona Lisa.jpg", or
    None when it cannot be a Commons title."""
    if not isinstance(name, str):
        return None
    name = re.sub(r"^(File|Image):", "", name.strip(), flags=re.IGNORECASE).replace("_", " ").strip()
    if not name or len(name) > 240 or _UNSAFE_TITLE.search(name):
        return None
    return "File:" + name


class _PlainText(html.parser.HTMLParser):
    """The text of an HTML fragment: tags dropped, script and style bodies dropped, entities decoded."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self._hidden = [], 0

    def handle_starttag(self, tag, attrs):
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.parts.append(data)


def plain_text(value, limit: int = MAX_CREDIT):
    """An extmetadata value (HTML) -> one line of plain text, at most `limit` characters; None when empty."""
    if not isinstance(value, str):
        return None
    parser = _PlainText()
    parser.feed(value[: 50 * limit])  # the text shown is short: a huge field is cut before parsing
    parser.close()
    text = re.sub(r"\s+", " ", "".join(parser.parts)).strip()
    return (text if len(text) <= limit else text[: limit - 1] + "…") or None


def _url(value):
    return value if isinstance(value, str) and re.match(r"https?://", value) and len(value) <= 2000 else None


def credit_of(info: dict) -> dict:
    """An imageinfo entry -> {"licence", "licence_url", "artist", "source"} (None for what it does not give)."""
    meta = info.get("extmetadata") if isinstance(info.get("extmetadata"), dict) else {}

    def field(key):
        entry = meta.get(key)
        return entry.get("value") if isinstance(entry, dict) else None
    return {"licence": plain_text(field("LicenseShortName")), "licence_url": _url(plain_text(field("LicenseUrl"))),
            "artist": plain_text(field("Artist")), "source": _url(info.get("descriptionurl"))}


def image_info(web, titles: list, width: int, api: str = API) -> dict:
    """{title as asked: its first imageinfo entry, or None when Commons has no such file}."""
    answer = web.json(api, {"action": "query", "prop": "imageinfo", "iiprop": "url|extmetadata",
                            "iiurlwidth": str(width), "titles": "|".join(titles), "format": "json"})
    query = answer.get("query") if isinstance(answer, dict) else None
    if not isinstance(query, dict):
        raise WebError(f"{api}: the answer has no 'query'")
    renamed = {}  # the API answers under the normalised title ("File:A_b.jpg" -> "File:A b.jpg")
    for item in query.get("normalized") or ():
        if isinstance(item, dict) and isinstance(item.get("from"), str) and isinstance(item.get("to"), str):
            renamed[item["to"]] = item["from"]
    pages = query.get("pages") or {}
    found = {}
    for page in (pages.values() if isinstance(pages, dict) else pages):
        if not isinstance(page, dict) or "missing" in page or "invalid" in page:
            continue
        infos = page.get("imageinfo")
        if isinstance(infos, list) and infos and isinstance(infos[0], dict) and isinstance(page.get("title"), str):
            found[renamed.get(page["title"], page["title"])] = infos[0]
    return {title: found.get(title) for title in titles}


def save_thumbnail(web, info: dict, title: str, folder: str, hosts) -> str:
    """Download an imageinfo entry's thumbnail (from `hosts` only), check it, save it -> its file name."""
    url = info.get("thumburl") or info.get("url")
    if not isinstance(url, str):
        raise WebError(f"{title}: Commons gave no thumbnail address")
    data = web.request(url, max_bytes=MAX_THUMBNAIL, hosts=hosts)
    try:
        open_image(data)  # decodes it whole, within the pixel and memory limits: a thumbnail is an image
        kind = Image.open(io.BytesIO(data)).format
    except (ImageError, OSError) as e:
        raise ImageError(f"{title}: the thumbnail is not a usable image ({e})")
    if kind not in EXTENSIONS:
        raise ImageError(f"{title}: the thumbnail is a {kind} image (JPEG, PNG, GIF or WebP expected)")
    name = hashlib.sha256(title.encode("utf-8")).hexdigest()[:20] + EXTENSIONS[kind]
    with atomic_file(os.path.join(folder, name), "wb") as f:
        f.write(data)
    return name


def read_journal(folder: str) -> dict:
    """{title: {"image", "credit"} or {"missing": True}} of earlier runs (a torn last line is ignored)."""
    done = {}
    try:
        with open(os.path.join(folder, JOURNAL), encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                    done[entry["file"]] = entry
    except FileNotFoundError:
        pass
    return done


def _usable(entry: dict, folder: str) -> bool:
    """A journal entry still true: Commons lacked the file, or the saved picture is still there."""
    if entry.get("missing"):
        return True
    image = entry.get("image")
    return isinstance(image, str) and re.fullmatch(r"[0-9a-f]{20}\.[a-z]{3,4}", image) is not None \
        and os.path.isfile(os.path.join(folder, image))


def fetch_images(web, entities: list, folder: str, width: int = 336, api: str = API, hosts=UPLOAD_HOSTS,
                 workers: int = 2, progress=None) -> collections.Counter:
    """Give `entities` (records, changed in place) their Commons pictures and credits -> counts of outcomes."""
    make_dirs(folder)
    counts = collections.Counter()
    done = {t: e for t, e in read_journal(folder).items() if _usable(e, folder)}
    wanted = []
    for entity in entities:
        title = file_title(entity.get("commons_file"))
        if entity.get("image"):  # it has its picture (from an earlier run, or given): never fetched again
            continue
        if entity.get("commons_file") is not None and title is None:
            counts["not a Commons file name"] += 1
        elif title and title not in done and title not in wanted:
            wanted.append(title)
    lock = threading.Lock()

    def fetch(titles):
        outcome = collections.Counter()
        try:
            infos = image_info(web, titles, width, api)
        except WebError as e:
            log.warning("Commons API: %s", e)
            outcome["failed (Commons API)"] += len(titles)
            return outcome
        for title, info in infos.items():
            entry = {"file": title}
            if info is None:
                entry["missing"] = True
            else:
                try:
                    entry.update(image=save_thumbnail(web, info, title, folder, hosts), credit=credit_of(info))
                except (WebError, ImageError, OSError) as e:
                    log.warning("%s: no picture (%s)", title, e)
                    outcome["failed: " + _why(e)] += 1
                    continue
            with lock:  # one line a file, appended: an interruption loses at most the line being written
                with open(os.path.join(folder, JOURNAL), "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                done[title] = entry
            outcome["missing on Commons" if info is None else "fetched"] += 1
        if progress:
            progress(len(titles))
        return outcome

    batches = [wanted[i:i + BATCH] for i in range(0, len(wanted), BATCH)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for outcome in pool.map(fetch, batches):
            counts.update(outcome)
    for entity in entities:
        entry = done.get(file_title(entity.get("commons_file")) or "")
        if entry and entry.get("image") and not entity.get("image"):
            entity["image"], entity["image_credit"] = entry["image"], entry.get("credit")
    counts["with a picture"] = sum(1 for e in entities if e.get("image"))
    return counts


def _why(error: Exception) -> str:
    """A failure's kind, for the counts (its details go to the log)."""
    if isinstance(error, ImageError):
        return "not an image"
    text = str(error)
    return "refused address" if text.startswith("refused") else "download"


def api_host(api: str) -> str:
    return urllib.parse.urlsplit(api).hostname
