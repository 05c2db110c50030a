"""`link`: one mention, or a file of them, against a store; without a mention, every mention of the text."""
import json
import logging
import os

from .common import Formatter, check_output_file, check_store, checked_image, model_options, store_model


def add_link(sub):
    """`link`."""
    p = sub.add_parser("link", formatter_class=Formatter, help="link mentions against a pre-encoded KB",
                       description="Rank the KB's entities for a mention. Default: faiss retrieves candidates by "
                                   "a dot product of precomputed vectors (G2G and S_C exactly, mean-field proxies "
                                   "of G2L, E2M and M2E), and the full MIMIC score ranks them. --exact returns "
                                   "exactly the exhaustive top-k (proved by score bounds). "
                                   "Without --checkpoint/--init, the model recorded in the store is used.",
                       epilog="examples:\n"
                              "  python -m mimic link --kb kb/wikimel --checkpoint K --sentence \"Hopper painted "
                              "Nighthawks.\" --mention Hopper\n"
                              "  python -m mimic link --kb kb/wikimel --sentence \"Hopper painted Nighthawks.\"  "
                              "(no --mention: every mention the KB's names find)\n"
                              "  python -m mimic link --kb kb/wikimel --checkpoint K --queries q.jsonl --out o.jsonl\n"
                              'queries: one JSON object a line, {"id", "sentence", "mention", "image": path or null}'
                              " (paths relative to the queries file); a line without \"mention\" links every "
                              "mention of its sentence\n"
                              'output: {"id", "nil", "results": [{"rank", "index", "id", "qid", "name", "score", '
                              '"s_t", "s_t_g2g", "s_t_g2l", "s_v", "s_v_e2m", "s_v_m2e", "s_c"}]}\n'
                              'without a mention: {"id", "mentions": [{"start", "end", "text", "support", '
                              '"context", "nil", "results"}], "skipped"} (offsets in the sentence as given; see '
                              "docs/mentions.md)\n"
                              "a result's \"id\" is the entity's stable id, the one 'kb update' and 'kb remove' take\n"
                              "--image of a missing or unreadable file is an error; in a queries file, a line whose "
                              'image is missing is linked without it, marked "image_missing": true, and counted '
                              "in the log")
    p.add_argument("--kb", required=True, metavar="DIR", help="a store made by encode-kb, or a Hub dataset owner/name "
                                                              "of one (kb push-to-hub)")
    model_options(p)
    p.add_argument("--sentence", help="the sentence the mention stands in")
    p.add_argument("--mention", help="the words of the sentence that name the entity; without it, every mention "
                                     "that the KB's names and aliases find is linked")
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


def _read_queries(path):
    """-> (queries, image_missing): a query whose image file is missing gets no image and a True flag."""
    from ..data.readers import DataError
    from ..query import Query, QueryError, check_query
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
            if row.get("mention") is None:  # every mention of the text: offsets in the sentence as given
                sentence, mention = check_text(row.get("sentence")), None
            else:
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


def check_text(text) -> str:
    """A text to find mentions in, as given (offsets count in it), or QueryError."""
    from ..query import QueryError, clean_text
    if text is not None and not isinstance(text, str):
        raise QueryError("The sentence must be a string.")
    if not clean_text(text):
        raise QueryError("Please type a sentence to find mentions in.")
    return text


def _mentions_table(result) -> str:
    """One block per mention: its offsets and words, then its ranked entities (or NIL)."""
    blocks = []
    for m in result["mentions"]:
        head = f"[{m['start']}:{m['end']}] {m['text']}  ({m['support']})" + ("  NIL" if m["nil"] else "")
        blocks.append(head + "\n" + _results_table(m["results"]))
    if not blocks:
        blocks.append("no mention found: no name or alias of the KB occurs in the sentence")
    if result.get("skipped"):
        blocks.append(f"{result['skipped']} more mentions skipped (at most {len(result['mentions'])} per text)")
    return "\n\n".join(blocks)


def _results_table(rows):
    head = f"{'rank':>4}  {'score':>8}  {'S_T':>8}  {'S_V':>8}  {'S_C':>8}  {'id':<10} name"
    lines = [head] + [f"{r['rank']:>4}  {r['score']:8.3f}  {r['s_t']:8.3f}  {r['s_v']:8.3f}  {r['s_c']:8.3f}  "
                      f"{str(r['id']):<10} {r['name']}" for r in rows]
    return "\n".join(lines)


def cmd_link(args):
    from ..query import check_query
    single = args.sentence is not None or args.mention is not None
    if single == bool(args.queries):
        raise SystemExit("error: give either --sentence (and --mention), or --queries Q.jsonl --out O.jsonl")
    every = single and args.mention is None  # every mention of the sentence
    if args.queries and not args.out:
        raise SystemExit("error: --queries needs --out O.jsonl")
    # what can be refused at once, before the model (and PyTorch) loads
    from ..data.hubrepo import is_repo_name
    if is_repo_name(args.kb):  # a Hub dataset owner/name: its local snapshot (PyTorch stays unloaded otherwise)
        from ..kb.hub import resolve_store
        args.kb = resolve_store(args.kb)
    check_store(args.kb)
    if every:
        check_text(args.sentence)
    elif single:
        check_query(args.sentence, args.mention)
    else:
        check_output_file(args.out, "--out")
    queries, image_missing = _read_queries(args.queries) if args.queries else (None, None)
    from tqdm.auto import tqdm

    from ..fileio import write_jsonl
    from ..kb.store import KBStore
    from ..linker import Linker
    if single:
        checked_image(args.image)  # the model's own image pipeline (and image mode) then reads the file
    store = KBStore.load(args.kb)
    linker = Linker(store_model(args, store), store, candidates=args.candidates)
    if every:
        result = linker.link_text(args.sentence, args.image, args.top_k, exact=args.exact)
        print(json.dumps(result, ensure_ascii=False, indent=1) if args.json else _mentions_table(result))
        return
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
    linked = linker.link_many([q for q in queries if q.mention is not None], args.top_k, args.exact)

    def results():  # in the file's order: a line without a mention links every mention of its sentence
        for query, missing in zip(queries, image_missing):
            if query.mention is None:
                result = linker.link_text(query.sentence, query.image, args.top_k, exact=args.exact)
            else:
                result = next(linked)
            bar.update(1)
            yield {"id": query.id, **({"image_missing": True} if missing else {}), **result}
    write_jsonl(args.out, results())
    bar.close()
    missing = sum(image_missing)
    print(f"{len(queries)} results written to {args.out}" + (f" ({missing} with a missing image)" if missing else ""))
