"""Command line: python -m mimic <command> --help."""
import argparse
import logging
import os
import sys

DESCRIPTION = """\
MIMIC multimodal entity linking (Luo et al., KDD 2023): train, evaluate, pre-encode a KB, link.

A mention (words + the sentence they stand in + an optional image) is scored against every entity of
a knowledge base (name + description + image) by three interaction units: text (S_T), vision (S_V)
and cross-modal (S_C); S = (S_T + S_V + S_C) / 3.

Datasets and configs use the authors' layout (configs/ has one per dataset). Checkpoints are the
authors' Lightning .ckpt files or mimic-el folders (model.safetensors + config.json)."""

EPILOG = """\
examples:
  python -m mimic train --config configs/wikimel.yaml
  python -m mimic evaluate --config configs/wikimel.yaml --checkpoint runs/WikiMEL/best \\
      --split test --ranks-out ranks.jsonl --metrics-out metrics.json
run 'python -m mimic <command> --help' for the options of a command."""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _model_options(p, checkpoint_required=False):
    p.add_argument("--checkpoint", required=checkpoint_required, metavar="K",
                   help="trained weights: an authors' Lightning .ckpt file or a mimic-el checkpoint folder")
    p.add_argument("--encoder", metavar="E", default=None,
                   help="CLIP hub id or local folder (architecture, tokenizer, image processor); default: the "
                        "checkpoint's own, else the config's pretrained_model, else openai/clip-vit-base-patch32")
    p.add_argument("--init", choices=["zero-shot", "random"], default=None,
                   help="without --checkpoint: how to initialise the MIMIC layers on the pretrained CLIP "
                        "(zero-shot: every unit reduces to a CLIP similarity; random: untrained)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mimic", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_Formatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("train", formatter_class=_Formatter, help="train MIMIC on a dataset in the authors' layout",
                       description="Train MIMIC with the paper's settings (from the YAML config): AdamW lr 1e-5, "
                                   "batch 128, <= 20 epochs, validation every 2 epochs, early stopping on dev MRR "
                                   "(patience 3), best checkpoint by dev MRR, seed 43. Writes <output-dir>/<run_name>/: "
                                   "checkpoints/{best,last}.ckpt (authors' format), best/ (mimic-el format), "
                                   "result.json (test metrics of the best checkpoint), CSV logs.")
    p.add_argument("--config", required=True, metavar="C.yaml", help="run config in the authors' YAML layout")
    _model_options(p)
    p.add_argument("--resume", action="store_true", help="continue the run from its checkpoints/last.ckpt")
    p.add_argument("--output-dir", default=None, help="where runs are written (config: output_dir, default runs/)")
    p.add_argument("--train-fraction", type=float, default=None, metavar="F",
                   help="low-resource setting: train on this share of the training set (e.g. 0.1), chosen "
                        "reproducibly from the seed")
    p.add_argument("--drop-unit", action="append", default=[], choices=["tglu", "vdlu", "cmfu"],
                   help="ablation: remove a unit from S together with its unit-consistent loss (repeatable)")
    p.add_argument("--drop-loss", action="append", default=[], choices=["tglu", "vdlu", "cmfu"],
                   help="ablation: drop a unit-consistent loss but keep the unit in S (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.max_epochs=4 --set data.batch_size=64")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("evaluate", formatter_class=_Formatter, help="rank every KB entity for each mention of a split",
                       description="Score every mention of a split against every KB entity and report the rank "
                                   "of the gold entity: rank = 1 + #entities scoring higher + #equal-scoring "
                                   "entities with a lower index. Mentions whose answer is nil are skipped.")
    p.add_argument("--config", required=True, metavar="C.yaml", help="run config in the authors' YAML layout")
    _model_options(p)
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--ranks-out", metavar="R.jsonl", help='one line per mention: {"id", "answer", "gold", "rank"}')
    p.add_argument("--metrics-out", metavar="M.json", help="hits@1/3/5/10/20, mrr, mr, count")
    p.add_argument("--batch-size", type=int, default=None, help="mentions per batch (config: data.eval_batch_size)")
    p.add_argument("--entity-batch-size", type=int, default=None,
                   help="entities per encoder batch (config: data.embed_update_batch_size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def load_model(args, config=None):
    """The model the options ask for: a checkpoint, or the pretrained CLIP with an initialisation."""
    import torch
    from .checkpoint import load_checkpoint
    from .encoding import default_device
    from .model import MIMIC, MIMICConfig
    if args.checkpoint:
        if args.init:
            raise SystemExit("error: --init applies only without --checkpoint")
        model = load_checkpoint(args.checkpoint, encoder=args.encoder)
    else:
        if not args.init:
            raise SystemExit("error: give --checkpoint, or --init zero-shot (CLIP similarities) or --init random")
        encoder = args.encoder or (config.pretrained_model if config is not None else None)
        model = MIMIC.from_encoder(MIMICConfig(encoder=encoder) if encoder else MIMICConfig())
        if args.init == "zero-shot":
            from .zeroshot import zero_shot_init
            zero_shot_init(model)
    device = torch.device(args.device) if args.device else default_device()
    return model.to(device)


def cmd_train(args):
    from .data import load_config
    from .train import train
    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.train_fraction is not None:
        overrides.append(f"train_fraction={args.train_fraction}")
    config = load_config(args.config, overrides)
    units = [u for u in config.ablation.units if u not in args.drop_unit]
    config.ablation.units = units
    config.ablation.unit_losses = [u for u in config.ablation.unit_losses if u not in args.drop_loss and u in units]
    if not args.checkpoint and not args.init:
        args.init = "random"  # the paper: MIMIC layers start at random on the pretrained CLIP
    model = load_model(args, config)
    model.config.units = tuple(units)
    model.matcher.units = tuple(units)
    result = train(model, config, resume=args.resume, progress=not args.no_progress)
    print(f"best checkpoint: {result.get('best_model') or result['best_checkpoint']}")
    if "test_metrics" in result:
        print(_metrics_table(result["test_metrics"]))


def _metrics_table(m: dict) -> str:
    keys = ["hits@1", "hits@3", "hits@5", "hits@10", "hits@20", "mrr"]
    head = " ".join(f"{k:>8}" for k in keys) + f" {'mr':>8} {'count':>7}"
    row = " ".join(f"{100 * m[k]:8.2f}" for k in keys) + f" {m['mr']:8.2f} {m['count']:7d}"
    return head + "\n" + row


def cmd_evaluate(args):
    from .data import Dataset, load_config
    from .evaluate import evaluate
    from .fileio import write_json, write_jsonl
    config = load_config(args.config, args.set)
    dataset = Dataset(config)
    dataset.split(args.split)  # fail on a bad split file before the model is loaded
    model = load_model(args, config)
    rows, metrics = evaluate(model, dataset, args.split, args.batch_size or config.data.eval_batch_size,
                             progress=not args.no_progress,
                             entity_batch_size=args.entity_batch_size or config.data.embed_update_batch_size)
    if args.ranks_out:
        write_jsonl(args.ranks_out, rows)
    if args.metrics_out:
        write_json(args.metrics_out, metrics)
    print(_metrics_table(metrics))


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .errors import USER_ERRORS
    try:
        COMMANDS[args.command](args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
