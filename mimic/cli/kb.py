"""`kb add | update | remove | compact | upgrade`: edit a store in place."""
import os

from . import wikidata
from .common import Formatter, check_store, model_options, store_model, wait_option


def add_kb(sub):
    """`kb` and its five subcommands."""
    p = sub.add_parser("kb", formatter_class=Formatter, help="add, update, remove entities of a KB store; compact it",
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
                              "  python -m mimic kb from-wikidata --sparql paintings.rq --out paintings.jsonl\n"
                              'add: a JSON list of {"id" (or "qid"), "name", "description", "image"}\n'
                              'update: a JSON list of {"id", and the fields to change: "name", "description", '
                              '"image" (null removes it)}\n'
                              "ids: the QID, else the index the entity had when the KB was first encoded; 'link' "
                              "shows it as \"id\"")
    kb_sub = p.add_subparsers(dest="kb_command", required=True,
                              metavar="<add|update|remove|compact|upgrade|from-wikidata|fetch-images|push-to-hub>")
    for name, text, what in (
            ("add", "add new entities (their ids must be new)",
             'a JSON list of {"id" (or "qid"), "name", "description", "image"}'),
            ("update", "change the name, description or image of existing entities (fields not given are kept)",
             'a JSON list of {"id", and any of "name", "description", "image" (null removes the image)}')):
        q = kb_sub.add_parser(name, formatter_class=Formatter, help=text, description=text)
        q.add_argument("--kb", required=True, metavar="DIR", help="the store to edit")
        q.add_argument("--entities", required=True, metavar="E.json", help=what)
        q.add_argument("--images", metavar="DIR",
                       help="the folder of their images; only files inside it are used (default: beside the file)")
        model_options(q)
        wait_option(q)
    q = kb_sub.add_parser("remove", formatter_class=Formatter, help="remove entities by id",
                          description="Remove entities by id (as 'link' shows it: the QID, or the index the entity "
                                      "had when the KB was first encoded).")
    q.add_argument("--kb", required=True, metavar="DIR", help="the store to edit")
    q.add_argument("--ids", required=True, nargs="+", metavar="ID", help="ids of the entities to remove")
    wait_option(q)
    for name, text in (("compact", "rewrite the store as one segment with a fresh retrieval index (after many edits; "
                                   "costs the whole KB)"),
                       ("upgrade", "convert a format-1 store (before mimic-el stored segments) to format 2, in place")):
        q = kb_sub.add_parser(name, formatter_class=Formatter, help=text, description=text)
        q.add_argument("--kb", required=True, metavar="DIR", help="the store")
        model_options(q)
        if name == "upgrade":
            q.add_argument("--precision", choices=["compact", "mixed", "float32"], default="compact",
                           help="how the converted store keeps its terms")
        wait_option(q)
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
    wikidata.add_commands(kb_sub)  # building a KB from Wikidata and Commons, publishing one


def cmd_kb(args):
    if args.kb_command in wikidata.COMMANDS:
        return wikidata.cmd(args)
    check_store(args.kb)  # at once, before the model (and PyTorch) loads
    from ..data.readers import read_entity_file
    from ..kb.edit import compact_store, edit_store, read_changes, upgrade_store
    from ..kb.store import KBStore
    command = args.kb_command
    if command == "remove":
        manifest = edit_store(args.kb, remove=args.ids, wait=args.wait)
    elif command in ("compact", "upgrade"):
        model = store_model(args, KBStore.load(args.kb))
        if command == "compact":
            manifest = compact_store(args.kb, model, wait=args.wait, progress=not args.no_progress)
        else:
            manifest = upgrade_store(args.kb, model, args.precision, wait=args.wait, progress=not args.no_progress)
    else:
        changes = read_entity_file(args.entities) if command == "add" else read_changes(args.entities)
        folder = args.images or os.path.dirname(os.path.abspath(args.entities))
        model = store_model(args, KBStore.load(args.kb))
        manifest = edit_store(args.kb, model, image_folder=folder, wait=args.wait,
                              **{"add" if command == "add" else "update": changes})
    print(f"{args.kb}: version {manifest['kb_version']}, {manifest['count']} entities")
    segments, removed = len(manifest["segments"]), (manifest.get("removed") or {}).get("count", 0)
    if segments > 8 or removed > manifest["count"] // 10:
        print(f"{segments} segments and {removed} removed rows: 'python -m mimic kb compact --kb {args.kb}' makes "
              f"searches faster again")
