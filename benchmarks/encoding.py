"""Encoding benchmark: how fast `encode-kb` encodes on this machine, and what autocast does to S.

    python benchmarks/encoding.py         # ~5 min on 2 cores; writes benchmarks/results/encoding.json
    python benchmarks/encoding.py --devices 1 2   # processes side by side; writes encoding_devices.json

A full-size ViT-B/32 MIMIC with random weights (no download) encodes the demo KB's 51 entities (their
real pictures, decoded and resized as in any run) over and over, `--entities` in all, through
`encode_store` (batches of 64, the default on a CPU): entities per second, float32.

Autocast: the same entities encoded under torch.autocast bf16 (and fp16 where the CPU supports it),
then the 51 distinct ones scored by `Matcher.score` against 20 mentions encoded in float32: the
largest change of S, its typical change, and how often the top-10 stays the same. On a CPU this is the numeric
proxy of what a GPU does under autocast (same rounding of the matrix products); its speed here says
nothing about a GPU's.

`--devices 1 2`: throughput only, side by side in one run: the one-process `encode_store`, then
`encode-kb --devices N` (kb/distributed.py, Lightning; each N in a fresh process, which Lightning starts
again for its other ranks), float32 on the CPU, batches of 64, chunks of 64; on a machine with GPUs,
also every GPU with fp16 autocast and batches of 256. The rate counts the encoding, from the first chunk's
start to the last chunk's end over all ranks (the ranks' start-up, the merge and the index do not grow
with the KB's size; the whole job's wall time is reported beside), and projects it to a 6M-entity KB.
"""
import argparse
import json
import os
import subprocess
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


WIKIDATA = 6_000_000  # entities of a Wikidata-sized KB, for the projection


def phase_distributed(args):
    """One `encode_distributed` run (this process is rank 0; Lightning runs this command again for the
    others). Each rank writes when its first chunk started and its last ended to args.result.<rank>."""
    from mimic.kb import distributed
    gpu = args.accelerator == "gpu"
    real, span = distributed.ChunkEncoder.predict_step, {}

    def timed(self, chunk, batch_idx):  # the encoding alone: no start-up, merge or index
        span.setdefault("first_start", time.time())
        out = real(self, chunk, batch_idx)
        span["last_end"] = time.time()
        write_json(f"{args.result}.{self.global_rank}", span)
        return out
    distributed.ChunkEncoder.predict_step = timed
    torch.manual_seed(0)  # the same random CLIP on every rank
    model = make_model()
    entities = demo_entities(args.entities)
    t = time.perf_counter()
    done = distributed.encode_distributed(model, entities, os.path.join(DEMO, "kb_image"), args.workdir, "demo",
                              devices=args.devices[0], accelerator=args.accelerator, batch_size=args.batch_size,
                              chunk_size=args.batch_size, precision="float32", autocast="fp16" if gpu else None,
                              progress=False, restart=True)
    if done["rank"] == 0:
        write_json(args.result, {"seconds": time.perf_counter() - t, "world_size": done["world_size"]})
    return done


def devices_side_by_side(args):
    """The one-process encoder, then each --devices N (and the GPUs, when there are some), in one run."""
    threads()
    entities = demo_entities(args.entities)
    result = {"entities": args.entities, "cpus": os.cpu_count(), "projection_entities": WIKIDATA}

    def record(name, seconds, **extra):
        """seconds: encoding the entities, start-up left out (it does not grow with the KB)."""
        rate = args.entities / seconds
        result[name] = {"entities_per_s": round(rate, 1), "seconds": round(seconds, 1),
                        "projected_hours_for_6M": round(WIKIDATA / rate / 3600, 1), **extra}
        print(name, result[name], flush=True)
    with tempfile.TemporaryDirectory() as folder:
        model = make_model()
        seconds, _ = encode(model, entities, None, folder)  # records and index included: small next to encoding
        record("one_process", seconds, threads=torch.get_num_threads(), batch_size=64)
        del model
        runs = [("cpu", n, 64) for n in args.devices]
        if torch.cuda.is_available():
            runs.append(("gpu", torch.cuda.device_count(), 256))
        for accelerator, n, batch in runs:
            out = os.path.join(folder, f"kb-{accelerator}-{n}")
            timing = os.path.join(folder, f"timing-{accelerator}-{n}.json")
            command = [sys.executable, os.path.abspath(__file__), "--phase", "distributed", "--devices", str(n),
                       "--accelerator", accelerator, "--batch-size", str(batch), "--entities", str(args.entities),
                       "--workdir", out, "--result", timing]
            t = time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": ROOT})
            wall = time.perf_counter() - t
            spans = []
            for rank in range(n):
                with open(f"{timing}.{rank}", encoding="utf-8") as f:
                    spans.append(json.load(f))
            encoding = max(s["last_end"] for s in spans) - min(s["first_start"] for s in spans)
            record(f"{accelerator}_devices_{n}", encoding, batch_size=batch,
                   autocast="fp16" if accelerator == "gpu" else None, wall_seconds_whole_job=round(wall, 1))
    write_json(args.out or os.path.join(ROOT, "benchmarks", "results", "encoding_devices.json"), result)
    print(json.dumps(result, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=512)
    p.add_argument("--out", default=None, help="default: benchmarks/results/encoding.json (encoding_devices.json "
                                                "with --devices)")
    p.add_argument("--devices", type=int, nargs="+", default=None, metavar="N",
                   help="compare one process with encode-kb --devices N for each N given")
    p.add_argument("--phase", choices=["distributed"], help=argparse.SUPPRESS)
    p.add_argument("--accelerator", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase == "distributed":
        return phase_distributed(args)
    if args.devices:
        return devices_side_by_side(args)
    args.out = args.out or os.path.join(ROOT, "benchmarks", "results", "encoding.json")
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
