"""Command line: python -m mimic <command> --help. One module per command group; each adds its parsers
and runs its commands, importing what it needs only when it runs (so `--help` is quick)."""
import argparse
import logging
import os
import sys

from ..errors import is_user_error
from . import data, encode, explain, hub, kb, link, train
from .common import Formatter, prog

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



# (name, adds its parser, runs it), in the order `--help` lists them
COMMANDS = [("train", train.add_train, train.cmd_train), ("evaluate", train.add_evaluate, train.cmd_evaluate),
            ("data", data.add_data, data.cmd_data), ("encode-kb", encode.add_encode_kb, encode.cmd_encode_kb),
            ("link", link.add_link, link.cmd_link), ("kb", kb.add_kb, kb.cmd_kb),
            ("explain", explain.add_explain, explain.cmd_explain),
            ("calibrate-nil", train.add_calibrate_nil, train.cmd_calibrate_nil),
            ("push-to-hub", hub.add_push_to_hub, hub.cmd_push_to_hub)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog(), description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=Formatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for _, add, _ in COMMANDS:
        add(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = next(run for name, _, run in COMMANDS if name == args.command)
    try:
        status = run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if is_user_error(e):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not isinstance(e, OSError) or args.verbose:
            raise
        # the system refused (permissions, a full disk, a file that went away...): one line, not a traceback
        print(f"error: {os_error_line(e)} ('{prog()} -v {args.command} ...' shows the traceback)", file=sys.stderr)
        return 1
    return status or 0


def os_error_line(e: OSError) -> str:
    """An OSError said plainly: the file and the system's reason, and what to check for a permission."""
    what = e.strerror or str(e) or type(e).__name__
    where = f"{e.filename}: " if e.filename else ""
    if e.filename2:
        where = f"{e.filename} -> {e.filename2}: "
    hint = ""
    if isinstance(e, PermissionError):
        hint = "; check that this user may read (and, to change it, write) that file and its folder"
    return f"{where}{what}{hint}"
