"""Encoding benchmark: how fast `encode-kb` encodes on this machine, and what autocast does to S.

    python benchmarks/encoding.py         # ~5 min on 2 cores; writes benchmarks/results/encoding.json

A full-size ViT-B/32 MIMIC with random weights (no download) encodes the demo KB's 51 entities (their
real pictures, decoded and resized as in any run) over and over, `--entities` in all, through
`encode_store` (batches of 64, the default on a CPU): entities per second, float32.

Autocast: the same entities encoded under torch.autocast bf16 (and fp16 where the CPU supports it),
then the 51 distinct ones scored by `Matcher.score` against 20 mentions encoded in float32: the
largest change of S, its typical change, and how often the top-10 stays the same. On a CPU this is the numeric
proxy of what a GPU does under autocast (same rounding of the matrix products); its speed here says
nothing about a GPU's.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.linking import make_model, threads  # noqa: E402
from mimic.data.readers import entity_image_path, read_kb, read_qid2id  # noqa: E402
from mimic.fileio import write_json  # noqa: E402
from mimic.linker import Query  # noqa: E402

DEMO = os.path.join(ROOT, "assets", "demo_kb")


def demo_entities(count: int) -> list:
    entities = read_kb(os.path.join(DEMO, "kb_entity.json"), read_qid2id(os.path.join(DEMO, "qid2id.json")))
    out = []
    for i in range(count):
        e = entities[i % len(entities)]
        out.append(type(e)(index=i, name=e.name, attr=e.attr, images=list(e.images), qid=f"E{i}"))
    return out


def encode(model, entities, autocast, folder):
    from mimic.kb.encode import encode_store
    from mimic.kb.store import KBStore
    out = os.path.join(folder, f"kb-{autocast or 'float32'}")
    t = time.perf_counter()
    encode_store(model, entities, os.path.join(DEMO, "kb_image"), out, "demo", batch_size=64, precision="float32",
                 autocast=autocast, progress=False)
    seconds = time.perf_counter() - t
    store = KBStore.load(out)
    return seconds, store.read_terms(np.arange(len(store)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=512)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "encoding.json"))
    args = p.parse_args()
    threads()
    model = make_model()
    entities = demo_entities(args.entities)
    from mimic.model.encoding import encode_batch
    from mimic.model.matcher import unflatten_terms
    from mimic.model.processing import mention_text
    mentions = [Query(f"A photo of {e.name} from the archive.", e.name,
                      entity_image_path(e, os.path.join(DEMO, "kb_image"))) for e in entities[:20]]
    mention_terms = encode_batch(model, [mention_text(q.mention, q.sentence) for q in mentions],
                                 [q.image for q in mentions], "mention")
    result = {"entities": args.entities, "threads": torch.get_num_threads(), "batch_size": 64}
    with tempfile.TemporaryDirectory() as folder:
        seconds, reference = encode(model, entities, None, folder)
        result["float32_entities_per_s"] = round(args.entities / seconds, 1)

        unique = min(51, args.entities)  # the demo KB's entities, each once (the rest repeat them)

        def scores(flat):
            flat = {k: v[:unique] for k, v in flat.items()}
            with torch.no_grad():
                flat = {k: torch.from_numpy(v) for k, v in flat.items()}
                flat["vdlu.e2m.q_norm"] = model.matcher.vdlu.dual_ent2men.layer_norm(flat["vdlu.e2m.q"])
                return model.matcher.score(mention_terms, unflatten_terms(flat)).s
        s32 = scores(reference)
        result["s_std"] = round(float(s32.std()), 3)
        for autocast in ("bf16", "fp16"):
            try:
                seconds, terms = encode(model, entities, autocast, folder)
            except (RuntimeError, TypeError) as e:
                result[autocast] = {"error": str(e).splitlines()[0]}
                continue
            s = scores(terms)
            top = lambda m: torch.topk(m, 10, dim=1).indices.tolist()  # noqa: E731
            result[autocast] = {"entities_per_s": round(args.entities / seconds, 1),
                                "max_abs_change_of_s": round(float((s - s32).abs().max()), 4),
                                "std_change_of_s": round(float((s - s32).std()), 4),
                                "top10_unchanged": sum(a == b for a, b in zip(top(s), top(s32))) / len(mentions)}
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
