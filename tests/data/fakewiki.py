"""A local stand-in for Wikimedia's services, in a thread: the Wikidata API (wbgetentities), the query
service (SPARQL JSON results) and the Commons API (query/pages/imageinfo with extmetadata) with its
thumbnails. Entities in the public JSON layout, written for these tests. `FakeWiki.log` records every
request; `busy` makes the next requests of a path answer 429 with Retry-After."""
import io
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def statement(value, rank="normal"):
    return {"mainsnak": {"snaktype": "value", "property": "P18", "datavalue": {"value": value, "type": "string"},
                         "datatype": "commonsMedia"}, "type": "statement", "id": f"Q$x-{value}", "rank": rank}


def item(qid, label=None, description=None, aliases=(), images=(), sitelinks=0, lang="en", mul=None):
    """An item as the dump and wbgetentities give it. images: [(file, rank)]."""
    labels = {lang: {"language": lang, "value": label}} if label else {}
    if mul:
        labels["mul"] = {"language": "mul", "value": mul}
    return {"type": "item", "id": qid, "labels": labels,
            "descriptions": {lang: {"language": lang, "value": description}} if description else {},
            "aliases": {lang: [{"language": lang, "value": a} for a in aliases]} if aliases else {},
            "claims": {"P18": [statement(f, r) for f, r in images]} if images else {},
            "sitelinks": {f"wiki{i}": {"site": f"wiki{i}", "title": label or qid, "badges": []}
                          for i in range(sitelinks)},
            "pageid": int(qid[1:]) + 100, "ns": 0, "title": qid, "lastrevid": 7, "modified": "2026-11-30T12:00:00Z"}


ITEMS = [
    item("Q12418", "Mona Lisa", "painting by Leonardo da Vinci", ["La Gioconda"],
         [("Mona_Lisa,_by_Leonardo_da_Vinci.jpg", "normal")], sitelinks=120),
    item("Q45585", "The Raft of the Medusa", "painting by Théodore Géricault", [],
         [("Old raft.jpg", "deprecated"), ("Raft normal.jpg", "normal"), ("Raft preferred.jpg", "preferred")],
         sitelinks=40),
    item("Q1", label=None, mul="Universe", description=None, sitelinks=3),  # only a "mul" label
    item("Q2", label=None, sitelinks=1),  # no label at all: skipped
    item("Q3", "Deprecated only", "a picture that must not count", [], [("Bad.jpg", "deprecated")], sitelinks=2),
    item("Q4", "Nameless painting", "", [], [("../../etc/passwd", "normal")], sitelinks=0),
]
PROPERTY = {"type": "property", "datatype": "commonsMedia", "id": "P18",
            "labels": {"en": {"language": "en", "value": "image"}}, "claims": {}}
LEXEME = {"type": "lexeme", "id": "L7", "lemmas": {"en": {"language": "en", "value": "painting"}},
          "lexicalCategory": "Q1084", "language": "Q1860", "claims": {}, "forms": [], "senses": []}
REDIRECT = {"type": "item", "id": "Q5", "redirect": "Q12418"}


def dump_text(entities) -> str:
    """The dump's layout: a JSON array, one entity a line, each line but the last ending with a comma."""
    return "[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in entities) + "\n]\n"


def png(color=(200, 30, 30), size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


class FakeWiki:
    """Start with `FakeWiki().start()`; `url` is its root; `stop()` in teardown."""

    def __init__(self, items=ITEMS, files=None):
        self.items = {e["id"]: e for e in items}
        self.redirects = {"Q5": "Q12418"}
        self.files = files or {}  # Commons title -> (imageinfo entry, thumbnail bytes) or None for missing
        self.log, self.busy = [], {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.answer(self, urllib.parse.urlsplit(self.path), None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                fake.answer(self, urllib.parse.urlsplit(self.path), urllib.parse.parse_qs(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def send(self, handler, code, body: bytes, kind="application/json", headers=()):
        handler.send_response(code)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    def answer(self, handler, url, form):
        params = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        self.log.append((url.path, params, form, handler.headers.get("User-Agent")))
        if self.busy.get(url.path):
            self.busy[url.path] -= 1
            return self.send(handler, 429, b"slow down", "text/plain", [("Retry-After", "7")])
        if url.path == "/sparql":
            return self.send(handler, 200, json.dumps(self.sparql(form["query"][0])).encode(),
                             "application/sparql-results+json")
        if url.path == "/w/api.php" and params.get("action") == "wbgetentities":
            return self.send(handler, 200, json.dumps(self.wbgetentities(params["ids"].split("|"))).encode())
        if url.path == "/commons/api.php":
            return self.send(handler, 200, json.dumps(self.imageinfo(params)).encode())
        if url.path.startswith("/thumb/"):
            title = urllib.parse.unquote(url.path[len("/thumb/"):])
            return self.send(handler, 200, self.files[title][1], "image/png")
        self.send(handler, 404, b"no such thing", "text/plain")

    def sparql(self, query):
        rows = [{"item": {"type": "uri", "value": f"http://www.wikidata.org/entity/{q}"},
                 "itemLabel": {"xml:lang": "en", "type": "literal", "value": q}} for q in ("Q12418", "Q45585")]
        rows.append({"item": {"type": "literal", "value": "not an item"}})
        rows.append(dict(rows[0]))  # a repeat (an item with two values of another column)
        return {"head": {"vars": ["item", "itemLabel"]}, "results": {"bindings": rows}}

    def wbgetentities(self, ids):
        entities = {}
        for qid in ids:
            target = self.redirects.get(qid, qid)
            entities[qid] = self.items[target] if target in self.items else {"id": qid, "missing": ""}
        return {"entities": entities, "success": 1}

    def imageinfo(self, params):
        titles = params["titles"].split("|")
        normalized, pages = [], {}
        for n, title in enumerate(titles):
            real = title.replace("_", " ")
            if real != title:
                normalized.append({"from": title, "to": real})
            entry = self.files.get(real)
            if entry is None:
                pages[str(-1 - n)] = {"ns": 6, "title": real, "missing": "", "known": ""}
            else:
                pages[str(1000 + n)] = {"pageid": 1000 + n, "ns": 6, "title": real, "imagerepository": "local",
                                        "imageinfo": [entry[0]]}
        query = {"pages": pages}
        if normalized:
            query["normalized"] = normalized
        return {"batchcomplete": "", "query": query}

    def image_entry(self, title, artist="<a href=\"//commons.wikimedia.org/wiki/User:Ann\">Ann Painter</a>",
                    licence="CC BY-SA 4.0", thumb=None):
        """An imageinfo entry as Commons gives it (extmetadata values are HTML)."""
        name = urllib.parse.quote(title)
        return {"url": f"{self.url}/orig/{name}", "descriptionurl": f"https://commons.wikimedia.org/wiki/{name}",
                "descriptionshorturl": "https://commons.wikimedia.org/w/index.php?curid=1",
                "thumburl": thumb or f"{self.url}/thumb/{name}", "thumbwidth": 24, "thumbheight": 16,
                "extmetadata": {"LicenseShortName": {"value": licence, "source": "commons-desc-page"},
                                "LicenseUrl": {"value": "https://creativecommons.org/licenses/by-sa/4.0",
                                               "source": "commons-desc-page"},
                                "Artist": {"value": artist, "source": "commons-desc-page"},
                                "AttributionRequired": {"value": "true", "source": "commons-desc-page"}}}
