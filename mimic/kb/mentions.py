"""Finding the mentions of a text: the KB's names and aliases, and the short forms text uses for them.

An Aho-Corasick automaton (pyahocorasick) holds every name form of the KB, normalised: Unicode case
folding, accents removed, curly quotes made straight, dashes and runs of space made one space. A text is
normalised the same way, character by character, keeping where each normalised character came from, so
that a match is reported at its offsets in the ORIGINAL text. A match counts on word boundaries only (a
possessive "'s" is a boundary), and a match written all in lowercase counts only when one of the KB's
forms of it is lowercase too ("apple" in "an apple a day" is not Apple Inc.).

Name forms, by support:
    FULL   an entity's name and its aliases (the record's "aliases", when the store keeps them)
    SHORT  the forms text uses for people and organisations: the name without its qualifier
           ("Mercury (planet)" -> "Mercury", "Paris, Texas" -> "Paris"), the family name of a name of
           two or three capitalised words ("Edward Hopper" -> "Hopper"), an organisation's name without
           its legal suffix ("Apple Inc." -> "Apple")
Overlapping matches are resolved toward the longest span, then the best-supported, then the first.

The index is built from the records once per store version and kept in a cache folder ($MIMIC_CACHE,
else ~/.cache/mimic-el; `cached_store_index`): building costs about a second of CPU per 100,000 names,
loading it back a twentieth of that. A session's entities get a small index of their own per request.
"""
import functools
import glob
import hashlib
import json
import logging
import os
import pickle
import re
import unicodedata

import ahocorasick
import numpy as np

from ..fileio import atomic_file

log = logging.getLogger(__name__)

FULL, SHORT = 2, 1
SUPPORT = {FULL: "name", SHORT: "short form"}
MAX_SPANS = 200  # spans linked per text; the rest are reported as skipped
MAX_CANDIDATES = 64  # entities scored per span (full names first)
MAX_MATCHES = 100_000  # raw matches examined per text (a text of repeated names stops here)
MAX_FORM_CHARS = 200
CONTEXT_CHARS = 240  # a span's context in a long text: about what 40 tokens cover
QUOTES = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u02bc": "'", "\u2032": "'", "`": "'",
          "\u00b4": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u00ab": '"', "\u00bb": '"'}
DASHES = set("-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d")
QUALIFIER = re.compile(r"^(.+?)\s*(?:\([^()]*\)|,[^,]+)$")  # "Mercury (planet)", "Paris, Texas"
ORG_SUFFIXES = {"inc", "inc.", "ltd", "ltd.", "llc", "plc", "corp", "corp.", "corporation", "company", "co.",
                "gmbh", "ag", "s.a.", "sa", "group", "limited"}
NAME_SUFFIXES = {"jr", "jr.", "sr", "sr.", "ii", "iii", "iv"}


@functools.lru_cache(maxsize=1 << 16)
def _fold(c: str) -> str:
    """One character -> its normalised form: "" for a mark that belongs to the character before it."""
    if c in QUOTES:
        return QUOTES[c]
    if c in DASHES or c.isspace():
        return " "
    category = unicodedata.category(c)
    if category in ("Mn", "Me", "Cf"):  # a combining accent, a zero-width or soft-hyphen character
        return ""
    if category.startswith("C"):
        return " "
    folded = unicodedata.normalize("NFD", c.casefold())
    return "".join(x for x in folded if not unicodedata.combining(x)) or c


def normalise(text: str) -> tuple:
    """-> (normalised text, starts, ends): normalised character j came from text[starts[j]:ends[j]]
    (a dropped accent is counted in the character before it)."""
    out, starts, ends = [], [], []
    for i, c in enumerate(text):
        folded = _fold(c)
        if not folded:
            if ends:
                ends[-1] = i + 1
            continue
        for ch in folded:
            if ch == " " and (not out or out[-1] == " "):
                continue
            out.append(ch)
            starts.append(i)
            ends.append(i + 1)
    return "".join(out), starts, ends


_ASCII = str.maketrans({"-": " ", "`": "'", **{chr(i): " " for i in range(32)}, "\x7f": " "})


