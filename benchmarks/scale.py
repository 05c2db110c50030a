"""Scale benchmark: a store of N synthetic entities at the real dimensions, opened and searched by a fresh process.

    python benchmarks/scale.py --entities 1000000 [--out DIR]     # writes benchmarks/results/scale.json

The store is written through the library's own encoding path (`encode_store`, chunk by chunk, its
retrieval index and manifest), with the terms computed by a random-weight MIMIC matcher (512/768/96, 40
text and 50 image tokens) from random encoder outputs instead of a CLIP pass, as benchmarks/linking.py
does; the queries are noisy copies of 200 KB entities. While the terms are written, the exhaustive
float32 top-10 of every query is computed from them (bound-pruned, streaming: the float32 terms are
never all in memory). Then, each phase in its own process:
  serve   opens the store (a fresh process that only opens it and links, with a full-size random-weight
          ViT-B/32 checkpoint loaded as `link` would) and measures: disk bytes per entity, open time, peak
          and anonymous RSS after the queries, p50/p95 of the default path and of --exact, and how often
          each top-10 equals the exhaustive float32 one;
  edit    adds 100 entities with `kb add`'s code (their encoding replaced by synthetic terms and not timed),
          then removes them.
--out DIR keeps DIR/store and DIR/checkpoint, so that
    python -m mimic link --kb DIR/store --checkpoint DIR/checkpoint --sentence "..." --mention "..."
runs on them (without --out they go to a temporary folder, deleted at the end).
"""
import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.linking import CHUNK, make_model, query_features, raw_features, threads  # noqa: E402
from mimic.fileio import write_json  # noqa: E402
from mimic.model.matcher import flatten_terms, select, unflatten_terms  # noqa: E402

K = 10
MARGIN = 1e-4


class ExhaustiveReference:
    """The exhaustive float32 top-k of each query, from the entity terms as they stream past, chunk by
    chunk: everything but the TGLU attention for every entity, and the full score (`Matcher.score`) for
    the entities whose upper bound (mimic/kb/search.py) can still beat the query's k-th best so far."""

    def __init__(self, matcher, mentions: dict, count: int):
        from mimic.kb.retrieval import unit_weights
        self.matcher, self.mentions, self.w = matcher, mentions, unit_weights(matcher)
        self.queries = len(mentions["cmfu"]["f"])
        self.best = [(torch.zeros(0, dtype=torch.long), torch.zeros(0)) for _ in range(self.queries)]
        self.scored = 0
        values = mentions["tglu"]["value"]
        centred = values - values.mean(dim=2, keepdim=True)
        self.bases = [torch.linalg.qr(centred[q].T)[0] for q in range(self.queries)]

    @torch.no_grad()
    def update(self, start: int, flat: dict):
        entities = unflatten_terms({k: torch.from_numpy(v) for k, v in flat.items()})
        small = {"tglu": {k: v for k, v in entities["tglu"].items() if k != "query"}, "vdlu": entities["vdlu"],
                 "cmfu": {"f": entities["cmfu"]["f"]}}
        ln = self.matcher.tglu.layer_norm
        cls = entities["tglu"]["cls"]
        scaled, shift = cls * ln.weight, cls @ ln.bias  # the same for every query
        for first in range(0, self.queries, 16):
            group = select(self.mentions, slice(first, first + 16))
            g2g = group["tglu"]["t_g"] @ small["tglu"]["t_g"].T
            e2m, m2e = self.matcher.vdlu.score(group["vdlu"], small["vdlu"])
            cheap = (self.w["tglu"] / 2 * g2g + self.w["vdlu"] * (e2m + m2e) / 2
                     + self.w["cmfu"] * self.matcher.cmfu.score(group["cmfu"], small["cmfu"]))
            for j in range(cheap.shape[0]):
                q = first + j
                spread = (scaled @ self.bases[q]).norm(dim=1)
                bound = cheap[j] + self.w["tglu"] / 2 * (shift + math.sqrt(cls.shape[1]) * spread)
                self._score(q, start, entities, bound)

    def _score(self, q: int, start: int, entities: dict, bound: torch.Tensor):
        best_index, best_s = self.best[q]
        order = torch.argsort(bound, descending=True)
        position, block = 0, 64
        while position < len(order):
            if len(best_s) == K and float(best_s[-1]) > float(bound[order[position]]) + MARGIN:
                break
            rows = order[position:position + block]
            s = self.matcher.score(select(self.mentions, slice(q, q + 1)), select(entities, rows)).s[0]
            self.scored += len(rows)
            index = torch.cat([best_index, rows + start])
            scores = torch.cat([best_s, s])
            keep = torch.from_numpy(np.lexsort((index.numpy(), -scores.numpy()))[:K])
            best_index, best_s = index[keep], scores[keep]
            position += len(rows)
            block = min(block * 2, 1024)
        self.best[q] = (best_index, best_s)

    def top(self) -> list:
        return [b[0].tolist() for b in self.best]

    def top_scores(self) -> list:
        return [b[1].tolist() for b in self.best]


