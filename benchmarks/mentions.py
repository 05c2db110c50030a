"""Mentions benchmark: finding and linking every mention of a text (mimic/kb/mentions.py, Linker.link_text).

    python benchmarks/mentions.py                          # about 10 minutes; writes benchmarks/results/mentions.json
    python benchmarks/mentions.py --wikidiverse test.json  # detection on WikiDiverse's own annotations too
    python benchmarks/mentions.py --parts detection         # one part: quality, detection or link

Measured:
  quality   on a synthetic dataset the benchmark writes in WikiDiverse's layout (a JSON list of
            [text, image_url, topic, [[surface, category, start, end, wikipedia_url], ...]]), several gold
            mentions per text, surface forms as text writes them (full names, family names, names without
            their qualifier or legal suffix, aliases, possessives, curly quotes, accents left out, all
            capitals) among lowercase words that are also KB names, and on a WikiDiverse file when given
            (its KB: the titles of every gold URL of the file, without aliases; say so when quoting it):
              detection precision and recall, strong (exact span) and weak (overlap);
              end-to-end linking precision, recall and F1 as GERBIL defines them (micro; a NIL answer is
              no annotation; strong: exact span and entity, weak: overlap and entity), with MIMIC on a
              tiny random-weight model (it measures the pipeline, not MIMIC's accuracy) and the ceiling a
              trained model has (the share of gold mentions whose span is found with the gold entity among
              its candidates);
  cost      detection over 1,000,000 synthetic names (the automaton's build time and memory, the time per
            text of 20, 200 and 2,000 words), and link_text end to end at real dimensions (a full-size
            random-weight ViT-B/32 MIMIC, a store of --store-entities entities written with random terms):
            its time with the CLIP pass reported beside the rest, and one batched pass for all spans against
            one pass per span. Scoring a span reads only its candidates' rows, so the rest does not grow with
            the store: the 1M figure is detection (1M names) + scoring (any store) + CLIP.
"""
import argparse
import dataclasses
import json
import os
import random
import re
import resource
import sys
import tempfile
import time
import urllib.parse

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mimic.data.readers import Entity  # noqa: E402
from mimic.fileio import write_json  # noqa: E402
from mimic.kb.mentions import MentionIndex, find_spans  # noqa: E402

SYLLABLES = ["ka", "ro", "mi", "sel", "dor", "va", "lin", "te", "bra", "no", "quen", "tis", "ar", "lu", "mer",
             "go", "fa", "ri", "zan", "pel", "os", "hu", "ne", "cor"]
ACCENTED = ["Müller", "Núñez", "Sørlie", "Dvořák", "Éluard", "Ångström", "Łukasz", "Renée", "Gödel", "Citroën"]
FILLER = ("the of and a in to was for on with as by at from his her their this that which after before over "
          "new old first last great small city river summit harbor rose bill mark art opened visited met "
          "praised said built wrote").split()
COMMON_NAMES = ["Summit", "Harbor", "Rose", "Bill", "Mark", "Art"]  # KB names that are lowercase words too
TEMPLATES = ["{0} met {1} at {2}.", "In {2}, {0} praised {1}’s work.", "{1} said that {0} visited {2} after {3}.",
             "“{0}” and {1} opened {2} with {3}.", "{0}, {1} and {2} wrote to {3}."]
URL = "https://en.wikipedia.org/wiki/"


def _word(rng) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).title()