def normalise_name(name: str) -> str:
    """A name's normalised form (what `normalise` makes of it, without the offsets; fast for ASCII)."""
    if name.isascii():
        return " ".join(name.lower().translate(_ASCII).split())
    return normalise(name)[0].strip()


def name_forms(name, aliases=()) -> list:
    """An entity's name forms: [(text, FULL or SHORT)]."""
    full = [n.strip() for n in [name, *aliases] if isinstance(n, str) and n.strip()]
    forms = [(n, FULL) for n in full]
    for n in full:
        qualified = QUALIFIER.match(n) if ("(" in n or "," in n) else None
        base = qualified.group(1) if qualified else n
        if base != n:
            forms.append((base, SHORT))
        if " " not in base:
            continue
        words = base.split()
        if words[-1].lower() in ORG_SUFFIXES:
            forms.append((" ".join(words[:-1]).rstrip(","), SHORT))
            continue
        if len(words) >= 3 and words[-1].lower() in NAME_SUFFIXES:
            words = words[:-1]
        if 2 <= len(words) <= 3 and len(words[-1]) >= 3 and all(
                w[:1].isupper() and w.replace(".", "").replace("-", "").replace("'", "").isalpha() for w in words):
            forms.append((words[-1], SHORT))
    return forms


def _usable(form: str, strength: int) -> bool:
    """Forms too short or too long to be a mention, or without a letter or digit (a short form must hold a
    letter)."""
    if not 2 <= len(form) <= MAX_FORM_CHARS or not (form[0].isalnum() or any(c.isalnum() for c in form)):
        return False  # a "name" of punctuation alone ("...") would match punctuation anywhere
    return strength == FULL or (len(form) >= 3 and any(c.isalpha() for c in form))


def _word(c: str) -> bool:
    return c.isalnum()


class MentionIndex:
    """The automaton over the name forms of a list of entities (keys: ints), and each form's entities."""

    def __init__(self, automaton, lengths, uncased, offsets, entities, strengths):
        self.automaton, self.lengths, self.uncased = automaton, lengths, uncased
        self.offsets, self.entities, self.strengths = offsets, entities, strengths

    @classmethod
    def build(cls, entries) -> "MentionIndex":
        """entries: (entity key, name, aliases) for each entity."""
        keys, key_of, ents, strengths, uncased = {}, [], [], [], []
        for entity, name, aliases in entries:
            for text, strength in name_forms(name, aliases if isinstance(aliases, (list, tuple)) else ()):
                form = normalise_name(text)
                if not 2 <= len(form) <= MAX_FORM_CHARS or not _usable(form, strength):
                    continue
                k = keys.setdefault(form, len(keys))
                if k == len(uncased):
                    uncased.append(False)
                if not uncased[k] and text == text.lower():  # no capital: the form may be written in lowercase
                    uncased[k] = True
                key_of.append(k)
                ents.append(entity)
                strengths.append(strength)
        key_of, ents = np.array(key_of, np.int64), np.array(ents, np.int64)
        strengths = np.array(strengths, np.int8)
        # an entity once per form, at its best support; then by form, full names first
        pair = key_of * (int(ents.max()) + 1 if len(ents) else 1) + ents
        order = np.lexsort((-strengths, pair))
        first = np.unique(pair[order], return_index=True)[1]
        kept = order[first]
        key_of, ents, strengths = key_of[kept], ents[kept], strengths[kept]
        order = np.lexsort((ents, -strengths, key_of))
        key_of, ents, strengths = key_of[order], ents[order], strengths[order]
        offsets = np.searchsorted(key_of, np.arange(len(keys) + 1)).astype(np.int64)
        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        lengths = np.zeros(len(keys), np.int32)
        for form, k in keys.items():
            automaton.add_word(form, k)
            lengths[k] = len(form)
        if keys:
            automaton.make_automaton()
        return cls(automaton, lengths, np.array(uncased, bool), offsets, ents, strengths)

    def __len__(self):
        return len(self.lengths)

    def candidates(self, key: int, limit: int = MAX_CANDIDATES) -> tuple:
        """(entity keys, their support) of one form, full names first, at most `limit`."""
        lo, hi = int(self.offsets[key]), int(self.offsets[key + 1])
        return self.entities[lo:min(hi, lo + limit)], self.strengths[lo:min(hi, lo + limit)]

    def matches(self, text: str, folded: tuple, limit: int = MAX_MATCHES):
        """(start, end, form key) of every match on word boundaries, offsets in `text`; `folded` is
        normalise(text). At most `limit`."""
        if not len(self):
            return
        norm, starts, ends = folded
        count = 0
        for last, k in self.automaton.iter(norm):
            first = last - int(self.lengths[k]) + 1
            if (first > 0 and _word(norm[first]) and _word(norm[first - 1])) or \
                    (last + 1 < len(norm) and _word(norm[last]) and _word(norm[last + 1])):
                continue
            start, end = starts[first], ends[last]
            if not self.uncased[k] and not any(c.isupper() for c in text[start:end]):
                continue  # a common word written in lowercase, for a name that is always capitalised
            yield start, end, k
            count += 1
            if count >= limit:
                return