# ---------------------------------------------------------------------------------------------------
def phase_build(args):
    from mimic.data.readers import Entity
    from mimic.kb.encode import encode_store
    from mimic.train.checkpoint import save_model
    threads()
    t0 = time.time()
    model = make_model()
    checkpoint, store = os.path.join(args.dir, "checkpoint"), os.path.join(args.dir, "store")
    save_model(model, checkpoint)
    rng = np.random.default_rng(7)
    targets = sorted(rng.choice(args.entities, size=args.queries, replace=False).tolist())
    with torch.no_grad():
        mentions = model.matcher.mention_side(query_features(targets, args.entities))
    reference = ExhaustiveReference(model.matcher, mentions, args.entities)

    def terms_of(start, end):
        with torch.no_grad():
            flat = {k: v.numpy() for k, v in flatten_terms(model.matcher.entity_side(raw_features(start, end))).items()}
        reference.update(start, flat)
        return flat
    entities = [Entity(index=i, name=f"entity {i}", attr="", qid=f"Q{i}") for i in range(args.entities)]
    encode_store(model, entities, "", store, f"synthetic-{args.entities}", chunk_size=CHUNK, precision=args.precision,
                 restart=True, source={"checkpoint": os.path.abspath(checkpoint)}, terms_of=terms_of,
                 progress=not args.no_progress)
    torch.save({"targets": targets, "terms": mentions, "reference": reference.top(),
                "reference_scores": reference.top_scores()},
               os.path.join(args.dir, "queries.pt"))
    return {"build_s": round(time.time() - t0, 1), "reference_fully_scored": reference.scored}


def _rss_anon_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _ms(values, q):
    return round(float(np.percentile(values, q)) * 1000, 2)


def phase_serve(args):
    from mimic.kb.store import KBStore
    from mimic.linker import Linker
    from mimic.train.loading import load_model
    threads()
    store_path = os.path.join(args.dir, "store")
    t = time.time()
    model = load_model(os.path.join(args.dir, "checkpoint"), device="cpu")
    model_s = time.time() - t
    from mimic.kb.fingerprint import model_fingerprints
    fingerprints = model_fingerprints(model)  # as a server computes them once at start
    rss_before_store = _rss_anon_bytes()
    t = time.time()
    linker = Linker(model, KBStore.load(store_path), candidates=args.candidates, fingerprints=fingerprints)
    open_s = time.time() - t
    data = torch.load(os.path.join(args.dir, "queries.pt"))
    mentions, reference, targets = data["terms"], data["reference"], data["targets"]
    default_t, exact_t, default_top, exact_top, evaluated = [], [], [], [], []
    for q in range(len(targets)):
        mention = select(mentions, slice(q, q + 1))
        t = time.perf_counter()
        default_top.append([r["index"] for r in linker.link_terms(mention, K)["results"]])
        default_t.append(time.perf_counter() - t)
    for q in range(min(args.exact_queries, len(targets))):
        mention = select(mentions, slice(q, q + 1))
        t = time.perf_counter()
        exact_top.append([r["index"] for r in linker.link_terms(mention, K, exact=True)["results"]])
        exact_t.append(time.perf_counter() - t)
        evaluated.append(linker.searcher.last_exact_evaluated)
    n, m = len(targets), len(exact_top)
    store = linker.store
    change = []  # S from the store's coded terms minus float32's, for the exhaustive top-10 of every query
    for q, (rows, scores) in enumerate(zip(reference, data.get("reference_scores", []))):
        stored = linker.searcher.score(select(mentions, slice(q, q + 1)), torch.tensor(rows)).s[0]
        change += (stored - torch.tensor(scores)).tolist()
    return {"bytes_per_entity": round(_folder_bytes(store_path) / len(store)), "open_s": round(open_s, 2),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_anon_bytes": _rss_anon_bytes(), "p50_ms": _ms(default_t, 50), "p95_ms": _ms(default_t, 95),
            "exact_p50_ms": _ms(exact_t, 50), "exact_p95_ms": _ms(exact_t, 95),
            "top10_agreement": sum(a == b for a, b in zip(default_top, reference)) / n,
            "top10_set_agreement": sum(set(a) == set(b) for a, b in zip(default_top, reference)) / n,
            "exact_top10_agreement": sum(a == b for a, b in zip(exact_top, reference)) / m,
            "default_equals_exact": sum(a == b for a, b in zip(default_top, exact_top)) / m,
            "gold_ranked_first": sum(t[0] == g for t, g in zip(default_top, targets)) / n,
            "s_change_max": round(float(np.abs(change).max()), 6) if change else None,
            "s_change_std": round(float(np.std(change)), 6) if change else None,
            "queries": n, "exact_queries": m, "exact_fully_scored_p50": int(np.median(evaluated)),
            "candidates": linker.searcher.candidates, "index": store.manifest["segments"][0]["index"]["kind"],
            "precision": store.manifest["precision"], "model_load_s": round(model_s, 2),
            "rss_anon_before_store_bytes": rss_before_store}


