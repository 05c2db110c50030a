"""`train`, `evaluate` and `calibrate-nil`: the commands that run a model over a dataset."""
import os

from .common import Formatter, allow_missing_images, load_model, model_options


def add_train(sub):
    """`train`: the paper's training on a dataset in the authors' layout."""
    p = sub.add_parser("train", formatter_class=Formatter, help="train MIMIC on a dataset in the authors' layout",
                       description="Train MIMIC with the paper's settings (from the YAML config): AdamW lr 1e-5, "
                                   "weight decay 1e-4 except biases (the authors' filter), batch 128, <= 20 epochs, "
                                   "validation every 2 epochs, early stopping on dev MRR (patience 3), best "
                                   "checkpoint by dev MRR, seed 43 (it also draws the MIMIC layers), Lightning "
                                   "deterministic=True. Writes <output-dir>/<run_name>/: "
                                   "checkpoints/{best,last}.ckpt (authors' format), best/ (mimic-el format), "
                                   "result.json (test metrics of the best checkpoint), CSV logs.",
                       epilog="the paper's low-resource tables (10 %/20 % of RichpediaMEL and WikiDiverse) use "
                              "subset files the authors released: put such a file in data.train_file, e.g.\n"
                              "  python -m mimic train --config configs/richpediamel.yaml "
                              "--set data.train_file=data/RichpediaMEL/<their 10 % subset>.json\n"
                              "--train-fraction draws a subset of its own, which is not theirs.")
    p.add_argument("--config", required=True, metavar="C.yaml", help="run config in the authors' YAML layout")
    model_options(p)
    p.add_argument("--resume", action="store_true", help="continue the run from its checkpoints/last.ckpt")
    p.add_argument("--output-dir", default=None, help="where runs are written (config: output_dir, default runs/)")
    p.add_argument("--train-fraction", type=float, default=None, metavar="F",
                   help="train on this share of the training set (e.g. 0.1), drawn reproducibly from the seed; "
                        "NOT the authors' released low-resource subset (see below)")
    p.add_argument("--no-decay", choices=["authors", "norms"], default=None,
                   help="parameters without weight decay: authors = names containing 'bias' or "
                        "'LayerNorm.weight' (in practice biases only: no parameter has that name); norms = "
                        "biases and every LayerNorm weight (config: optim.no_decay, default authors)")
    allow_missing_images(p)
    p.add_argument("--drop-unit", action="append", default=[], choices=["tglu", "vdlu", "cmfu"],
                   help="ablation: remove a unit from S together with its unit-consistent loss (repeatable)")
    p.add_argument("--drop-loss", action="append", default=[], choices=["tglu", "vdlu", "cmfu"],
                   help="ablation: drop a unit-consistent loss but keep the unit in S (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.max_epochs=4 --set data.batch_size=64")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_evaluate(sub):
    """`evaluate`: the rank of each mention's gold entity among all."""
    p = sub.add_parser("evaluate", formatter_class=Formatter, help="rank every KB entity for each mention of a split",
                       description="Score every mention of a split against every KB entity and report the rank "
                                   "of the gold entity: rank = 1 + #entities scoring higher + #equal-scoring "
                                   "entities with a lower index. Mentions whose answer is nil are skipped.")
    p.add_argument("--config", required=True, metavar="C.yaml", help="run config in the authors' YAML layout")
    model_options(p)
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--ranks-out", metavar="R.jsonl", help='one line per mention: {"id", "answer", "gold", "rank"}')
    p.add_argument("--metrics-out", metavar="M.json", help="hits@1/3/5/10/20, mrr, mr, count")
    p.add_argument("--batch-size", type=int, default=None, help="mentions per batch (config: data.eval_batch_size)")
    p.add_argument("--entity-batch-size", type=int, default=None,
                   help="entities per encoder batch (config: data.embed_update_batch_size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.eval_chunk_size=2000 (entities scored at once)")
    allow_missing_images(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_calibrate_nil(sub):
    """`calibrate-nil`: the NIL rule, chosen on a dev split."""
    p = sub.add_parser("calibrate-nil", formatter_class=Formatter, help="choose the NIL threshold on a dev split",
                       description="Choose the rule that answers NIL (no matching entity in the KB): a threshold "
                                   "on the best score S, or on its margin over the runner-up. A share of the dev "
                                   "mentions have their gold entity removed from the KB (they should be NIL); the "
                                   "rule that maximises accuracy over all dev mentions is kept. It is stored with "
                                   "the checkpoint (config.json of a mimic-el folder, or <file>.nil.json beside "
                                   "a .ckpt), and link and the demo then answer \"nil\": true below it.")
    p.add_argument("--config", required=True, metavar="C.yaml", help="run config in the authors' YAML layout")
    model_options(p)
    p.add_argument("--split", default="dev", choices=["train", "dev", "test"])
    p.add_argument("--share", type=float, default=0.5, help="share of dev mentions whose gold entity is removed")
    p.add_argument("--seed", type=int, default=43, help="chooses which mentions lose their gold entity")
    p.add_argument("--out", metavar="NIL.json", help="also write the rule and its report here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_train(args):
    try:
        import lightning  # noqa: F401
    except ImportError:
        raise SystemExit("error: training needs PyTorch Lightning, which serving does not: pip install -r "
                         "requirements-dev.txt (from the repository), or pip install 'mimic-el[train]'") from None
    from ..data.readers import load_config
    from ..train.trainer import train
    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.train_fraction is not None:
        overrides.append(f"train_fraction={args.train_fraction}")
    if args.no_decay:
        overrides.append(f"optim.no_decay={args.no_decay}")
    config = load_config(args.config, overrides)
    units = [u for u in config.ablation.units if u not in args.drop_unit]
    config.ablation.units = units
    config.ablation.unit_losses = [u for u in config.ablation.unit_losses if u not in args.drop_loss and u in units]
    if not args.checkpoint and not args.init:
        args.init = "random"  # the paper: MIMIC layers start at random on the pretrained CLIP
    model = load_model(args, config, apply_config=False, warn=False)  # train() applies the config
    model.config.units = tuple(units)
    model.matcher.units = tuple(units)
    config.pretrained_model = model.config.encoder  # the run's checkpoints record their backbone
    result = train(model, config, resume=args.resume, progress=not args.no_progress,
                   allow_missing_images=args.allow_missing_images)
    print(f"best checkpoint: {result.get('best_model') or result['best_checkpoint']}")
    if "test_metrics" in result:
        print(_metrics_table(result["test_metrics"]))


def _metrics_table(m: dict) -> str:
    keys = ["hits@1", "hits@3", "hits@5", "hits@10", "hits@20", "mrr"]
    head = " ".join(f"{k:>8}" for k in keys) + f" {'mr':>8} {'count':>7}"
    row = " ".join(f"{100 * m[k]:8.2f}" for k in keys) + f" {m['mr']:8.2f} {m['count']:7d}"
    return head + "\n" + row


def cmd_evaluate(args):
    from ..data.check import refuse_missing_images
    from ..data.readers import Dataset, load_config
    from ..fileio import write_json, write_jsonl
    from ..train.evaluate import evaluate
    config = load_config(args.config, args.set)
    dataset = Dataset(config)
    dataset.split(args.split)  # fail on a bad split file before the model is loaded
    refuse_missing_images(dataset, [args.split], allow=args.allow_missing_images)
    model = load_model(args, config)
    rows, metrics = evaluate(model, dataset, args.split, args.batch_size or config.data.eval_batch_size,
                             progress=not args.no_progress,
                             entity_batch_size=args.entity_batch_size or config.data.embed_update_batch_size,
                             chunk_size=config.data.eval_chunk_size)
    if args.ranks_out:
        write_jsonl(args.ranks_out, rows)
    if args.metrics_out:
        write_json(args.metrics_out, metrics)
    print(_metrics_table(metrics))


def cmd_calibrate_nil(args):
    from ..data.readers import Dataset, load_config
    from ..fileio import write_json
    from ..kb.search import Searcher
    from ..model.encoding import encode_all
    from ..model.matcher import select
    from ..model.processing import mention_text
    from ..nil import calibrate
    from ..train.checkpoint import save_nil_rule
    from ..train.evaluate import encode_kb
    config = load_config(args.config)
    dataset = Dataset(config)
    mentions = dataset.split(args.split)
    model = load_model(args, config)
    terms = encode_kb(model, dataset, config.data.embed_update_batch_size, progress=not args.no_progress)
    searcher = Searcher(model.matcher, terms)
    mention_terms = encode_all(model, [mention_text(m.mention, m.sentence) for m in mentions],
                               [dataset.mention_image(m) for m in mentions], "mention", config.data.eval_batch_size,
                               desc=f"encode {args.split}", progress=not args.no_progress)
    tops = []
    for i in range(len(mentions)):
        index, scores = searcher.search(select(mention_terms, slice(i, i + 1)), 3, exact=True)
        tops.append(list(zip(index.tolist(), scores.s[0].tolist())))
    report = calibrate(tops, [dataset.gold(m) for m in mentions], args.share, args.seed)
    report.update(split=args.split, config=os.path.abspath(args.config))
    if args.checkpoint:
        where = save_nil_rule(args.checkpoint, report)
        print(f"NIL rule stored in {where}")
    if args.out:
        write_json(args.out, report)
    print(f"NIL rule: {report['feature']} < {report['threshold']:.4f} -> nil; accuracy on {report['count']} "
          f"{args.split} mentions ({report['removed']} with their gold entity removed): {100 * report['accuracy']:.2f} % "
          f"(without NIL: {100 * report['accuracy_without_nil']:.2f} %)")