def find_spans(text: str, indexes: list, max_spans: int = MAX_SPANS, max_candidates: int = MAX_CANDIDATES) -> tuple:
    """The mentions of `text` that the indexes' names find -> (spans sorted by start, skipped count).
    A span: {"start", "end", "text", "support": "name" or "short form", "candidates": [array of entity
    keys per index]}. Overlaps go to the longest span, then the best-supported, then the first."""
    folded = normalise(text)
    found = {}  # (start, end) -> [support, candidates per index]
    for position, index in enumerate(indexes):
        for start, end, k in index.matches(text, folded):
            entities, strengths = index.candidates(k, max_candidates)
            span = found.setdefault((start, end), [0, [np.zeros(0, np.int64)] * len(indexes)])
            span[0] = max(span[0], int(strengths.max()) if len(strengths) else 0)
            span[1][position] = entities
    taken = bytearray(len(text))
    chosen = []
    for (start, end), (support, candidates) in sorted(found.items(), key=lambda f: (f[0][0] - f[0][1], -f[1][0],
                                                                                   f[0][0])):
        if taken.find(1, start, end) != -1:
            continue
        taken[start:end] = b"\x01" * (end - start)
        chosen.append({"start": start, "end": end, "text": text[start:end], "support": SUPPORT.get(support, "name"),
                       "candidates": candidates})
    chosen.sort(key=lambda s: s["start"])
    return chosen[:max_spans], max(0, len(chosen) - max_spans)


def store_index(store) -> MentionIndex:
    """The index of a store's names and aliases (an entity's key: its position in this version). Records
    are read as stored; "aliases" is used when a record has it (a list of strings)."""
    def entries():
        removed, position = set(store.removed.tolist()), 0
        for s, segment in enumerate(store.segments):  # in row order: the live position follows
            first = int(store.starts[s])
            for row in range(segment.count):
                if first + row in removed:
                    continue
                raw = segment.records[row]
                yield position, raw.get("name"), raw.get("aliases") or ()
                position += 1
    return MentionIndex.build(entries())


INDEX_FORMAT = 1  # raised when the rules change, so that cached indexes are built again


def cache_folder() -> str:
    root = os.environ.get("MIMIC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mimic-el")
    return os.path.join(root, "mentions")


