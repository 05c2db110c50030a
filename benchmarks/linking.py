"""Linking benchmark: a synthetic KB of 110,000 entities at real dimensions, 200 queries, 2 threads.

    python benchmarks/linking.py                  # about 25 minutes; writes benchmarks/results/linking.json

Reports, per query (matcher only, the mention already encoded):
  (a) the authors' evaluation path: the matcher re-run over the whole KB from raw encoder outputs, in
      chunks of 6,000 entities (input norms and every projection recomputed), on a few queries;
  (b) `--exact`: bound-pruned exact search over the store;
  (c) the default path: faiss candidates, then the exact top-k among them;
and the share of queries whose (b) and (c) top-10 equal the exhaustive top-10 (a full scan of the
store), the agreement of (a) with (b), peak memory of a process serving the store, the store's load
time, and the end-to-end latency of one query with a full-size CLIP ViT-B/32 (random weights).

Each phase runs in its own process so that peak memory is that of the phase alone.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mimic.data.readers import Entity  # noqa: E402
from mimic.fileio import write_json  # noqa: E402
from mimic.model.matcher import Features, Matcher, flatten_terms, select  # noqa: E402

TEXT_LEN, IMAGE_TOKENS, TEXT_DIM, TOKEN_DIM, DV = 40, 50, 512, 512, 96
CHUNK = 6000  # the authors' eval_chunk_size


def threads(n=2):
    import faiss
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def raw_features(start, end, seed=0):
    """Encoder outputs of entities [start, end): deterministic per entity block, CLIP-like structure
    (unit-norm text embeddings; token states = a per-text mean plus per-token variation)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + start)
    n = end - start
    t_g = torch.randn(n, TEXT_DIM, generator=g)
    t_g = t_g / t_g.norm(dim=1, keepdim=True)
    t_l = torch.randn(n, 1, TOKEN_DIM, generator=g) + 0.7 * torch.randn(n, TEXT_LEN, TOKEN_DIM, generator=g)
    v_g = torch.randn(n, DV, generator=g)
    v_l = torch.randn(n, 1, DV, generator=g) + 0.7 * torch.randn(n, IMAGE_TOKENS, DV, generator=g)
    return Features(t_g, t_l, v_g, v_l)


def make_matcher(seed=0):
    torch.manual_seed(seed)
    return Matcher().eval()  # PyTorch's default initialisation: random weights at real dimensions


