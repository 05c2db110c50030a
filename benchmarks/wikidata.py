"""Reading Wikidata's JSON dump: entities per second on this machine, and the projection for the full dump.

    python benchmarks/wikidata.py [--items 20000]   # about 2 minutes; writes benchmarks/results/wikidata.json

A synthetic dump in the real layout (a JSON array, one entity a line): items shaped like the average of
the real dump (labels and descriptions in 40 languages, aliases in 10, 10 statements with qualifiers and
references, 12 sitelinks: about 14 kB a line, as the real dump's 1.6 TB for ~110M entities), 5 % with a
picture (P18), plus properties and lexemes. Measured: `read_dump` on .json.gz and .json.bz2, with one and
two parsing processes, keeping every item or only those with a picture (--require-image, where the
cheap pre-filter skips parsing). Throughput counts dump lines (entities) read per second.
"""
import argparse
import bz2
import collections
import gzip
import json
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mimic.data import wikidata  # noqa: E402
from mimic.fileio import write_json  # noqa: E402

FULL_DUMP = 110_000_000  # entities in latest-all.json (items, properties, lexemes), late 2026
LANGS = ["en", "fr", "de", "es", "it", "nl", "pt", "ru", "ja", "zh", "ar", "pl", "sv", "uk", "ca", "cs", "fi", "hu",
         "ko", "tr", "he", "id", "vi", "fa", "ro", "da", "nb", "el", "bg", "sr", "hr", "sk", "sl", "et", "lt", "lv",
         "eu", "gl", "hy", "ka"]


def snak(prop, value, kind="wikibase-item"):
    if kind == "wikibase-item":
        datavalue = {"value": {"entity-type": "item", "numeric-id": value, "id": f"Q{value}"},
                     "type": "wikibase-entityid"}
    else:
        datavalue = {"value": value, "type": "string"}
    return {"snaktype": "value", "property": prop, "hash": "%040x" % random.getrandbits(160),
            "datavalue": datavalue, "datatype": kind}


def fake_item(n: int, rng: random.Random) -> dict:
    qid = f"Q{n}"
    words = lambda k: " ".join(rng.choice(["stone", "river", "painting", "city", "player", "saint", "house", "of",  # noqa: E731
                                           "the", "north", "old", "new", "museum", "church"]) for _ in range(k))
    claims = {}
    for s in range(10):
        prop = f"P{rng.randint(17, 3000)}"
        statement = {"mainsnak": snak(prop, rng.randint(1, 10**8)), "type": "statement",
                     "qualifiers": {"P585": [snak("P585", "+2020-01-01T00:00:00Z", "time")]},
                     "qualifiers-order": ["P585"], "id": f"{qid}${rng.getrandbits(64):016x}", "rank": "normal",
                     "references": [{"hash": "%040x" % rng.getrandbits(160),
                                     "snaks": {"P248": [snak("P248", rng.randint(1, 10**6))]},
                                     "snaks-order": ["P248"]}]}
        claims.setdefault(prop, []).append(statement)
    if rng.random() < 0.05:
        claims["P18"] = [{"mainsnak": snak("P18", f"{words(3).title()}.jpg", "commonsMedia"), "type": "statement",
                          "id": f"{qid}$p18", "rank": "normal"}]
    return {"type": "item", "id": qid,
            "labels": {lang: {"language": lang, "value": words(3)} for lang in LANGS},
            "descriptions": {lang: {"language": lang, "value": words(6)} for lang in LANGS},
            "aliases": {lang: [{"language": lang, "value": words(2)}] for lang in LANGS[:10]},
            "claims": claims,
            "sitelinks": {f"{lang}wiki": {"site": f"{lang}wiki", "title": words(2), "badges": []} for lang in LANGS[:12]},
            "pageid": n, "ns": 0, "title": qid, "lastrevid": 2_000_000_000 + n, "modified": "2026-11-30T12:00:00Z"}


def write_dump(folder: str, items: int) -> dict:
    rng = random.Random(0)
    random.seed(0)
    lines = []
    for n in range(1, items + 1):
        entity = fake_item(n, rng)
        if n % 500 == 0:
            entity = {"type": "property", "datatype": "string", "id": f"P{n}", "labels": entity["labels"], "claims": {}}
        elif n % 700 == 0:
            entity = {"type": "lexeme", "id": f"L{n}", "lemmas": {"en": {"language": "en", "value": "w"}}, "claims": {}}
        lines.append(json.dumps(entity, ensure_ascii=False, separators=(",", ":")))
    text = ("[\n" + ",\n".join(lines) + "\n]\n").encode()
    paths = {}
    for suffix, compress in ((".json.gz", lambda b: gzip.compress(b, 6)), (".json.bz2", bz2.compress)):
        paths[suffix] = os.path.join(folder, "dump" + suffix)
        with open(paths[suffix], "wb") as f:
            f.write(compress(text))
    return {"paths": paths, "bytes": len(text), "per_line": len(text) / items}


def measure(path: str, workers: int, require_image: bool) -> dict:
    counts = collections.Counter()
    start = time.perf_counter()
    kept = sum(1 for _ in wikidata.read_dump(path, wikidata.Filters(require_image=require_image), counts, workers))
    seconds = time.perf_counter() - start
    lines = kept + sum(counts.values())
    return {"entities_per_s": round(lines / seconds), "kept": kept, "seconds": round(seconds, 2),
            "full_dump_hours": round(FULL_DUMP / (lines / seconds) / 3600, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "wikidata.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        dump = write_dump(folder, args.items)
        print(f"synthetic dump: {args.items} entities, {dump['per_line'] / 1000:.1f} kB a line")
        results = {"items": args.items, "kB_per_line": round(dump["per_line"] / 1000, 1), "cpus": os.cpu_count(),
                   "load_average_at_start": os.getloadavg()[0], "runs": []}  # other jobs share the CPUs
        for suffix, path in dump["paths"].items():
            for require_image in (False, True):
                for workers in (1, 2):
                    row = {"file": suffix, "require_image": require_image, "workers": workers,
                           **measure(path, workers, require_image)}
                    print(row)
                    results["runs"].append(row)
    results["load_average_at_end"] = os.getloadavg()[0]
    write_json(args.out, results)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
