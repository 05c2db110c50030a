"""Command line: python -m mimic <command> --help."""
import argparse
import json
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
  python -m mimic data check --config configs/richpediamel.yaml
  python -m mimic train --config configs/wikimel.yaml
  python -m mimic evaluate --config configs/wikimel.yaml --checkpoint runs/WikiMEL/best \\
      --split test --ranks-out ranks.jsonl --metrics-out metrics.json
  python -m mimic encode-kb --config configs/wikimel.yaml --checkpoint runs/WikiMEL/best --out kb/wikimel
  python -m mimic link --kb kb/wikimel --sentence "Hopper painted Nighthawks." --mention Hopper
  python -m mimic kb add --kb kb/wikimel --entities new_entities.json
  python -m mimic explain --kb kb/wikimel --sentence "Hopper painted Nighthawks." --mention Hopper --out why/
  python -m mimic push-to-hub runs/WikiMEL/best alice/mimic-wikimel
  python -m mimic encode-kb --entities e.json --init zero-shot --encoder open_clip:ViT-B-32/laion2b_s34b_b79k --out kb/e
without a trained checkpoint, '--init zero-shot' makes every unit a CLIP similarity.
run 'python -m mimic <command> --help' for the options of a command."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; shows a default only where there is one worth saying."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _model_options(p, checkpoint_required=False):
    p.add_argument("--checkpoint", required=checkpoint_required, metavar="K",
                   help="trained weights: an authors' Lightning .ckpt file, a mimic-el checkpoint folder, or a "
                        "Hugging Face Hub repo owner/name (or file owner/name/path.ckpt)")
    p.add_argument("--encoder", metavar="E", default=None,
                   help="the CLIP backbone: a transformers hub id or local folder, or open_clip:MODEL/PRETRAINED "
                        "(e.g. open_clip:ViT-B-32/laion2b_s34b_b79k; open_clip:MODEL alone = random weights); "
                        "default: the checkpoint's own, else the config's pretrained_model, else "
                        "openai/clip-vit-base-patch32. A checkpoint refuses another backbone than its own")
    p.add_argument("--init", choices=["zero-shot", "random"], default=None,
                   help="without --checkpoint: how to initialise the MIMIC layers on the pretrained CLIP "
                        "(zero-shot: every unit reduces to a CLIP similarity; random: untrained)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
    p.add_argument("--image-mode", choices=["default", "authors"], default=None,
                   help="default: every image made upright RGB (grayscale, CMYK, 16-bit, palette, alpha "
                        "converted; EXIF orientation applied; size capped); authors: exactly the authors' "
                        "pipeline (non-RGB images become zeros, no EXIF rotation, only PIL's own size limit). "
                        "Default: the mode the checkpoint (or the store) records, else default")


def _allow_missing_images(p):
    p.add_argument("--allow-missing-images", action="store_true",
                   help="go on when more than half of a split's (or the KB's) images are missing (they "
                        "become the zero image); without it the command refuses and says where they might be")


def _prog() -> str:
    """"mimic" when run as the console command, "python -m mimic" as a module."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m mimic" if name in ("__main__.py", "-c", "") else name


def _wait_option(p):
    p.add_argument("--wait", type=float, default=600, metavar="SECONDS",
                   help="how long to wait while another command is changing the same store")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_Formatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("train", formatter_class=_Formatter, help="train MIMIC on a dataset in the authors' layout",
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
    _model_options(p)
    p.add_argument("--resume", action="store_true", help="continue the run from its checkpoints/last.ckpt")
    p.add_argument("--output-dir", default=None, help="where runs are written (config: output_dir, default runs/)")
    p.add_argument("--train-fraction", type=float, default=None, metavar="F",
                   help="train on this share of the training set (e.g. 0.1), drawn reproducibly from the seed; "
                        "NOT the authors' released low-resource subset (see below)")
    p.add_argument("--no-decay", choices=["authors", "norms"], default=None,
                   help="parameters without weight decay: authors = names containing 'bias' or "
                        "'LayerNorm.weight' (in practice biases only: no parameter has that name); norms = "
                        "biases and every LayerNorm weight (config: optim.no_decay, default authors)")
    _allow_missing_images(p)
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
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.eval_chunk_size=2000 (entities scored at once)")
    _allow_missing_images(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("data", formatter_class=_Formatter, help="check a dataset before training on it",
                       description="Check a dataset in the authors' layout.")
    data_sub = p.add_subparsers(dest="data_command", metavar="<check>", required=True)
    q = data_sub.add_parser("check", formatter_class=_Formatter, help="report what a dataset holds",
                            description="Report, per split and for the KB: mentions (entities), nil answers, "
                                        "answers not in qid2id or whose entity is not in the KB, images named, and "
                                        "of those: missing, unreadable, non-RGB, EXIF-rotated, over the default "
                                        "mode's size cap, and how many the two image modes (default, authors) "
                                        "treat differently. Images are judged from their headers; --decode "
                                        "decodes each one too (slower; catches truncated files). Says where "
                                        "missing images are when a folder beside the configured one holds them "
                                        "(the authors' RichpediaMEL archive has mention_images/ where its config "
                                        "says mention_image). Exit status 1 when train or evaluate would refuse "
                                        "the dataset.",
                            epilog="example:\n  python -m mimic data check --config configs/richpediamel.yaml")
    q.add_argument("--config", required=True, metavar="C.yaml", help="run config in the authors' YAML layout")
    q.add_argument("--split", action="append", choices=["train", "dev", "test"], default=None,
                   help="check only this split (repeatable; default: all the config names)")
    q.add_argument("--decode", action="store_true", help="decode every image (catches truncated files)")
    q.add_argument("--out", metavar="R.json", help="also write the report as JSON")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("encode-kb", formatter_class=_Formatter, help="pre-encode a KB for fast linking",
                       description="Encode every entity once and precompute every entity-side term of the three "
                                   "units, into a store folder that 'link' and the demo search in milliseconds. "
                                   "Resumable: run the same command again after an interruption and it continues "
                                   "where it stopped. Large KBs: run '--shard i/n' for i = 0..n-1 on several "
                                   "machines (each into its own folder), then '--merge' the shard folders. --out "
                                   "must be a KB store (then it is replaced, in one atomic step), an empty folder or "
                                   "a new path: any other folder is refused, never overwritten.",
                       epilog="examples:\n"
                              "  python -m mimic encode-kb --config configs/wikimel.yaml --checkpoint K --out kb/wikimel\n"
                              "  python -m mimic encode-kb --entities my_entities.json --images photos/ "
                              "--init zero-shot --out kb/mine\n"
                              "  python -m mimic encode-kb --config C.yaml --checkpoint K --shard 0/4 --out shard0\n"
                              "  python -m mimic encode-kb --config C.yaml --checkpoint K --merge shard0 shard1 shard2 "
                              "shard3 --out kb/wikimel")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="C.yaml", help="the KB of a dataset config (data.entity, data.qid2id, "
                                                         "data.kb_img_folder)")
    source.add_argument("--entities", metavar="E.json",
                        help='an entity file: the authors\' kb_entity.json, or a plain list of {"name", '
                             '"description", "image", "qid"}')
    p.add_argument("--qid2id", metavar="Q.json", help="with --entities in the authors' layout: QID -> index map")
    p.add_argument("--images", metavar="DIR", help="with --entities: the folder of the entity images")
    _model_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="the store folder to write (or the shard folder)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="entities per encoder batch (default: 64 on a CPU, 256 on a GPU)")
    p.add_argument("--autocast", choices=["auto", "none", "bf16", "fp16"], default="auto",
                   help="run the encoder in float16 or bfloat16 where PyTorch deems it safe (auto: fp16 on a GPU, "
                        "none on a CPU); the README gives their effect on S")
    p.add_argument("--chunk-size", type=int, default=1024,
                   help="entities per resumable chunk (an interruption loses at most one chunk)")
    p.add_argument("--precision", choices=["compact", "mixed", "float32"], default="compact",
                   help="compact: 5.3 kB per entity (4-bit codes of the token terms, 24-bit for the rest; see "
                        "README for the error); mixed: format 1's (float16 token terms, 11.7 kB); float32: exact (19.5 kB)")
    p.add_argument("--shard", metavar="I/N", help="encode only shard I of N (0-based) into --out")
    p.add_argument("--merge", nargs="+", metavar="SHARD_DIR", help="assemble finished shard folders into --out")
    p.add_argument("--restart", action="store_true", help="discard an unfinished encoding of --out and start over")
    _wait_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("link", formatter_class=_Formatter, help="link mentions against a pre-encoded KB",
                       description="Rank the KB's entities for a mention. Default: faiss retrieves candidates by "
                                   "a dot product of precomputed vectors (G2G and S_C exactly, mean-field proxies "
                                   "of G2L, E2M and M2E), and the full MIMIC score ranks them. --exact returns "
                                   "exactly the exhaustive top-k (proved by score bounds). "
                                   "Without --checkpoint/--init, the model recorded in the store is used.",
                       epilog="examples:\n"
                              "  python -m mimic link --kb kb/wikimel --checkpoint K --sentence \"Hopper painted "
                              "Nighthawks.\" --mention Hopper\n"
                              "  python -m mimic link --kb kb/wikimel --checkpoint K --queries q.jsonl --out o.jsonl\n"
                              'queries: one JSON object a line, {"id", "sentence", "mention", "image": path or null}'
                              " (paths relative to the queries file)\n"
                              'output: {"id", "nil", "results": [{"rank", "index", "id", "qid", "name", "score", '
                              '"s_t", "s_t_g2g", "s_t_g2l", "s_v", "s_v_e2m", "s_v_m2e", "s_c"}]}\n'
                              "a result's \"id\" is the entity's stable id, the one 'kb update' and 'kb remove' take\n"
                              "--image of a missing or unreadable file is an error; in a queries file, a line whose "
                              'image is missing is linked without it, marked "image_missing": true, and counted '
                              "in the log")
    p.add_argument("--kb", required=True, metavar="DIR", help="a store made by encode-kb")
    _model_options(p)
    p.add_argument("--sentence", help="the sentence the mention stands in")
    p.add_argument("--mention", help="the words of the sentence that name the entity")
    p.add_argument("--image", metavar="P", help="the mention's image (optional; a missing or unreadable file is an "
                                                "error)")
    p.add_argument("--queries", metavar="Q.jsonl", help="many mentions, one JSON object a line")
    p.add_argument("--out", metavar="O.jsonl", help="with --queries: where to write the results")
    p.add_argument("--top-k", type=int, default=10, help="how many entities to return")
    p.add_argument("--exact", action="store_true", help="exactly the exhaustive top-k (slower)")
    p.add_argument("--candidates", type=int, default=None,
                   help="default path: entities retrieved by faiss, among which the exact top-k is found "
                        "(default: one per thousand entities, at least 256)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (single mention)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("kb", formatter_class=_Formatter, help="add, update, remove entities of a KB store; compact it",
                       description="Edit a KB store in place without re-encoding it: only the new or changed "
                                   "entities are encoded (with the store's own model), as a new segment; removed "
                                   "ones go on a removal list. Each edit costs what it changes, is atomic (a crash "
                                   "at any moment leaves the previous version whole), bumps the store's kb_version, "
                                   "and a running demo or linker picks it up without a restart. One command edits "
                                   "a store at a time: a second one waits (--wait). 'kb compact' rewrites the store "
                                   "as one segment (after many edits); 'kb upgrade' converts a format-1 store.",
                       epilog="examples:\n"
                              "  python -m mimic kb add --kb kb/mine --entities new.json --images photos/\n"
                              "  python -m mimic kb update --kb kb/mine --entities changed.json --images photos/\n"
                              "  python -m mimic kb remove --kb kb/mine --ids Q42 Q1\n"
                              "  python -m mimic kb compact --kb kb/mine\n"
                              'add: a JSON list of {"id" (or "qid"), "name", "description", "image"}\n'
                              'update: a JSON list of {"id", and the fields to change: "name", "description", '
                              '"image" (null removes it)}\n'
                              "ids: the QID, else the index the entity had when the KB was first encoded; 'link' "
                              "shows it as \"id\"")
    kb_sub = p.add_subparsers(dest="kb_command", metavar="<add|update|remove|compact|upgrade>", required=True)
    for name, text, what in (
            ("add", "add new entities (their ids must be new)",
             'a JSON list of {"id" (or "qid"), "name", "description", "image"}'),
            ("update", "change the name, description or image of existing entities (fields not given are kept)",
             'a JSON list of {"id", and any of "name", "description", "image" (null removes the image)}')):
        q = kb_sub.add_parser(name, formatter_class=_Formatter, help=text, description=text)
        q.add_argument("--kb", required=True, metavar="DIR", help="the store to edit")
        q.add_argument("--entities", required=True, metavar="E.json", help=what)
        q.add_argument("--images", metavar="DIR",
                       help="the folder of their images; only files inside it are used (default: beside the file)")
        _model_options(q)
        _wait_option(q)
    q = kb_sub.add_parser("remove", formatter_class=_Formatter, help="remove entities by id",
                          description="Remove entities by id (as 'link' shows it: the QID, or the index the entity "
                                      "had when the KB was first encoded).")
    q.add_argument("--kb", required=True, metavar="DIR", help="the store to edit")
    q.add_argument("--ids", required=True, nargs="+", metavar="ID", help="ids of the entities to remove")
    _wait_option(q)
    for name, text in (("compact", "rewrite the store as one segment with a fresh retrieval index (after many edits; "
                                   "costs the whole KB)"),
                       ("upgrade", "convert a format-1 store (before mimic-el stored segments) to format 2, in place")):
        q = kb_sub.add_parser(name, formatter_class=_Formatter, help=text, description=text)
        q.add_argument("--kb", required=True, metavar="DIR", help="the store")
        _model_options(q)
        if name == "upgrade":
            q.add_argument("--precision", choices=["compact", "mixed", "float32"], default="compact",
                           help="how the converted store keeps its terms")
        _wait_option(q)
        q.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("explain", formatter_class=_Formatter,
                       help="relevance maps: which patches and words moved the score of a candidate",
                       description="Explain one (mention, entity) pair: relevance maps over the patches of the "
                                   "mention's and the entity's image, for S and for each unit's score (S_V, S_C; "
                                   "S_T reads no image), written as PNG overlays, and the relevance of each of the "
                                   "mention's words for S and S_T, printed. The method is Chefer et al.'s "
                                   "gradient-weighted attention relevance (ICCV 2021), with every output token "
                                   "MIMIC reads taken into account (see the README). With a trained checkpoint the "
                                   "CMFU patch attention alpha is drawn too (it is uniform under zero-shot).",
                       epilog="examples:\n"
                              "  python -m mimic explain --kb kb/demo --sentence \"A portrait of Hopper was unveiled.\" "
                              "--mention Hopper --image photo.jpg --out why/\n"
                              "  python -m mimic explain --kb kb/demo --sentence ... --mention ... --qid Q7817 --out why/\n"
                              "writes <out>/mention-s.png, mention-s_v.png, mention-s_c.png, entity-*.png (when the "
                              "side has an image) and explanation.json (every value)")
    p.add_argument("--kb", required=True, metavar="DIR", help="a store made by encode-kb")
    _model_options(p)
    p.add_argument("--sentence", required=True, help="the sentence the mention stands in")
    p.add_argument("--mention", required=True, help="the words of the sentence that name the entity")
    p.add_argument("--image", metavar="P", help="the mention's image (optional)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--entity", type=int, metavar="INDEX", help="the entity to explain, by KB index")
    which.add_argument("--qid", metavar="Q", help="the entity to explain, by QID")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write the PNG overlays and JSON into")
    p.add_argument("--overwrite", action="store_true", help="replace files of an earlier explanation in --out")
    p.add_argument("--exact", action="store_true", help="find the best-ranked entity exactly (without --entity/--qid)")

    p = sub.add_parser("calibrate-nil", formatter_class=_Formatter, help="choose the NIL threshold on a dev split",
                       description="Choose the rule that answers NIL (no matching entity in the KB): a threshold "
                                   "on the best score S, or on its margin over the runner-up. A share of the dev "
                                   "mentions have their gold entity removed from the KB (they should be NIL); the "
                                   "rule that maximises accuracy over all dev mentions is kept. It is stored with "
                                   "the checkpoint (config.json of a mimic-el folder, or <file>.nil.json beside "
                                   "a .ckpt), and link and the demo then answer \"nil\": true below it.")
    p.add_argument("--config", required=True, metavar="C.yaml", help="run config in the authors' YAML layout")
    _model_options(p)
    p.add_argument("--split", default="dev", choices=["train", "dev", "test"])
    p.add_argument("--share", type=float, default=0.5, help="share of dev mentions whose gold entity is removed")
    p.add_argument("--seed", type=int, default=43, help="chooses which mentions lose their gold entity")
    p.add_argument("--out", metavar="NIL.json", help="also write the rule and its report here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("push-to-hub", formatter_class=_Formatter, help="publish a checkpoint on the Hugging Face Hub",
                       description="Upload a checkpoint as a Hugging Face Hub model repo: the self-contained mimic-el "
                                   "folder (an authors' .ckpt is converted first) with a generated model card "
                                   "(README.md: base model, tags, the datasets, metrics and training settings of the "
                                   "run when the checkpoint sits in a training run's folder, the NIL rule, how to "
                                   "load it). The repo is created when it does not exist. Log in first "
                                   "(`hf auth login`) or set HF_TOKEN. Others then use it with --checkpoint "
                                   "owner/name, MIMIC_CHECKPOINT=owner/name or Linker.open(kb, checkpoint=...).",
                       epilog="examples:\n"
                              "  mimic push-to-hub runs/WikiMEL/best alice/mimic-wikimel\n"
                              "  mimic push-to-hub runs/WikiMEL/checkpoints/best.ckpt alice/mimic-wikimel --private\n"
                              "  mimic push-to-hub runs/WikiMEL/best alice/mimic-wikimel --stage review/  # no upload")
    p.add_argument("checkpoint", metavar="K", help="a mimic-el checkpoint folder or a Lightning .ckpt file")
    p.add_argument("repo_id", metavar="owner/name", help="the Hub model repo to create or update")
    p.add_argument("--private", action="store_true", help="create the repo private (applies when it is created)")
    p.add_argument("--encoder", metavar="E", default=None,
                   help="for a .ckpt that does not record its backbone: the CLIP it was trained on")
    p.add_argument("--stage", metavar="DIR", default=None,
                   help="write the folder that would be uploaded (with its model card) to DIR and stop, to review it")
    return parser


def load_model(args, config=None, apply_config: bool = True):
    """The model the options ask for: a checkpoint, or the pretrained CLIP with an initialisation; with a
    run `config`: sized by it, then checked against it and given its text length (apply_run_config) unless
    `apply_config` is False."""
    from .train.loading import load_model as load
    if not args.checkpoint and not args.init:
        raise SystemExit("error: give --checkpoint K, or --init zero-shot (CLIP similarities) or --init random")
    encoder = args.encoder or (config.pretrained_model if config is not None and not args.checkpoint else None)
    if config is None:
        return load(args.checkpoint, encoder, args.init, args.device, image_mode=args.image_mode)
    from .data.runconfig import apply_run_config, mimic_sizes
    model = load(args.checkpoint, encoder, args.init, args.device, seed=config.seed, sizes=mimic_sizes(config),
                 image_mode=args.image_mode)
    return apply_run_config(model, config) if apply_config else model


def cmd_train(args):
    from .data.readers import load_config
    from .train.trainer import train
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
    model = load_model(args, config, apply_config=False)  # train() applies the config
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
    from .data.check import refuse_missing_images
    from .data.readers import Dataset, load_config
    from .fileio import write_json, write_jsonl
    from .train.evaluate import evaluate
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


def cmd_data(args):
    from .data.check import check_dataset, format_report
    from .data.readers import load_config
    from .fileio import write_json
    config = load_config(args.config, args.set)
    report = check_dataset(config, tuple(args.split or ("train", "dev", "test")), decode=args.decode,
                           progress=not args.no_progress)
    print(format_report(report))
    if args.out:
        write_json(args.out, report)
    return 1 if report["refuse"] else 0


def _kb_source(args):
    """(entities, image folder, KB fingerprint, config or None) from --config or --entities."""
    from .data.readers import Dataset, load_config, read_entity_file
    from .kb.fingerprint import file_fingerprint
    if args.config:
        config = load_config(args.config)
        dataset = Dataset(config)
        return dataset.entities, dataset.kb_images, file_fingerprint(config.data.entity, config.data.qid2id), config
    entities = read_entity_file(args.entities, args.qid2id)
    folder = args.images or os.path.dirname(os.path.abspath(args.entities))
    return entities, folder, file_fingerprint(args.entities, args.qid2id), None


def _parse_shard(text):
    try:
        index, total = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"error: --shard takes I/N, e.g. 0/4, got {text!r}")
    if not 0 <= index < total:
        raise SystemExit(f"error: --shard {text}: I must be between 0 and N-1")
    return index, total


def cmd_encode_kb(args):
    from .kb.store import encode_store, merge_shards
    entities, folder, kb_fingerprint, config = _kb_source(args)
    missing = sum(1 for e in entities if e.images and not os.path.isfile(os.path.join(folder, e.images[0])))
    if missing:
        logging.getLogger("mimic").warning("%d of %d entity images are missing under %s: those entities are "
                                           "encoded with the zero image", missing, len(entities), folder)
    model = load_model(args, config)
    if args.merge:
        merge_shards(args.merge, args.out, entities, folder, kb_fingerprint, model, wait=args.wait,
                     progress=not args.no_progress)
        print(f"merged {len(args.merge)} shards into {args.out} ({len(entities)} entities)")
        return
    shard = _parse_shard(args.shard) if args.shard else None
    gpu = next(model.parameters()).device.type == "cuda"
    autocast = {"none": None, "auto": "fp16" if gpu else None}.get(args.autocast, args.autocast)
    local = args.checkpoint and os.path.exists(args.checkpoint)  # else a Hub name, kept as it is
    source = {"checkpoint": os.path.abspath(args.checkpoint) if local else args.checkpoint,
              "encoder": args.encoder or model.config.encoder, "init": args.init,
              "image_mode": model.config.image_mode}
    if args.init:  # what it takes to build the same model again
        c = model.config
        source.update(seed=c.metadata.get("seed", 0), sizes={"dv": c.dv, "tglu_dim": c.tglu_dim, "vdlu_dim": c.vdlu_dim,
                                                              "cmfu_dim": c.cmfu_dim, "text_max_length": c.text_max_length})
    encode_store(model, entities, folder, args.out, kb_fingerprint, batch_size=args.batch_size or (256 if gpu else 64),
                 chunk_size=args.chunk_size, shard=shard, precision=args.precision, restart=args.restart,
                 progress=not args.no_progress, source=source, autocast=autocast, wait=args.wait)
    if shard and shard[1] > 1:
        print(f"shard {shard[0]}/{shard[1]} encoded into {args.out}; merge all shards with --merge")
    else:
        print(f"KB store written to {args.out} ({len(entities)} entities)")


def _read_queries(path):
    """-> (queries, image_missing): a query whose image file is missing gets no image and a True flag."""
    from .data.readers import DataError
    from .linker import Query, QueryError, check_query
    base = os.path.dirname(os.path.abspath(path))
    queries, image_missing, missing, with_image = [], [], [], 0
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: queries file not found")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {number} is not valid JSON ({e.msg})")
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number} must be a JSON object")
        try:
            sentence, mention = check_query(row.get("sentence"), row.get("mention"))
        except QueryError as e:
            raise DataError(f"{path}: line {number} (id {row.get('id')!r}): {e}")
        image = row.get("image")
        if image is not None and not isinstance(image, str):
            raise DataError(f"{path}: line {number} (id {row.get('id')!r}): 'image' must be a path or null")
        image_path = os.path.join(base, image) if image else None
        if image_path and not os.path.isfile(image_path):
            missing.append(f"line {number}: {image}")
            image_path = None
        queries.append(Query(sentence, mention, image_path, row.get("id", number)))
        image_missing.append(image_path is None and bool(image))
        with_image += bool(image)
    if missing:
        logging.getLogger("mimic").warning("%d of %d query images are missing (first: %s): those mentions are linked "
                                           "without an image, and their output lines say \"image_missing\": true",
                                           len(missing), with_image, missing[0])
    return queries, image_missing


def _results_table(rows):
    head = f"{'rank':>4}  {'score':>8}  {'S_T':>8}  {'S_V':>8}  {'S_C':>8}  {'id':<10} name"
    lines = [head] + [f"{r['rank']:>4}  {r['score']:8.3f}  {r['s_t']:8.3f}  {r['s_v']:8.3f}  {r['s_c']:8.3f}  "
                      f"{str(r['id']):<10} {r['name']}" for r in rows]
    return "\n".join(lines)


def cmd_link(args):
    from tqdm.auto import tqdm

    from .fileio import write_jsonl
    from .kb.store import KBStore
    from .linker import Linker
    single = args.sentence is not None or args.mention is not None
    if single == bool(args.queries):
        raise SystemExit("error: give either --sentence and --mention, or --queries Q.jsonl --out O.jsonl")
    if args.queries and not args.out:
        raise SystemExit("error: --queries needs --out O.jsonl")
    queries, image_missing = _read_queries(args.queries) if args.queries else (None, None)
    if single:
        _checked_image(args.image)  # the model's own image pipeline (and image mode) then reads the file
    store = KBStore.load(args.kb)
    linker = Linker(_store_model(args, store), store, candidates=args.candidates)
    if single:
        result = linker.link(args.sentence, args.mention, args.image, args.top_k, args.exact)
        if args.json:
            print(json.dumps(result, ensure_ascii=False, indent=1))
        else:
            print(_results_table(result["results"]))
            if result["nil"]:
                print("NIL: no matching entity in the KB (the best score is below the calibrated threshold)")
        return
    bar = tqdm(total=len(queries), unit="query", desc="link", disable=args.no_progress)
    def results():
        for query, missing, result in zip(queries, image_missing, linker.link_many(queries, args.top_k, args.exact)):
            bar.update(1)
            yield {"id": query.id, **({"image_missing": True} if missing else {}), **result}
    write_jsonl(args.out, results())
    bar.close()
    missing = sum(image_missing)
    print(f"{len(queries)} results written to {args.out}" + (f" ({missing} with a missing image)" if missing else ""))


def _checked_image(path):
    """The image at `path` opened, or None without a path: a missing or damaged file is an error, not a
    text-only query."""
    from .data.readers import DataError
    from .model.images import open_image
    if not path:
        return None
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found")
    return open_image(path)


def _store_model(args, store):
    """The model the options ask for, else the one recorded in the store (in the store's image mode)."""
    from .train.loading import load_model as load
    source = store.manifest.get("source") or {}
    stored_mode = source.get("image_mode", "default")
    image_mode = getattr(args, "image_mode", None)
    if image_mode and image_mode != stored_mode:
        raise SystemExit(f"error: the store was encoded with --image-mode {stored_mode}, not {image_mode}: "
                         f"link with --image-mode {stored_mode}, or re-encode the KB")
    if args.checkpoint or args.init:
        return load(args.checkpoint, args.encoder, args.init, args.device, image_mode=stored_mode)
    if not source.get("checkpoint") and not source.get("init"):
        raise SystemExit("error: the store does not record its model: give --checkpoint or --init")
    return load(source.get("checkpoint"), args.encoder or source.get("encoder"), source.get("init"), args.device,
                seed=source.get("seed", 0), sizes=source.get("sizes"), image_mode=stored_mode)


def _explained_entity(args, linker, mention_terms: dict) -> int:
    """--entity, --qid, or the best-ranked entity for the mention (its encoded `mention_terms`)."""
    from .data.readers import DataError
    from .linker import check_entity_index
    if args.entity is not None:
        return check_entity_index(args.entity, len(linker.store))
    if args.qid:
        for i, meta in enumerate(linker.store.entities):
            if meta.get("qid") == args.qid or meta.get("id") == args.qid:
                return i
        raise DataError(f"{args.kb}: no entity with QID {args.qid!r}")
    return linker.link_terms(mention_terms, 1, args.exact)["results"][0]["index"]


def _word_table(relevance: dict) -> str:
    top = max(max(relevance["s"], default=0), 1e-30)
    lines = [f"{'word':<16} {'S':>8} {'S_T':>8}"]
    for token, s, s_t in zip(relevance["tokens"], relevance["s"], relevance["s_t"]):
        lines.append(f"{token[:16]:<16} {s:8.3f} {s_t:8.3f}  {'█' * round(12 * s / top)}")
    return "\n".join(lines)


def cmd_explain(args):
    from .explain.heatmap import overlay, overlay_grid
    from .explain.relevance import UnsupportedBackbone
    from .fileio import atomic_file, make_dirs, write_json
    from .kb.store import KBStore
    from .linker import Linker, Query, check_query
    from .model.images import ImageError, open_image
    image = _checked_image(args.image)  # a bad image is an error here, not zeros
    store = KBStore.load(args.kb)
    linker = Linker(_store_model(args, store), store)
    sentence, mention = check_query(args.sentence, args.mention)
    # the model's own image pipeline (and image mode) reads the file, as `link` does; encoded once, for
    # choosing the entity and for explaining it
    terms = linker.mention_terms([Query(sentence, mention, args.image)])
    index = _explained_entity(args, linker, terms)
    try:
        out = linker.explain(sentence, mention, args.image, index, mention_terms=terms)
    except UnsupportedBackbone as e:
        raise SystemExit(f"error: {e}")
    meta = linker.store.entities[index]
    try:
        entity_image = open_image(meta["image"]) if meta.get("image") else None
    except ImageError:
        entity_image = None  # then its relevance grid is null too
    pictures = {}
    for side, picture in (("mention", image), ("entity", entity_image)):
        grids = out[f"{side}_relevance"]
        if picture is None or grids is None:
            continue
        for unit in ("s", "s_v", "s_c"):  # S_T reads no image: its maps are zero
            pictures[f"{side}-{unit}.png"] = overlay_grid(picture, grids[unit])
        if linker.model.config.metadata.get("init") != "zero-shot":
            pictures[f"{side}-alpha.png"] = overlay(picture, out[f"{side}_alpha"].tolist())
    files = [*pictures, "explanation.json"]
    taken = [f for f in files if os.path.exists(os.path.join(args.out, f))]
    if taken and not args.overwrite:
        raise SystemExit(f"error: {args.out} already holds {', '.join(taken)}; choose another --out or pass --overwrite")
    make_dirs(args.out)
    for name, picture in pictures.items():
        with atomic_file(os.path.join(args.out, name), "wb") as f:
            picture.save(f, "PNG")
    record = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in out.items()}
    write_json(os.path.join(args.out, "explanation.json"),
               {"sentence": args.sentence, "mention": args.mention, "entity": {"index": index, **meta}, **record})
    scores = out["scores"]
    print(f"{meta.get('name')} ({meta.get('qid') or index}): S {scores['s']:.3f}  S_T {scores['s_t']:.3f}  "
          f"S_V {scores['s_v']:.3f}  S_C {scores['s_c']:.3f}")
    print(_word_table(out["token_relevance"]))
    for side in ("mention", "entity"):
        if out[f"{side}_relevance"] is None:
            print(f"the {side} has no image: no patch relevance")
    print(f"written to {args.out}: {', '.join(files)}")


def cmd_kb(args):
    from .data.readers import read_entity_file
    from .kb.edit import compact_store, edit_store, read_changes, upgrade_store
    from .kb.store import KBStore
    command = args.kb_command
    if command == "remove":
        manifest = edit_store(args.kb, remove=args.ids, wait=args.wait)
    elif command in ("compact", "upgrade"):
        model = _store_model(args, KBStore.load(args.kb))
        if command == "compact":
            manifest = compact_store(args.kb, model, wait=args.wait, progress=not args.no_progress)
        else:
            manifest = upgrade_store(args.kb, model, args.precision, wait=args.wait, progress=not args.no_progress)
    else:
        changes = read_entity_file(args.entities) if command == "add" else read_changes(args.entities)
        folder = args.images or os.path.dirname(os.path.abspath(args.entities))
        model = _store_model(args, KBStore.load(args.kb))
        manifest = edit_store(args.kb, model, image_folder=folder, wait=args.wait,
                              **{"add" if command == "add" else "update": changes})
    print(f"{args.kb}: version {manifest['kb_version']}, {manifest['count']} entities")
    segments, removed = len(manifest["segments"]), (manifest.get("removed") or {}).get("count", 0)
    if segments > 8 or removed > manifest["count"] // 10:
        print(f"{segments} segments and {removed} removed rows: 'python -m mimic kb compact --kb {args.kb}' makes "
              f"searches faster again")


def cmd_calibrate_nil(args):
    from .data.readers import Dataset, load_config
    from .fileio import write_json
    from .kb.search import Searcher
    from .model.encoding import encode_all
    from .model.matcher import select
    from .model.processing import mention_text
    from .nil import calibrate
    from .train.checkpoint import save_nil_rule
    from .train.evaluate import encode_kb
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


def cmd_push_to_hub(args):
    from .train.hub import push_to_hub, stage
    if args.stage:
        stage(args.checkpoint, args.stage, args.repo_id, args.encoder)
        print(f"staged in {args.stage} (README.md is the model card); nothing was uploaded")
        return
    url = push_to_hub(args.checkpoint, args.repo_id, private=args.private, encoder=args.encoder)
    print(f"published: {url}")


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "data": cmd_data, "encode-kb": cmd_encode_kb,
            "link": cmd_link, "kb": cmd_kb, "calibrate-nil": cmd_calibrate_nil, "push-to-hub": cmd_push_to_hub,
            "explain": cmd_explain}


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
        status = COMMANDS[args.command](args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status or 0
