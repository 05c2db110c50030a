"""Faithfulness and cost of the relevance maps (mimic/explain/relevance.py).

    python benchmarks/faithfulness.py       # about 5 minutes; writes benchmarks/results/faithfulness.json

1. Cost: one explanation of a (mention, entity) pair, both with an image, with full-size CLIP
   ViT-B/32 (random weights: the same work as the real model), 2 threads: p50 and p95 of 10 runs after
   a warm-up, beside one plain encoding of the same pair as the linking path does it (sdpa attention,
   no gradients); and the largest difference between the eager pass's scores and the sdpa ones.
2. Deletion (mimic/explain/deletion.py) on the tiny random CLIP of the tests, with random and with zero-shot
   MIMIC layers, over the synthetic dataset's test mentions: blank the mention image's patches (to the
   CLIP mean colour, patch-aligned at 224 x 224) or mask the mention's words, most relevant first or in
   5 random orders, and record S. Reported: the area under S's curve by relevance and at random
   (averaged over queries; lower = S falls faster), and the share of queries where relevance wins.
3. A tiny model trained on the synthetic dataset with `pattern_region=True` (each mention image holds
   the entity's coloured shape in a random corner block of 3 x 3 patches, grey distractors elsewhere):
   its test H@1, the share of the mention image's relevance inside the block (the block is 9 of 49
   patches: 18 % by chance), how often the most relevant patch lies in it, and its deletion areas.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mimic.data.readers import Dataset, load_config  # noqa: E402
from mimic.data.synthetic import make_dataset, make_tiny_clip  # noqa: E402
from mimic.explain.deletion import PairScorer, deletion  # noqa: E402
from mimic.explain.relevance import GRID_TARGETS, explain_pair  # noqa: E402
from mimic.fileio import write_json  # noqa: E402
from mimic.model.mimic import MIMIC, MIMICConfig  # noqa: E402
from mimic.model.processing import entity_text, mention_text  # noqa: E402
from mimic.model.zeroshot import zero_shot_init  # noqa: E402

DEMO_KB = os.path.join(ROOT, "assets", "demo_kb")
MENTION_IMAGE = os.path.join(DEMO_KB, "mention_image", "hopper_face_crop.jpg")


def entity_image_of_demo_kb() -> str:
    folder = os.path.join(DEMO_KB, "kb_image")
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def cost(runs: int = 10) -> dict:
    """Seconds per explanation with full-size ViT-B/32, beside one plain encoding of the pair."""
    from mimic.train.loading import load_model
    model = load_model(None, None, "zero-shot", "cpu", pretrained=False)  # the bundled ViT-B/32 architecture
    pair = ("Hopper [SEP] A portrait of Hopper was unveiled at the gallery opening.", MENTION_IMAGE,
            "Edward Hopper [SEP] American realist painter and printmaker (1882-1967)", entity_image_of_demo_kb())
    batch = model.processor([pair[0], pair[2]], [pair[1], pair[3]])
    explain_pair(model, *pair)  # warm-up
    times, plain = [], []
    for _ in range(runs):
        t = time.perf_counter()
        out = explain_pair(model, *pair)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            features = model.encode(batch)
            m = model.matcher
            scores = m.score(m.mention_side(features[0:1]), m.entity_side(features[1:2]))
        plain.append(time.perf_counter() - t)
    gap = max(abs(out["scores"][k] - float(getattr(scores, k))) for k in GRID_TARGETS)
    times.sort()
    return {"explain_p50_s": round(statistics.median(times), 3), "explain_p95_s": round(times[int(0.95 * (runs - 1))], 3),
            "plain_encoding_of_the_pair_p50_s": round(statistics.median(plain), 3),
            "eager_vs_sdpa_max_score_difference": gap, "score_scale": abs(out["scores"]["s"])}


def queries(dataset: Dataset, count: int) -> list:
    """(mention id, mention text, its image, the gold entity's text, its image) of test mentions with images."""
    out = []
    for m in dataset.split("test"):
        entity = dataset.entities[dataset.gold(m)]
        out.append((m.id, mention_text(m.mention, m.sentence), dataset.mention_image(m), entity_text(entity.name, entity.attr),
                    dataset.entity_image(entity)))
    return out[:count]


def faithfulness(model, items: list, randoms: int = 5, regions: dict = None) -> dict:
    """Deletion areas for the mention image and the words; with `regions`, the concentration too."""
    parts = {"image": [], "words": []}
    inside = {k: [] for k in ("s", "s_v", "s_c")}
    pointing = []
    for mid, text, image, etext, eimage in items:
        out = explain_pair(model, text, image, etext, eimage)
        scorer = PairScorer(model, text, image, etext, eimage)
        grid = out["mention_relevance"]["s"]
        flat = [v for row in grid for v in row]
        parts["image"].append(deletion(lambda order: scorer.patch_curve("mention", order), flat, randoms))
        parts["words"].append(deletion(scorer.word_curve, out["token_relevance"]["s"], randoms))
        if regions:
            left, top, right, bottom = (v // 32 for v in regions[mid])
            for unit in inside:
                g = torch.tensor(out["mention_relevance"][unit])
                inside[unit].append(float(g[top:bottom, left:right].sum() / g.sum()))
            best = max(range(len(flat)), key=flat.__getitem__)
            pointing.append(top <= best // 7 < bottom and left <= best % 7 < right)
    result = {}
    for part, runs in parts.items():
        result[part] = {"auc_relevance": statistics.mean(r["auc_relevance"] for r in runs),
                        "auc_random": statistics.mean(r["auc_random"] for r in runs),
                        "relevance_wins": statistics.mean(r["auc_relevance"] < r["auc_random"] for r in runs),
                        "s_unchanged": statistics.mean(r["relevance"][0] for r in runs),
                        "s_all_removed": statistics.mean(r["relevance"][-1] for r in runs),
                        "mean_curve_relevance": [statistics.mean(c) for c in zip(*(r["relevance"] for r in runs))],
                        "mean_curve_random": [statistics.mean(c) for c in zip(*(r["random"] for r in runs))]}
    if regions:
        result["share_inside_region"] = {unit: statistics.mean(v) for unit, v in inside.items()}
        result["region_share_by_chance"] = 9 / 49
        result["most_relevant_patch_inside"] = statistics.mean(pointing)
    result["queries"] = len(items)
    return result


def train_region_model(work: str, clip: str, epochs: int):
    from mimic.train.checkpoint import load_checkpoint
    from mimic.train.trainer import train
    config_path = make_dataset(os.path.join(work, "region"), encoder=clip, pattern_region=True)
    config = load_config(config_path, [f"output_dir={os.path.join(work, 'runs')}", f"trainer.max_epochs={epochs}"])
    result = train(MIMIC.from_encoder(MIMICConfig(encoder=clip), seed=0), config, progress=False)
    regions = json.load(open(os.path.join(work, "region", "mention_regions.json")))
    return load_checkpoint(result["best_model"]).eval(), Dataset(load_config(config_path)), regions, result["test_metrics"]


def table(results: dict) -> str:
    lines = [f"{'model':<28} {'part':<6} {'AUC relevance':>14} {'AUC random':>11} {'wins':>6}"]
    for name, r in results.items():
        if "image" not in r:
            continue
        for part in ("image", "words"):
            p = r[part]
            lines.append(f"{name:<28} {part:<6} {p['auc_relevance']:14.2f} {p['auc_random']:11.2f} "
                         f"{100 * p['relevance_wins']:5.0f}%")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=24, help="test mentions per model")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the region model")
    parser.add_argument("--runs", type=int, default=10, help="timed explanations with full-size ViT-B/32")
    parser.add_argument("--only", choices=["cost", "deletion"], help="run one part (the JSON keeps the other's "
                                                                     "last figures)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    path = os.path.join(ROOT, "benchmarks", "results", "faithfulness.json")
    results = json.load(open(path)) if args.only and os.path.exists(path) else {}
    if args.only != "deletion":
        results["cost_vit_b32"] = cost(args.runs)
        print(json.dumps(results["cost_vit_b32"], indent=1), flush=True)
    if args.only != "cost":
        results.update(deletion_figures(args))
        print(table(results))
        trained = results["tiny CLIP trained, region"]
        print(f"trained tiny model (H@1 {trained['test_hits@1']:.2f}): share of the mention image's relevance "
              f"inside the pattern's block (18 % by chance): " + ", ".join(
                  f"{k.upper()} {100 * v:.0f} %" for k, v in trained["share_inside_region"].items())
              + f"; most relevant patch inside: {100 * trained['most_relevant_patch_inside']:.0f} %")
    write_json(path, results)


def deletion_figures(args) -> dict:
    work = tempfile.mkdtemp(prefix="mimic-faithfulness-")
    clip = make_tiny_clip(os.path.join(work, "tiny_clip"), seed=0)
    dataset = Dataset(load_config(make_dataset(os.path.join(work, "synth"), encoder=clip)))
    items = queries(dataset, args.queries)
    results = {}
    for init in ("random", "zero-shot"):
        model = MIMIC.from_encoder(MIMICConfig(encoder=clip), seed=1).eval()
        if init == "zero-shot":
            zero_shot_init(model)
        results[f"tiny random CLIP, {init}"] = faithfulness(model, items)
        print(table({init: results[f"tiny random CLIP, {init}"]}), flush=True)
    model, region_data, regions, metrics = train_region_model(work, clip, args.epochs)
    results["tiny CLIP trained, region"] = faithfulness(model, queries(region_data, args.queries), regions=regions)
    results["tiny CLIP trained, region"]["test_hits@1"] = metrics["hits@1"]
    return results


if __name__ == "__main__":
    main()
