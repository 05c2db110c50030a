"""Wikidata items -> entity records a KB store takes (`python -m mimic kb from-wikidata`).

Three sources, one record per item:
    read_dump(path)          Wikidata's JSON dump as published: a JSON array, one entity a line ("[", then
                             `{...},` lines, then "]"), plain, .gz or .bz2; streamed, never loaded whole, and
                             parsed by `workers` processes (decompression stays in this one)
    fetch_entities(qids)     the Wikidata API's wbgetentities, 50 ids a request
    sparql_qids(query)       the items of a query's first column, from the Wikidata query service

A record: {"id", "qid", "name" (the label in `lang`, else the "mul" label), "description", "aliases" (in
`lang`), "commons_file" (the Commons file of the best-ranked P18: preferred over normal, never
deprecated; None without one)}. Properties, lexemes, redirects and items without a label are skipped and
counted by reason, as are the items a filter leaves out (`Filters`).
"""
import bz2
import collections
import gzip
import multiprocessing
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass

from .readers import DataError

try:  # orjson parses a dump line about 3 times faster; json does the same job without it
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

API = "https://www.wikidata.org/w/api.php"
SPARQL = "https://query.wikidata.org/sparql"
ENTITY_URIS = ("http://www.wikidata.org/entity/", "https://www.wikidata.org/entity/")
QID = re.compile(r"Q[1-9][0-9]{0,14}")
BATCH = 50  # ids per wbgetentities request: the API's limit for clients without the bot right
MAX_SPARQL = 256 * 2**20  # bytes of a query's answer: about 1.5M items (a bigger KB: use the dump)
MAX_LINE = 64 * 2**20  # bytes of one dump line; the largest real items are a few MB
RANKS = {"preferred": 0, "normal": 1}  # deprecated statements never count
_HEAD = re.compile(rb'"id"\s*:\s*"(Q[0-9]+)"')  # a dump line names its id near its start: a cheap pre-filter


@dataclass
class Filters:
    """What items to keep: the label language, and the optional filters of `kb from-wikidata`."""
    lang: str = "en"
    require_image: bool = False
    min_sitelinks: int = 0
    qids: frozenset = None  # only these items (a dump filtered by --qids)


def best_image(claims: dict):
    """The Commons file name of the best-ranked P18 statement with a value, or None."""
    best = None
    for statement in (claims or {}).get("P18") or ():
        if not isinstance(statement, dict):
            continue
        rank, snak = RANKS.get(statement.get("rank")), statement.get("mainsnak") or {}
        value = (snak.get("datavalue") or {}).get("value") if snak.get("snaktype") == "value" else None
        if rank is not None and isinstance(value, str) and value and (best is None or rank < best[0]):
            best = (rank, value)
    return best[1] if best else None


def _text(values: dict, lang: str):
    value = (values or {}).get(lang)
    return value.get("value") if isinstance(value, dict) and isinstance(value.get("value"), str) else None


def entity_record(entity, filters: Filters) -> tuple:
    """One Wikidata entity (its JSON as the dump and the API give it) -> (record, None) or (None, reason)."""
    if not isinstance(entity, dict):
        return None, "not an entity"
    if "redirect" in entity or "redirects" in entity:
        return None, "redirect"
    qid = entity.get("id")
    if entity.get("type") != "item" or not isinstance(qid, str) or not QID.fullmatch(qid):
        return None, "not an item"
    if filters.qids is not None and qid not in filters.qids:
        return None, "not asked"
    lang = filters.lang
    name = _text(entity.get("labels"), lang) or _text(entity.get("labels"), "mul")
    if not name:
        return None, "no label"
    image = best_image(entity.get("claims"))
    if filters.require_image and not image:
        return None, "no image"
    if filters.min_sitelinks and len(entity.get("sitelinks") or ()) < filters.min_sitelinks:
        return None, "few sitelinks"
    aliases = [a["value"] for a in (entity.get("aliases") or {}).get(lang) or ()
               if isinstance(a, dict) and isinstance(a.get("value"), str)]
    return {"id": qid, "qid": qid, "name": name, "description": _text(entity.get("descriptions"), lang) or "",
            "aliases": aliases, "commons_file": image}, None


