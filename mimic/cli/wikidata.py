"""`kb from-wikidata | fetch-images | push-to-hub`: build a KB from Wikidata and Commons, publish a store."""
import os

from .common import Formatter

COMMANDS = ("from-wikidata", "fetch-images", "push-to-hub")


def _polite(q):
    q.add_argument("--contact", metavar="EMAIL_OR_URL", default=os.environ.get("MIMIC_CONTACT"),
                   help="how Wikimedia can reach you, sent in the User-Agent as their policy asks (default: "
                        "$MIMIC_CONTACT)")
    q.add_argument("--connections", type=int, default=2, help="requests at once (Wikimedia asks for few)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_commands(kb_sub):
    """The three subcommands, under `kb`."""
    q = kb_sub.add_parser(
        "from-wikidata", formatter_class=Formatter, help="write an entity file from Wikidata (dump, QIDs or SPARQL)",
        description="Write an entity file (one JSON object a line: id, qid, name, description, aliases, "
                    "commons_file) from Wikidata items: from the JSON dump (streamed; .json, .json.gz or .json.bz2), "
                    "from a list of QIDs (fetched through the Wikidata API, 50 a request; with --dump, a filter) "
                    "or from a SPARQL query whose first column is the item. An item's name is its label in "
                    "--lang, else its 'mul' label; items without one are skipped, as are properties, lexemes "
                    "and redirects. Then 'kb fetch-images' and 'encode-kb --entities E.jsonl'.",
        epilog="examples:\n"
               "  python -m mimic kb from-wikidata --sparql louvre.rq --out louvre.jsonl\n"
               "  python -m mimic kb from-wikidata --dump latest-all.json.gz --require-image --min-sitelinks 5 "
               "--workers 2 --out pictured.jsonl\n"
               "  python -m mimic kb from-wikidata --qids footballers.txt --lang fr --out footballers.jsonl\n"
               "see docs/wikidata.md")
    source = q.add_argument_group("sources (--dump, --qids or --sparql; --qids also filters a --dump)")
    source.add_argument("--dump", metavar="FILE", help="Wikidata's JSON dump (latest-all.json[.gz|.bz2])")
    source.add_argument("--qids", metavar="FILE", help="one QID a line")
    source.add_argument("--sparql", metavar="FILE", help="a SPARQL query; its first column is the item")
    q.add_argument("--out", required=True, metavar="E.jsonl", help="the entity file to write (a new file)")
    q.add_argument("--lang", default="en", help="the language of names, descriptions and aliases")
    q.add_argument("--require-image", action="store_true", help="keep only items with a picture (P18)")
    q.add_argument("--min-sitelinks", type=int, default=0, metavar="N", help="keep only items with N sitelinks")
    q.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N entities")
    q.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes parsing a dump (decompression stays in one; see docs/wikidata.md for the gain)")
    q.add_argument("--wikidata-api", metavar="URL", default=None, help="the Wikidata API (default: wikidata.org's)")
    q.add_argument("--sparql-endpoint", metavar="URL", default=None, help="the query service (default: WDQS)")
    _polite(q)

    q = kb_sub.add_parser(
        "fetch-images", formatter_class=Formatter, help="download the entities' Commons pictures and their credits",
        description="For each entity with a commons_file, download its thumbnail through the Commons API into "
                    "--images and record \"image\" (its name there) and \"image_credit\" (licence, licence_url, "
                    "artist, source), which the store keeps and the page shows. Resumable: a second run fetches "
                    "only what is missing. The entity file is rewritten atomically (or --out written).",
        epilog="example:\n  python -m mimic kb fetch-images --entities louvre.jsonl --images louvre_images/ "
               "--contact you@example.org")
    q.add_argument("--entities", required=True, metavar="E.jsonl", help="an entity file from 'kb from-wikidata'")
    q.add_argument("--images", required=True, metavar="DIR", help="the folder the pictures go to")
    q.add_argument("--out", metavar="E.jsonl", default=None, help="write here instead of updating --entities")
    q.add_argument("--width", type=int, default=336, help="thumbnail width in pixels (CLIP sees 224)")
    q.add_argument("--commons-api", metavar="URL", default=None, help="the Commons API (default: commons'")
    _polite(q)

    q = kb_sub.add_parser(
        "push-to-hub", formatter_class=Formatter, help="publish a store as a Hugging Face dataset repo",
        description="Upload a KB store as a Hub dataset repo, with its pictures and a dataset card (entities, "
                    "source and date, the model it was encoded with, the pictures' licences, how to use it). "
                    "Others then use it as --kb owner/name, MIMIC_KB=owner/name or Linker.open('owner/name'). "
                    "No local path is published.",
        epilog="examples:\n  python -m mimic kb push-to-hub kb/louvre alice/louvre-kb\n"
               "  python -m mimic kb push-to-hub kb/louvre alice/louvre-kb --stage review/  # no upload")
    q.add_argument("store", metavar="STORE", help="the store folder")
    q.add_argument("repo_id", metavar="owner/name", help="the Hub dataset repo to create or update")
    q.add_argument("--private", action="store_true", help="create the repo private (applies when it is created)")
    q.add_argument("--stage", metavar="DIR", default=None, help="write what would be uploaded to DIR and stop")


def _web(args):
    from ..data.web import Web
    if args.connections < 1 or args.connections > 8:
        raise SystemExit("error: --connections takes 1 to 8 (Wikimedia asks for few)")
    return Web(contact=args.contact, connections=args.connections)


def cmd(args):
    {"from-wikidata": _from_wikidata, "fetch-images": _fetch_images, "push-to-hub": _push}[args.kb_command](args)


def _report(counts, label="skipped"):
    told = ", ".join(f"{n} {why}" for why, n in counts.most_common())
    return f" ({label}: {told})" if told else ""


def _from_wikidata(args):
    import collections

    from tqdm.auto import tqdm

    from ..data import wikidata
    from ..data.readers import DataError
    from ..fileio import write_jsonl
    from .common import check_output_file
    if not (args.dump or args.qids or args.sparql) or (args.sparql and (args.dump or args.qids)):
        raise SystemExit("error: give --dump, --qids or --sparql (--qids may filter a --dump)")
    if args.limit is not None and args.limit < 1 or args.min_sitelinks < 0 or not 1 <= args.workers <= 64:
        raise SystemExit("error: --limit must be >= 1, --min-sitelinks >= 0, --workers 1 to 64")
    check_output_file(args.out, "--out")
    if os.path.exists(args.out):
        raise SystemExit(f"error: --out {args.out} exists; give a new file (nothing is overwritten)")
    qids = wikidata.read_qids(args.qids) if args.qids else None
    filters = wikidata.Filters(wikidata.check_lang(args.lang), args.require_image, args.min_sitelinks,
                               frozenset(qids) if qids is not None and args.dump else None)
    counts = collections.Counter()
    if args.dump:
        bar = tqdm(total=os.path.getsize(args.dump), unit="B", unit_scale=True, desc="dump", disable=args.no_progress)

        def progress(position):
            bar.update(position - bar.n)
        records = wikidata.read_dump(args.dump, filters, counts, args.workers, args.limit, progress)
    else:
        web = _web(args)
        if args.sparql:
            try:
                with open(args.sparql, encoding="utf-8") as f:
                    query = f.read(1_000_000)
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"{args.sparql}: the query cannot be read ({e})")
            qids = wikidata.sparql_qids(web, query, args.sparql_endpoint or wikidata.SPARQL)
        bar = tqdm(total=len(qids), unit="item", desc="wikidata", disable=args.no_progress)
        records = wikidata.fetch_entities(web, qids, filters, counts, args.wikidata_api or wikidata.API,
                                          args.limit, bar.update)
    kept = collections.Counter()

    def counted(rows):
        for row in rows:
            kept["entities"] += 1
            kept["pictured"] += row["commons_file"] is not None
            if kept["entities"] % 1000 == 0:
                bar.set_postfix(entities=kept["entities"], refresh=False)
            yield row
    write_jsonl(args.out, counted(records))
    bar.close()
    print(f"{args.out}: {kept['entities']} entities, {kept['pictured']} with a Commons picture{_report(counts)}")


