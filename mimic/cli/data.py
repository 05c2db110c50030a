"""`data check`: what a dataset holds before anyone trains on it."""
from .common import Formatter


def add_data(sub):
    """`data check`."""
    p = sub.add_parser("data", formatter_class=Formatter, help="check a dataset before training on it",
                       description="Check a dataset in the authors' layout.")
    data_sub = p.add_subparsers(dest="data_command", metavar="<check>", required=True)
    q = data_sub.add_parser("check", formatter_class=Formatter, help="report what a dataset holds",
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


def cmd_data(args):
    from ..data.check import check_dataset, format_report
    from ..data.readers import load_config
    from ..fileio import write_json
    config = load_config(args.config, args.set)
    report = check_dataset(config, tuple(args.split or ("train", "dev", "test")), decode=args.decode,
                           progress=not args.no_progress)
    print(format_report(report))
    if args.out:
        write_json(args.out, report)
    return 1 if report["refuse"] else 0