def synthetic_entities(count: int, seed: int = 0) -> list:
    """{"title", "name", "aliases", "kind", "family"}: people (2-3 words, some sharing family names, some
    accented), places with a qualifier, organisations with a legal suffix and an acronym alias."""
    rng, out, seen = random.Random(seed), [], set()
    families = [_word(rng) for _ in range(max(10, count // 8))] + ACCENTED
    while len(out) < count:
        kind = rng.choice(["person", "person", "place", "org"])
        if kind == "person":
            family = rng.choice(families)
            name = " ".join([_word(rng)] + ([_word(rng)] if rng.random() < 0.2 else []) + [family])
            aliases, short = [], family
        elif kind == "place":
            base = _word(rng)
            name, aliases, short = f"{base} ({_word(rng)})", [], base
        else:
            base = " ".join(_word(rng) for _ in range(rng.randint(1, 2)))
            name = f"{base} {rng.choice(['Inc.', 'Ltd', 'Corporation'])}"
            aliases, short = ["".join(w[0] for w in base.split()).upper() + "X" + _word(rng)[:2].upper()], base
        if name in seen:
            continue
        seen.add(name)
        out.append({"title": name.replace(" ", "_"), "name": name, "aliases": aliases, "kind": kind, "short": short})
    for word in COMMON_NAMES:
        out.append({"title": word, "name": word, "aliases": [], "kind": "place", "short": word})
    return out


def _surface(entity: dict, rng) -> str:
    """How a text writes the entity: its name, a short form or an alias, sometimes without accents or in capitals."""
    r = rng.random()
    if entity["kind"] == "person" and r < 0.3 or entity["kind"] != "person" and r < 0.4:
        text = entity["short"]
    elif entity["aliases"] and r < 0.55:
        text = entity["aliases"][0]
    else:
        text = entity["name"]
    if rng.random() < 0.1:
        import unicodedata
        text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    if rng.random() < 0.05:
        text = text.upper()
    return text


def synthetic_texts(entities: list, count: int, seed: int = 1) -> list:
    """WikiDiverse-layout items: [text, image_url, topic, [[surface, category, start, end, url], ...]]."""
    rng, items = random.Random(seed), []
    linkable = [e for e in entities if e["name"] not in COMMON_NAMES]
    for _ in range(count):
        template = rng.choice(TEMPLATES)
        slots = template.count("{")
        chosen = rng.sample(linkable, slots)
        surfaces = [_surface(e, rng) for e in chosen]
        filler = " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 8)))
        text, gold = filler.capitalize() + ". ", []
        for i, piece in enumerate(re.split(r"\{(\d)\}", template)):
            if i % 2 == 0:  # literal text between the slots
                text += piece
                continue
            entity, start = chosen[int(piece)], len(text)
            text += surfaces[int(piece)]
            gold.append([surfaces[int(piece)], entity["kind"], start, len(text), URL + urllib.parse.quote(entity["title"])])
        items.append([text, "", "synthetic", gold])
    return items


def read_wikidiverse(path: str) -> list:
    """-> [(text, [(start, end, title)])] from a WikiDiverse-layout JSON file."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out = []
    for item in data:
        text, mentions = item[0], item[3]
        out.append((text, [(int(m[2]), int(m[3]), urllib.parse.unquote(m[4].rsplit("/", 1)[-1])) for m in mentions]))
    return out


def _prf(correct_pred: int, pred: int, correct_gold: int, gold: int) -> dict:
    p = correct_pred / pred if pred else 0.0
    r = correct_gold / gold if gold else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4)}


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def detection_scores(texts: list, predicted: list) -> dict:
    """texts: [(text, gold [(start, end, title)])]; predicted: [[(start, end)]] -> strong and weak P/R/F1."""
    strong = [0, 0, 0, 0]
    weak = [0, 0, 0, 0]
    for (_, gold), pred in zip(texts, predicted):
        spans = {(s, e) for s, e, _ in gold}
        strong = [strong[0] + len(spans & set(pred)), strong[1] + len(pred), strong[2] + len(spans & set(pred)),
                  strong[3] + len(spans)]
        weak = [weak[0] + sum(any(_overlap(p, g) for g in spans) for p in pred), weak[1] + len(pred),
                weak[2] + sum(any(_overlap(p, g) for p in pred) for g in spans), weak[3] + len(spans)]
    return {"strong": _prf(*strong), "weak": _prf(*weak)}


def linking_scores(texts: list, answers: list) -> dict:
    """GERBIL's micro P/R/F1 of (span, entity) annotations; answers: [[(start, end, title or None)]]."""
    strong, weak = [0, 0, 0, 0], [0, 0, 0, 0]
    for (_, gold), answer in zip(texts, answers):
        pred = [(s, e, t) for s, e, t in answer if t is not None]
        hit = {(s, e, t) for s, e, t in gold} & set(pred)
        strong = [strong[0] + len(hit), strong[1] + len(pred), strong[2] + len(hit), strong[3] + len(gold)]
        weak = [weak[0] + sum(any(_overlap(p, g) and p[2] == g[2] for g in gold) for p in pred), weak[1] + len(pred),
                weak[2] + sum(any(_overlap(p, g) and p[2] == g[2] for p in pred) for g in gold), weak[3] + len(gold)]
    return {"strong": _prf(*strong), "weak": _prf(*weak)}


def index_of(entities: list) -> tuple:
    """(MentionIndex over the entities' names and aliases, titles by entity key)."""
    index = MentionIndex.build((i, e["name"], e.get("aliases", ())) for i, e in enumerate(entities))
    return index, [e["title"] for e in entities]


def detect(texts: list, index) -> list:
    return [[(s["start"], s["end"]) for s in find_spans(text, [index])[0]] for text, _ in texts]


# -- quality ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class AliasEntity(Entity):
    aliases: list = None


def tiny_linker(entities: list, folder: str):
    """A store of the entities encoded by a tiny random-weight MIMIC, their aliases in its records."""
    from mimic.data.synthetic import make_tiny_clip
    from mimic.kb import encode as encode_module
    from mimic.kb.encode import encode_store
    from mimic.kb.store import KBStore, entity_record
    from mimic.linker import Linker
    from mimic.model.mimic import MIMIC, MIMICConfig
    model = MIMIC.from_encoder(MIMICConfig(encoder=make_tiny_clip(os.path.join(folder, "clip"), seed=0)), seed=1).eval()
    rows = [AliasEntity(i, e["name"], f"a {e['kind']}", qid=e["title"], aliases=e["aliases"])
            for i, e in enumerate(entities)]
    # entity files give aliases to records from issue 20 on; until then the benchmark hands them over
    plain = encode_module.entity_record
    encode_module.entity_record = lambda e, f: {**entity_record(e, f), "aliases": e.aliases}
    try:
        encode_store(model, rows, ".", os.path.join(folder, "store"), "bench", batch_size=64, progress=False)
    finally:
        encode_module.entity_record = plain
    return Linker(model, KBStore.load(os.path.join(folder, "store")))


def quality(args, folder: str) -> dict:
    entities = synthetic_entities(args.kb_entities)
    items = synthetic_texts(entities, args.texts)
    path = os.path.join(folder, "synthetic_test.json")
    write_json(path, items)
    texts = read_wikidiverse(path)  # the synthetic set goes through the WikiDiverse reader too
    index, titles = index_of(entities)
    out = {"synthetic": {"kb_entities": len(entities), "texts": len(texts),
                         "gold_mentions": sum(len(g) for _, g in texts),
                         "detection": detection_scores(texts, detect(texts, index))}}
    linker = tiny_linker(entities, folder)
    answers, ceiling = [], 0
    for text, gold in texts:
        # every candidate ranked (64 at most per span): the top one is the answer, the rest give the ceiling
        result = linker.link_text(text, top_k=64)
        answers.append([(m["start"], m["end"], None if m["nil"] or not m["results"] else m["results"][0]["qid"])
                        for m in result["mentions"]])
        found = {(m["start"], m["end"]): {r["qid"] for r in m["results"]} for m in result["mentions"]}
        ceiling += sum(t in found.get((s, e), ()) for s, e, t in gold)
    out["synthetic"]["linking_tiny_random_mimic"] = linking_scores(texts, answers)
    out["synthetic"]["linking_ceiling_recall"] = round(ceiling / out["synthetic"]["gold_mentions"], 4)
    for path in args.wikidiverse or ():
        real = read_wikidiverse(path)
        kb = sorted({t for _, gold in real for _, _, t in gold})
        index, _ = index_of([{"title": t, "name": t.replace("_", " "), "aliases": []} for t in kb])
        out[os.path.basename(path)] = {"texts": len(real), "gold_mentions": sum(len(g) for _, g in real),
                                       "kb_entities": len(kb), "detection": detection_scores(real, detect(real, index))}
    return out


# -- cost ---------------------------------------------------------------------------------------------
def _ms(values) -> dict:
    return {"p50_ms": round(float(np.percentile(values, 50)) * 1000, 2),
            "p95_ms": round(float(np.percentile(values, 95)) * 1000, 2)}


def text_of(words: int, entities: list, rng) -> str:
    """A text of about `words` words, a name every 8 words or so."""
    out = []
    while len(out) < words:
        out += [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        out += _surface(rng.choice(entities), rng).split()
    text = " ".join(out[:words])
    return text[0].upper() + text[1:] + "."


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def detection_cost(args) -> dict:
    entities = synthetic_entities(args.names, seed=5)
    names = sum(1 + len(e["aliases"]) for e in entities)
    before = _rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    index, _ = index_of(entities)
    build, cpu = time.perf_counter() - started, time.process_time() - cpu
    out = {"entities": len(entities), "names_and_aliases": names, "forms": len(index),
           "build_seconds": round(build, 2), "build_seconds_per_100k_names": round(build / names * 100_000, 3),
           "build_cpu_seconds_per_100k_names": round(cpu / names * 100_000, 3),
           "index_rss_mb": round(_rss_mb() - before), "load_average": os.getloadavg()[0]}
    # what a later process pays instead: the index read back from its cache file (mentions.cached_store_index)
    import pickle
    data = pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL)
    started, cpu = time.perf_counter(), time.process_time()
    pickle.loads(data)
    out.update(cache_file_mb=round(len(data) / 1e6), cache_load_seconds=round(time.perf_counter() - started, 2),
               cache_load_cpu_seconds=round(time.process_time() - cpu, 2))
    rng = random.Random(9)
    for words in (20, 200, 2000):
        times, cpu, spans = [], [], []
        for _ in range(args.repeats):
            text = text_of(words, entities, rng)
            t, c = time.perf_counter(), time.process_time()
            found, _ = find_spans(text, [index])
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            spans.append(len(found))
        out[f"{words}_words"] = {**_ms(times), "cpu": _ms(cpu), "spans_mean": round(float(np.mean(spans)), 1)}
    return out


def linking_cost(args, folder: str) -> dict:
    """link_text at real dimensions: a full-size random ViT-B/32 MIMIC, a store of random terms."""
    from benchmarks.linking import CHUNK, make_model, raw_features, threads
    from mimic.kb.encode import encode_store
    from mimic.kb.store import KBStore
    from mimic.linker import Linker
    from mimic.model.matcher import flatten_terms
    threads()
    model = make_model()
    entities = synthetic_entities(args.store_entities, seed=7)

    def terms_of(start, end):
        with torch.no_grad():
            return {k: v.numpy() for k, v in flatten_terms(model.matcher.entity_side(raw_features(start, end))).items()}
    rows = [Entity(i, e["name"], "", qid=e["title"]) for i, e in enumerate(entities)]
    encode_store(model, rows, "", os.path.join(folder, "real"), "bench", chunk_size=CHUNK, terms_of=terms_of,
                 progress=False)
    linker = Linker(model, KBStore.load(os.path.join(folder, "real")), check=False)
    linker.mention_index()  # built once per store version, before the first text
    image = os.path.join(ROOT, "assets", "demo_kb", "mention_image", "hopper_face_crop.jpg")
    encode_seconds = []
    plain = linker.text_terms

    def timed(*a, **k):
        t = time.perf_counter()
        terms = plain(*a, **k)
        encode_seconds.append(time.perf_counter() - t)
        return terms
    linker.text_terms = timed
    rng, out = random.Random(11), {"store_entities": len(entities)}
    for words in (20, 200, 2000):
        total, clip, spans = [], [], []
        for _ in range(args.link_repeats):
            text = text_of(words, entities, rng)
            encode_seconds.clear()
            t = time.perf_counter()
            result = linker.link_text(text, image, top_k=5)
            total.append(time.perf_counter() - t)
            clip.append(sum(encode_seconds))
            spans.append(len(result["mentions"]))
        rest = [a - b for a, b in zip(total, clip)]
        out[f"{words}_words"] = {"total": _ms(total), "clip_pass": _ms(clip), "without_clip": _ms(rest),
                                 "spans_mean": round(float(np.mean(spans)), 1)}
    linker.text_terms = plain
    # one batched pass (the picture once) against one pass per span, on a 200-word text
    from mimic.kb.mentions import context_window
    from mimic.linker import Query
    from mimic.query import clean_text
    text = text_of(200, entities, rng)
    spans, _ = find_spans(text, [linker.mention_index()])
    contexts = [clean_text(text[slice(*context_window(text, s["start"], s["end"]))]) for s in spans]
    mentions = [s["text"] for s in spans]
    t = time.perf_counter()
    linker.text_terms(contexts, mentions, image)
    batched = time.perf_counter() - t
    t = time.perf_counter()
    for c, m in zip(contexts, mentions):
        linker.mention_terms([Query(c, m, image)])
    out["encoder_200_words"] = {"spans": len(spans), "one_pass_ms": round(batched * 1000, 1),
                                "pass_per_span_ms": round((time.perf_counter() - t) * 1000, 1)}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kb-entities", type=int, default=2000, help="entities of the synthetic quality KB")
    p.add_argument("--texts", type=int, default=300, help="synthetic texts (several gold mentions each)")
    p.add_argument("--wikidiverse", nargs="*", metavar="FILE", help="WikiDiverse-layout files: detection on them")
    p.add_argument("--names", type=int, default=1_000_000, help="synthetic entities of the detection cost")
    p.add_argument("--repeats", type=int, default=50, help="texts per size for detection")
    p.add_argument("--store-entities", type=int, default=20_000, help="entities of the real-dimension store")
    p.add_argument("--link-repeats", type=int, default=5, help="texts per size for link_text")
    p.add_argument("--parts", default="quality,detection,link", help="which parts to run, comma-separated")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "mentions.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    parts = args.parts.split(",")
    result = {"threads": 2, "load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as folder:
        if "quality" in parts:
            result["quality"] = quality(args, folder)
            print(json.dumps(result["quality"], indent=1), file=sys.stderr)
        if "detection" in parts:
            result["detection_cost"] = detection_cost(args)
            print(json.dumps(result["detection_cost"], indent=1), file=sys.stderr)
        if "link" in parts:
            result["link_text_cost"] = linking_cost(args, folder)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