def _fetch_images(args):
    import urllib.parse

    from tqdm.auto import tqdm

    from ..data import commons
    from ..data.readers import DataError, read_jsonl
    from ..fileio import write_jsonl
    if not 16 <= args.width <= 2048:
        raise SystemExit("error: --width takes 16 to 2048 pixels")
    entities = read_jsonl(args.entities, "entity")
    if not all(isinstance(e, dict) for e in entities):
        raise DataError(f"{args.entities}: every line must be an entity object")
    api = args.commons_api or commons.API
    hosts = commons.UPLOAD_HOSTS | ({urllib.parse.urlsplit(api).hostname} if args.commons_api else set())
    web = _web(args)
    wanted = sum(1 for e in entities if e.get("commons_file") and not e.get("image"))
    bar = tqdm(total=wanted, unit="file", desc="commons", disable=args.no_progress)
    try:
        counts = commons.fetch_images(web, entities, args.images, args.width, api, hosts, args.connections, bar.update)
    finally:  # what was fetched is recorded even after an interruption (the journal has it too)
        write_jsonl(args.out or args.entities, entities)
        bar.close()
    pictured = counts.pop("with a picture")
    print(f"{args.out or args.entities}: {pictured} of {len(entities)} entities with a picture in {args.images}"
          f"{_report(counts, 'this run')}")


def _push(args):
    from ..kb.hub import push_kb, stage_kb
    from .common import check_store
    check_store(args.store)
    if args.stage:
        stage_kb(args.store, args.stage, args.repo_id)
        print(f"staged in {args.stage} (README.md is the dataset card); nothing was uploaded")
        return
    print(f"published: {push_kb(args.store, args.repo_id, private=args.private)}")