# -- the dump ---------------------------------------------------------------------------------------

# Python's bz2 decompresses on one core (about 50 MB/s of JSON here: 9 hours for a full dump); these use every core
PARALLEL_BZ2 = ("lbzip2", "pbzip2")


class _Piped:
    """A dump decompressed by an external tool in its own process(es), fed from the raw file by a thread (so
    that the raw file's position still measures progress)."""

    def __init__(self, tool: str, raw):
        self.process = subprocess.Popen([tool, "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        self.raw, self.ended = raw, False
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()

    def _feed(self):
        try:
            for chunk in iter(lambda: self.raw.read(1 << 20), b""):
                self.process.stdin.write(chunk)
        except (OSError, ValueError):  # the reader stopped early (a --limit): the pipe is closed
            pass
        finally:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def readline(self, size: int = -1) -> bytes:
        line = self.process.stdout.readline(size)
        self.ended = self.ended or not line
        return line

    def close(self):
        if self.process.stdout.closed:
            return
        finished = self.ended  # all read: the tool's exit status says whether the archive was whole
        if finished:
            self.process.wait()
        else:  # stopped early: the tool is not needed any more
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.feeder.join()
        if finished and self.process.returncode:
            raise OSError(f"the decompressor failed (exit status {self.process.returncode})")


def open_dump(path: str, parallel: bool = True):
    """(the raw file, whose position measures progress; the decompressed byte stream). A .bz2 dump goes
    through lbzip2 or pbzip2 when one is installed (and `parallel`)."""
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: dump file not found")
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected the dump file")
    if path.endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw)
    if path.endswith(".bz2"):
        tool = next((shutil.which(t) for t in PARALLEL_BZ2 if shutil.which(t)), None) if parallel else None
        return raw, (_Piped(tool, raw) if tool else bz2.BZ2File(raw))
    return raw, raw


def dump_lines(stream, counts: collections.Counter, max_line: int = MAX_LINE):
    """The entity lines of a dump stream, as bytes (the array's brackets and trailing commas removed); a
    line longer than `max_line` is skipped whole (counted as "line too long"), never held in memory."""
    while True:
        line = stream.readline(max_line + 1)
        if not line:
            return
        if len(line) > max_line and not line.endswith(b"\n"):
            counts["line too long"] += 1
            while line and not line.endswith(b"\n"):  # read the rest away, a bounded piece at a time
                line = stream.readline(max_line)
            continue
        line = line.strip()
        if line.endswith(b","):
            line = line[:-1]
        if line and line not in (b"[", b"]"):
            yield line


_FILTERS = Filters()


def _set_filters(filters: Filters):
    global _FILTERS
    _FILTERS = filters


def parse_lines(lines: list, filters: Filters = None) -> tuple:
    """Dump lines -> (records, Counter of skip reasons). Lines that cannot be kept are left unparsed when
    a cheap look says so (the id is not asked for, no P18 at all): most of a full dump, with --require-image."""
    filters = filters or _FILTERS
    records, counts = [], collections.Counter()
    for line in lines:
        if filters.qids is not None:
            head = _HEAD.search(line, 0, 200)
            if head and head.group(1).decode() not in filters.qids:
                counts["not asked"] += 1
                continue
        if filters.require_image and b'"P18"' not in line:
            counts["no image"] += 1
            continue
        try:
            entity = _loads(line)
        except ValueError:
            counts["not JSON"] += 1
            continue
        record, reason = entity_record(entity, filters)
        if record:
            records.append(record)
        else:
            counts[reason] += 1
    return records, counts


def _batches(lines, size: int):
    batch = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_dump(path: str, filters: Filters, counts: collections.Counter, workers: int = 1, limit: int = None,
              progress=None, batch: int = 1000, max_line: int = MAX_LINE, parallel: bool = True):
    """The records of a dump, in dump order (up to `limit`); skips go into `counts`. `progress(position)`
    is told how far into the (compressed) file reading has come."""
    # the workers are forked first: forked later, they would hold the decompressor's input pipe open
    pool = multiprocessing.get_context("fork").Pool(workers, _set_filters, (filters,)) if workers > 1 else None
    try:
        raw, stream = open_dump(path, parallel)
    except BaseException:
        if pool:
            pool.terminate()
        raise
    kept = 0
    try:
        batches = _batches(dump_lines(stream, counts, max_line), batch)
        parsed = (pool.imap(parse_lines, batches) if pool else (parse_lines(b, filters) for b in batches))
        for records, skipped in parsed:
            counts.update(skipped)
            if progress:
                progress(raw.tell())
            for record in records:
                if limit is not None and kept >= limit:
                    return
                kept += 1
                yield record
        stream.close()  # a decompressor's failure shows here
    except (OSError, EOFError, ValueError) as e:  # a damaged or truncated archive
        raise DataError(f"{path}: the dump cannot be read on ({e})")
    finally:
        if pool:
            pool.terminate()
        stream.close()
        raw.close()


# -- the API and the query service ------------------------------------------------------------------

def read_qids(path: str) -> list:
    """A file of QIDs, one a line (an entity URI is taken too; blank lines and #comments skipped), in order."""
    qids, seen = [], set()
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                qid = qid_of(text)
                if not qid:
                    raise DataError(f"{path}: line {number} is not a QID: {text[:60]!r}")
                if qid not in seen:
                    seen.add(qid)
                    qids.append(qid)
    except FileNotFoundError:
        raise DataError(f"{path}: QID file not found")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})")
    return qids