def cached_store_index(store, folder: str = None) -> MentionIndex:
    """store_index, kept in `folder` (default `cache_folder()`) under the store's path and version: a
    later process opens the same version's index in a fraction of the build's time. One file per store
    (an older version's is replaced); a cache that cannot be read or written is built again, never an
    error. The file is a pickle: keep the cache folder your own."""
    folder = folder or cache_folder()
    where = hashlib.sha256(os.path.realpath(store.path).encode()).hexdigest()[:16]
    version = hashlib.sha256(json.dumps([INDEX_FORMAT, store.manifest], sort_keys=True, default=str)
                             .encode()).hexdigest()[:16]
    path = os.path.join(folder, f"{where}-{version}.pkl")
    try:
        with open(path, "rb") as f:
            index = pickle.load(f)
        if isinstance(index, MentionIndex):
            return index
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError, TypeError):
        pass
    index = store_index(store)
    try:
        with atomic_file(path, "wb") as f:
            pickle.dump(index, f, protocol=pickle.HIGHEST_PROTOCOL)
        for old in glob.glob(os.path.join(folder, f"{where}-*.pkl")):
            if old != path:
                os.remove(old)
    except OSError as e:  # a read-only home, a full disk: built again next time
        log.info("the mention index of %s is not cached (%s)", store.path, e)
    return index


def overlay_index(overlay) -> MentionIndex:
    """The index of a session's entities (key: overlay position)."""
    return MentionIndex.build((i, r.get("name"), r.get("aliases") or ()) for i, r in enumerate(overlay.records))


def context_window(text: str, start: int, end: int, size: int = CONTEXT_CHARS) -> tuple:
    """(start, end) of the text MIMIC reads as a span's sentence: the whole text when it is short, else
    about `size` characters around the span, cut at spaces (the model reads 40 tokens, mention included:
    the whole of a long text would give every span the text's first words)."""
    if len(text) <= size:
        return 0, len(text)
    lo = max(0, start - size // 3)
    hi = min(len(text), max(end, lo + size))
    if lo > 0:
        space = text.find(" ", lo, start)
        lo = space + 1 if space != -1 else lo
    if hi < len(text):
        space = text.rfind(" ", end, hi)
        hi = space if space != -1 else hi
    return lo, hi


NER_PIPELINE = "en_core_web_sm"
_ner = {}


def ner_spans(text: str, pipeline: str = NER_PIPELINE) -> list:
    """(start, end) of the named entities a spaCy pipeline finds in `text`, or [] when spaCy or the
    pipeline is not installed (never needed: the KB's names find mentions without it)."""
    if pipeline not in _ner:
        try:
            import spacy
            _ner[pipeline] = spacy.load(pipeline, disable=["lemmatizer"])
        except Exception as e:  # not installed, or no such pipeline: said once, then skipped
            import logging
            logging.getLogger(__name__).warning("no NER spans: spaCy pipeline %s unavailable (%s)", pipeline,
                                                type(e).__name__)
            _ner[pipeline] = None
    nlp = _ner[pipeline]
    return [] if nlp is None else [(e.start_char, e.end_char) for e in nlp(text).ents]


def add_ner_spans(text: str, spans: list, found: list, max_spans: int, indexes: int) -> tuple:
    """The KB's spans plus the NER spans `found` that overlap none of them (support "ner", no name
    candidates: the search's top k ranks them) -> (spans sorted by start, skipped count)."""
    taken = bytearray(len(text))
    for s in spans:
        taken[s["start"]:s["end"]] = b"\x01" * (s["end"] - s["start"])
    extra = []
    for start, end in sorted(set(found)):
        if 0 <= start < end <= len(text) and taken.find(1, start, end) == -1 and text[start:end].strip():
            taken[start:end] = b"\x01" * (end - start)
            extra.append({"start": start, "end": end, "text": text[start:end], "support": "ner",
                          "candidates": [np.zeros(0, np.int64)] * indexes})
    merged = sorted(spans + extra, key=lambda s: s["start"])
    return merged[:max_spans], max(0, len(merged) - max_spans)