def phase_edit(args):
    """100 entities through `kb add`'s code (encoding replaced by synthetic terms, timed apart), then removed."""
    import mimic.kb.edit as kbedit
    from mimic.data.readers import Entity
    from mimic.train.loading import load_model
    threads()
    model = load_model(os.path.join(args.dir, "checkpoint"), device="cpu")
    encoding = []

    def synthetic_encode(model, entities, batch_size, device=None):
        t = time.perf_counter()
        with torch.no_grad():
            flat = flatten_terms(model.matcher.entity_side(raw_features(0, len(entities), seed=99)))
        encoding.append(time.perf_counter() - t)
        return {k: v.numpy() for k, v in flat.items() if k != "vdlu.e2m.q_norm"}
    kbedit._encode = synthetic_encode
    new = [Entity(index=0, name=f"new entity {i}", attr="added", qid=f"Qnew{i}") for i in range(100)]
    store = os.path.join(args.dir, "store")
    t = time.perf_counter()
    kbedit.edit_store(store, model, add=new)
    add_s = time.perf_counter() - t - sum(encoding)
    t = time.perf_counter()
    manifest = kbedit.edit_store(store, remove=[e.qid for e in new])
    return {"add_100_s": round(add_s, 2), "remove_100_s": round(time.perf_counter() - t, 2),
            "count_after_edits": manifest["count"]}


PHASES = {"build": phase_build, "serve": phase_serve, "edit": phase_edit}


def table(r) -> str:
    gb = 1e9
    return "\n".join([
        f"{r['entities']:,} entities, {r['queries']} queries, precision {r['precision']}, index {r['index']}, "
        f"{r['candidates']} candidates",
        f"{'disk per entity':34} {r['bytes_per_entity']:>10,} B",
        f"{'store open':34} {r['open_s']:>10.2f} s",
        f"{'peak RSS / anonymous RSS':34} {r['peak_rss_bytes'] / gb:>10.2f} GB / {r['rss_anon_bytes'] / gb:.2f} GB",
        f"{'default p50 / p95':34} {r['p50_ms']:>10.1f} ms / {r['p95_ms']:.1f} ms",
        f"{'--exact p50 / p95':34} {r['exact_p50_ms']:>10.1f} ms / {r['exact_p95_ms']:.1f} ms "
        f"({r['exact_queries']} queries)",
        f"{'top-10 = float32 exhaustive':34} {100 * r['top10_agreement']:>9.1f} % (default), "
        f"{100 * r['exact_top10_agreement']:.1f} % (--exact); the same 10 on {100 * r['top10_set_agreement']:.1f} %",
        f"{'default top-10 = --exact top-10':34} {100 * r['default_equals_exact']:>9.1f} %",
        f"{'change of S (compact - float32)':34} {r['s_change_std']:>10.1e} std, {r['s_change_max']:.1e} max",
        f"{'100 entities added / removed':34} {r['add_100_s']:>10.2f} s / {r['remove_100_s']:.2f} s "
        f"(encoding excluded)"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=110_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--exact-queries", type=int, default=200, help="how many of the queries are also run --exact")
    p.add_argument("--candidates", type=int, default=None, help="default: the linker's")
    p.add_argument("--precision", choices=["compact", "mixed", "float32"], default="compact")
    p.add_argument("--out", metavar="DIR", help="keep the store and the checkpoint here (DIR/store, DIR/checkpoint)")
    p.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.candidates is None:
        from mimic.kb.search import DEFAULT_CANDIDATES
        args.candidates = DEFAULT_CANDIDATES
    if args.phase:  # a child process: run one phase, print its JSON
        print(json.dumps(PHASES[args.phase](args)))
        return
    folder = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="mimic-scale-")
    os.makedirs(folder, exist_ok=True)
    result = {"entities": args.entities, "queries": args.queries}
    try:
        for phase in ("build", "serve", "edit"):
            t = time.time()
            cmd = [sys.executable, __file__, "--phase", phase, "--dir", folder] + [
                a for a in sys.argv[1:] if not a.startswith(("--phase", "--dir"))]
            out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"})
            if out.returncode != 0:
                sys.exit(f"phase {phase} failed (its log is above)")
            result.update(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"phase {phase}: {time.time() - t:.0f} s", file=sys.stderr)
    finally:
        if not args.out:
            shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(args.results, exist_ok=True)
    write_json(os.path.join(args.results, "scale.json"), result)
    write_json(os.path.join(args.results, f"scale-{args.entities}.json"), result)
    print(table(result))


if __name__ == "__main__":
    main()