def qid_of(text: str):
    """"Q42" or "http://www.wikidata.org/entity/Q42" -> "Q42"; None for anything else."""
    for prefix in ENTITY_URIS:
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text if QID.fullmatch(text) else None


def sparql_qids(web, query: str, endpoint: str = SPARQL) -> list:
    """The items (entity URIs) of a SPARQL query's first column, in order, without repeats."""
    answer = web.json(endpoint, form={"query": query, "format": "json"}, accept="application/sparql-results+json",
                      max_bytes=MAX_SPARQL)
    try:
        column = answer["head"]["vars"][0]
        bindings = answer["results"]["bindings"]
    except (KeyError, IndexError, TypeError):
        raise DataError(f"{endpoint}: the answer is not a SPARQL JSON result with a column")
    qids = []
    for row in bindings:
        cell = row.get(column) if isinstance(row, dict) else None
        qid = qid_of(cell.get("value", "")) if isinstance(cell, dict) and cell.get("type") == "uri" else None
        if qid:
            qids.append(qid)
    return list(dict.fromkeys(qids))


def fetch_entities(web, qids: list, filters: Filters, counts: collections.Counter, api: str = API,
                   limit: int = None, progress=None):
    """The records of `qids` through wbgetentities (50 a request), in the order given."""
    kept = 0
    for start in range(0, len(qids), BATCH):
        ids = qids[start:start + BATCH]
        answer = web.json(api, {"action": "wbgetentities", "ids": "|".join(ids), "format": "json",
                                "props": "labels|descriptions|aliases|claims|sitelinks",
                                "languages": f"{filters.lang}|mul"})
        if not isinstance(answer, dict) or "error" in answer or not isinstance(answer.get("entities"), dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            info = error.get("info") if isinstance(error, dict) else "no entities in the answer"
            raise DataError(f"{api}: wbgetentities failed: {str(info)[:200]}")
        entities = answer["entities"]
        for qid in ids:
            entity = entities.get(qid)
            if not isinstance(entity, dict) or "missing" in entity:
                counts["missing"] += 1
                continue
            if entity.get("id") != qid:  # the API followed a redirect to another item
                counts["redirect"] += 1
                continue
            record, reason = entity_record(entity, filters)
            if not record:
                counts[reason] += 1
                continue
            if limit is not None and kept >= limit:
                return
            kept += 1
            yield record
        if progress:
            progress(len(ids))


def check_lang(lang: str) -> str:
    """A language code as Wikidata spells them (en, pt-br, zh-hans...)."""
    if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]{1,8}){0,3}", lang):
        raise DataError(f"--lang {lang!r}: expected a Wikidata language code such as en, fr or pt-br")
    return lang