def query_features(entity_ids, count, seed=1):
    """Mentions that refer to KB entities: the entity's encoder outputs plus noise."""
    g = torch.Generator().manual_seed(seed)
    rows = {}
    for start in sorted({i // CHUNK * CHUNK for i in entity_ids}):
        block = raw_features(start, min(start + CHUNK, count))
        # clone: a view would keep the whole block (6,000 entities, 0.5 GB) alive
        rows.update({i: Features(*(t.clone() for t in vars(block[i - start:i - start + 1]).values()))
                     for i in entity_ids if start <= i < start + CHUNK})
    parts = []
    for i in entity_ids:
        base = rows[i]
        noise = lambda t, s: t + s * torch.randn(t.shape, generator=g)  # noqa: E731
        t_g = noise(base.t_g, 0.03)
        parts.append(Features(t_g / t_g.norm(dim=1, keepdim=True), noise(base.t_l, 0.5), noise(base.v_g, 0.5),
                              noise(base.v_l, 0.5)))
    return Features.cat(parts)


# ---------------------------------------------------------------------------------------------------
def make_model():
    """A full-size MIMIC on a random-weight ViT-B/32 (no download), its MIMIC layers seeded."""
    from mimic.model.mimic import MIMIC, MIMICConfig
    return MIMIC.from_encoder(MIMICConfig(), pretrained=False, seed=0).eval()


def phase_build(args):
    """Write the synthetic store through the store's own encoding path (terms from random encoder
    outputs instead of a CLIP pass), plus the queries."""
    from mimic.kb.encode import encode_store
    threads()
    model = make_model()
    matcher = model.matcher
    torch.save(matcher.state_dict(), os.path.join(args.workdir, "matcher.pt"))
    t0 = time.time()

    def terms_of(start, end):
        with torch.no_grad():
            return {k: v.numpy() for k, v in flatten_terms(matcher.entity_side(raw_features(start, end))).items()}
    entities = [Entity(index=i, name=f"entity {i}", attr="", qid=f"Q{i}") for i in range(args.entities)]
    encode_store(model, entities, "", os.path.join(args.workdir, "kb"), "synthetic", chunk_size=CHUNK,
                 precision=args.precision, restart=True, terms_of=terms_of, progress=False)
    rng = np.random.default_rng(7)
    targets = rng.choice(args.entities, size=args.queries, replace=False).tolist()
    features = query_features(targets, args.entities)
    with torch.no_grad():
        mention = matcher.mention_side(features)
    torch.save({"targets": targets, "terms": mention, "features": vars(features)},
               os.path.join(args.workdir, "queries.pt"))
    return {"build_seconds": round(time.time() - t0, 1)}


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentiles(values):
    return {"p50_ms": round(float(np.percentile(values, 50)) * 1000, 2),
            "p95_ms": round(float(np.percentile(values, 95)) * 1000, 2)}


def phase_serve(args):
    """Load the store, search every query both ways, and scan the whole store for the reference."""
    from mimic.kb.search import Searcher
    from mimic.kb.store import KBStore
    threads()
    rss_before = _peak_rss_mb()
    t0 = time.time()
    store = KBStore.load(os.path.join(args.workdir, "kb"))
    matcher = make_matcher()
    matcher.load_state_dict(torch.load(os.path.join(args.workdir, "matcher.pt")))
    searcher = Searcher(matcher, store, candidates=args.candidates)
    load_seconds = time.time() - t0
    queries = torch.load(os.path.join(args.workdir, "queries.pt"))
    terms = queries["terms"]
    default_t, exact_t, evaluated, agree_default, agree_exact, gold_at_1 = [], [], [], 0, 0, 0
    results = []
    for q in range(len(queries["targets"])):
        mention = select(terms, slice(q, q + 1))
        t = time.perf_counter()
        fast, _ = searcher.search(mention, 10)
        default_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        exact, _ = searcher.search(mention, 10, exact=True)
        exact_t.append(time.perf_counter() - t)
        evaluated.append(searcher.last_exact_evaluated)
        with torch.no_grad():  # the exhaustive reference: every entity's full score, from the store
            s = torch.cat([searcher.score(mention, torch.arange(i, min(i + 4096, searcher.count))).s[0]
                           for i in range(0, searcher.count, 4096)])
        order = sorted(torch.topk(s, 64).indices.tolist(), key=lambda i: (-float(s[i]), i))[:10]
        agree_default += fast.tolist() == order
        agree_exact += exact.tolist() == order
        gold_at_1 += order[0] == queries["targets"][q]
        results.append({"target": queries["targets"][q], "exhaustive": order, "default": fast.tolist(),
                        "exact": exact.tolist()})
    n = len(queries["targets"])
    with open(os.path.join(args.workdir, "serve_results.json"), "w") as f:
        json.dump(results, f)
    return {"store_load_seconds": round(load_seconds, 2), "default": _percentiles(default_t),
            "exact": _percentiles(exact_t), "exact_entities_fully_scored_p50": int(np.percentile(evaluated, 50)),
            "default_top10_equals_exhaustive": agree_default / n, "exact_top10_equals_exhaustive": agree_exact / n,
            "queries": n, "gold_entity_ranked_first": gold_at_1 / n, "peak_rss_mb": round(_peak_rss_mb()),
            "rss_before_load_mb": round(rss_before), "candidates": args.candidates}


def phase_authors(args):
    """The authors' path on a few queries: raw encoder outputs through the whole matcher, chunk by chunk."""
    from tests.reference import authors_style_scores
    threads()
    matcher = make_matcher()
    matcher.load_state_dict(torch.load(os.path.join(args.workdir, "matcher.pt")))
    queries = torch.load(os.path.join(args.workdir, "queries.pt"))
    picked = list(range(args.authors_queries))
    men = Features(**queries["features"])[picked]
    seconds = [0.0] * len(picked)
    scores = [[] for _ in picked]
    with torch.no_grad():
        for start in range(0, args.entities, CHUNK):
            e = raw_features(start, min(start + CHUNK, args.entities))  # generating them is not timed
            for j in range(len(picked)):
                t = time.perf_counter()
                s = authors_style_scores(matcher, (e.t_g, e.t_l, e.v_g, e.v_l),
                                         (men.t_g[j:j + 1], men.t_l[j:j + 1], men.v_g[j:j + 1], men.v_l[j:j + 1]))
                seconds[j] += time.perf_counter() - t
                scores[j].append(s[0])
    served = json.load(open(os.path.join(args.workdir, "serve_results.json")))
    agree = 0
    for j, q in enumerate(picked):
        s = torch.cat(scores[j])
        top = sorted(torch.topk(s, 64).indices.tolist(), key=lambda i: (-float(s[i]), i))[:10]
        agree += top == served[q]["exact"]
    return {"authors_path": _percentiles(seconds), "authors_queries": len(picked),
            "authors_top10_equals_exact": agree / len(picked)}


def phase_e2e(args):
    """One query end to end with a full-size CLIP ViT-B/32 (random weights): text + image encoding and
    the default search over the 110,000-entity store."""
    from mimic.kb.store import KBStore
    from mimic.linker import Linker
    threads()
    model = make_model()
    model.matcher.load_state_dict(torch.load(os.path.join(args.workdir, "matcher.pt")))
    linker = Linker(model, KBStore.load(os.path.join(args.workdir, "kb")), candidates=args.candidates, check=False)
    image = os.path.join(ROOT, "assets", "demo_kb", "mention_image", "hopper_face_crop.jpg")
    sentence = "A portrait of Hopper was unveiled at the gallery opening in Arlington."
    times = []
    for _ in range(11):
        t = time.perf_counter()
        linker.link(sentence, "Hopper", image, top_k=10)
        times.append(time.perf_counter() - t)
    return {"end_to_end": _percentiles(times[1:]), "end_to_end_runs": len(times) - 1}


PHASES = {"build": phase_build, "serve": phase_serve, "authors": phase_authors, "e2e": phase_e2e}


def table(r):
    a, b, c = r["authors_path"]["p50_ms"], r["exact"]["p50_ms"], r["default"]["p50_ms"]
    rows = [("(a) authors' exhaustive path", r["authors_path"], f"{r['authors_queries']} queries"),
            ("(b) --exact", r["exact"], f"top-10 = exhaustive on {100 * r['exact_top10_equals_exhaustive']:.1f} %"),
            ("(c) default (faiss + exact among candidates)", r["default"],
             f"top-10 = exhaustive on {100 * r['default_top10_equals_exhaustive']:.1f} %"),
            ("end to end, CLIP ViT-B/32 + (c)", r["end_to_end"], "text + image encoding included")]
    lines = [f"{r['entities']:,} entities, {r['queries']} queries, {r['threads']} threads, store precision "
             f"{r['precision']}", f"{'path':34} {'p50 ms':>10} {'p95 ms':>10}  note"]
    lines += [f"{name:34} {p['p50_ms']:>10.1f} {p['p95_ms']:>10.1f}  {note}" for name, p, note in rows]
    lines += [f"speed-up of (c) over (a): {a / c:,.0f}x; of (b) over (a): {a / b:,.0f}x",
              f"store load {r['store_load_seconds']} s; peak memory serving the store {r['peak_rss_mb']:,} MB; "
              f"(a) top-10 = (b) top-10 on {100 * r['authors_top10_equals_exact']:.0f} % of its queries"]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=110_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--authors-queries", type=int, default=3, help="queries timed on the slow authors' path")
    p.add_argument("--candidates", type=int, default=None,
                   help="faiss candidates of the default path (default: by KB size)")
    p.add_argument("--precision", choices=["compact", "mixed", "float32"], default="compact")
    p.add_argument("--workdir", default="/tmp/mimic-linking-bench")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "linking.json"))
    p.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:  # a child process: run one phase, print its JSON
        print(json.dumps(PHASES[args.phase](args)))
        return
    os.makedirs(args.workdir, exist_ok=True)
    result = {"entities": args.entities, "queries": args.queries, "threads": 2, "precision": args.precision}
    for phase in ("build", "serve", "authors", "e2e"):
        t = time.time()
        cmd = [sys.executable, __file__, "--phase", phase] + [a for a in sys.argv[1:] if not a.startswith("--phase")]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if out.returncode != 0:
            sys.exit(f"phase {phase} failed:\n{out.stderr}")
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"phase {phase}: {time.time() - t:.0f} s", file=sys.stderr)
    result["speedup_default_over_authors"] = round(result["authors_path"]["p50_ms"] / result["default"]["p50_ms"])
    result["speedup_exact_over_authors"] = round(result["authors_path"]["p50_ms"] / result["exact"]["p50_ms"])
    write_json(args.out, result)
    print(table(result))


if __name__ == "__main__":
    main()
