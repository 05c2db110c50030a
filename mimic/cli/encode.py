"""`encode-kb`: encode a KB into a store (resumable, sharded, merged)."""
import logging
import os

from .common import Formatter, load_model, model_options, wait_option


def add_encode_kb(sub):
    """`encode-kb`."""
    p = sub.add_parser("encode-kb", formatter_class=Formatter, help="pre-encode a KB for fast linking",
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
                              "  python -m mimic encode-kb --config C.yaml --checkpoint K --devices 4 --out kb/wikimel\n"
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
    model_options(p)
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
                        "docs/store.md for the error); mixed: format 1's (float16 token terms, 11.7 kB); float32: exact (19.5 kB)")
    p.add_argument("--shard", metavar="I/N", help="encode only shard I of N (0-based) into --out")
    p.add_argument("--merge", nargs="+", metavar="SHARD_DIR", help="assemble finished shard folders into --out")
    p.add_argument("--devices", type=int, default=None, metavar="N",
                   help="encode on N processes (CPU) or GPUs of this machine through PyTorch Lightning, then merge "
                        "into --out (resumable, with any N); under torchrun or SLURM: the processes per machine "
                        "(docs/throughput.md). Needs Lightning (requirements-dev.txt)")
    p.add_argument("--num-nodes", type=int, default=1, metavar="M",
                   help="with --devices: the number of machines (torchrun or SLURM starts the processes; --out must "
                        "be on a filesystem they share)")
    p.add_argument("--accelerator", choices=["auto", "cpu", "gpu"], default="auto",
                   help="with --devices: what each process runs on (auto: gpu when there is one)")
    p.add_argument("--restart", action="store_true", help="discard an unfinished encoding of --out and start over")
    wait_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _kb_source(args):
    """(entities, image folder, KB fingerprint, config or None) from --config or --entities."""
    from ..data.readers import Dataset, load_config, read_entity_file
    from ..kb.fingerprint import file_fingerprint
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


def _check_distributed(args):
    """--devices/--num-nodes: refused with --shard or --merge, and without Lightning (before the model loads)."""
    if args.devices is None and args.num_nodes == 1:
        return False
    if args.shard or args.merge:
        raise SystemExit("error: --devices runs the shards itself; give it without --shard or --merge")
    if (args.devices or 1) < 1 or args.num_nodes < 1:
        raise SystemExit("error: --devices and --num-nodes take a number of at least 1")
    try:
        import lightning  # noqa: F401
    except ImportError:
        raise SystemExit("error: encode-kb --devices runs on PyTorch Lightning, which serving does not need: pip "
                         "install -r requirements-dev.txt (from the repository), or pip install 'mimic-el[train]'; "
                         "without it, encode with --shard i/n and --merge") from None
    return True


def cmd_encode_kb(args):
    from ..kb import versions
    # what can be refused at once, before the model (and PyTorch) loads: --out, --shard, the entity file
    distributed = _check_distributed(args)
    shard = _parse_shard(args.shard) if args.shard else None
    if shard and shard[1] > 1:
        versions.check_work_target(args.out)
    else:
        versions.check_target(args.out)
    entities, folder, kb_fingerprint, config = _kb_source(args)
    from ..kb.encode import encode_store, merge_shards
    missing = sum(1 for e in entities if e.images and not os.path.isfile(os.path.join(folder, e.images[0])))
    if missing:
        logging.getLogger("mimic").warning("%d of %d entity images are missing under %s: those entities are "
                                           "encoded with the zero image", missing, len(entities), folder)
    if distributed:
        import torch
        if args.accelerator == "gpu" and not torch.cuda.is_available():
            raise SystemExit("error: --accelerator gpu, but PyTorch sees no GPU here (--accelerator cpu runs on "
                             "CPU processes)")
        gpu = args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available())
        args.device = "cpu"  # Lightning puts each rank's copy on its own device
    model = load_model(args, config)
    if args.merge:
        merge_shards(args.merge, args.out, entities, folder, kb_fingerprint, model, wait=args.wait,
                     progress=not args.no_progress)
        print(f"merged {len(args.merge)} shards into {args.out} ({len(entities)} entities)")
        return
    if not distributed:
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
    if distributed:
        _encode_distributed(args, model, entities, folder, kb_fingerprint, source, autocast, gpu)
        return
    encode_store(model, entities, folder, args.out, kb_fingerprint, batch_size=args.batch_size or (256 if gpu else 64),
                 chunk_size=args.chunk_size, shard=shard, precision=args.precision, restart=args.restart,
                 progress=not args.no_progress, source=source, autocast=autocast, wait=args.wait)
    if shard and shard[1] > 1:
        print(f"shard {shard[0]}/{shard[1]} encoded into {args.out}; merge all shards with --merge")
    else:
        print(f"KB store written to {args.out} ({len(entities)} entities)")


def _encode_distributed(args, model, entities, folder, kb_fingerprint, source, autocast, gpu):
    """--devices: the encoding through Lightning; rank 0 says what was done."""
    from ..kb.distributed import encode_distributed
    done = encode_distributed(model, entities, folder, args.out, kb_fingerprint, devices=args.devices or 1,
                              num_nodes=args.num_nodes, accelerator="gpu" if gpu else "cpu",
                              batch_size=args.batch_size or (256 if gpu else 64), chunk_size=args.chunk_size,
                              precision=args.precision, restart=args.restart, progress=not args.no_progress,
                              source=source, autocast=autocast, wait=args.wait)
    if done.get("rank") != 0:
        return
    if done["up_to_date"]:
        print(f"{args.out} is up to date (same model, KB and precision): nothing to encode")
        return
    resumed = f"; {done['done_before']} were done before" if done["done_before"] else ""
    print(f"encoded {len(done['todo'])} of {done['chunks']} chunks on {done['world_size']} processes{resumed}")
    print(f"KB store written to {args.out} ({len(entities)} entities)")
