"""`explain`: relevance maps and attention of one (mention, entity) pair, as PNGs and JSON."""
import os

from .common import Formatter, check_store, checked_image, model_options, store_model

UNIT_NAMES = {"s": "S", "s_v": "S_V", "s_c": "S_C"}
# every file `explain` may write into --out
EXPLANATION_FILES = ["explanation.json"] + [f"{side}-{unit}.png" for side in ("mention", "entity")
                                            for unit in ("s", "s_v", "s_c", "alpha")]


def add_explain(sub):
    """`explain`."""
    p = sub.add_parser("explain", formatter_class=Formatter,
                       help="relevance maps: which patches and words moved the score of a candidate",
                       description="Explain one (mention, entity) pair: relevance maps over the patches of the "
                                   "mention's and the entity's image, for S and for each unit's score (S_V, S_C; "
                                   "S_T reads no image), written as PNG overlays, and the relevance of each of the "
                                   "mention's words for S and S_T, printed. The method is Chefer et al.'s "
                                   "gradient-weighted attention relevance (ICCV 2021), with every output token "
                                   "MIMIC reads taken into account (see docs/library.md). With a trained checkpoint the "
                                   "CMFU patch attention alpha is drawn too (it is uniform under zero-shot).",
                       epilog="examples:\n"
                              "  python -m mimic explain --kb kb/demo --sentence \"A portrait of Hopper was unveiled.\" "
                              "--mention Hopper --image photo.jpg --out why/\n"
                              "  python -m mimic explain --kb kb/demo --sentence ... --mention ... --qid Q7817 --out why/\n"
                              "writes <out>/mention-s.png, mention-s_v.png, mention-s_c.png, entity-*.png (when the "
                              "side has an image) and explanation.json (every value)")
    p.add_argument("--kb", required=True, metavar="DIR", help="a store made by encode-kb")
    model_options(p)
    p.add_argument("--sentence", required=True, help="the sentence the mention stands in")
    p.add_argument("--mention", required=True, help="the words of the sentence that name the entity")
    p.add_argument("--image", metavar="P", help="the mention's image (optional)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--entity", type=int, metavar="INDEX", help="the entity to explain, by KB index")
    which.add_argument("--qid", metavar="Q", help="the entity to explain, by QID")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write the PNG overlays and JSON into")
    p.add_argument("--overwrite", action="store_true", help="replace files of an earlier explanation in --out")
    p.add_argument("--exact", action="store_true", help="find the best-ranked entity exactly (without --entity/--qid)")


def _explained_entity(args, linker, mention_terms: dict) -> int:
    """--entity, --qid, or the best-ranked entity for the mention (its encoded `mention_terms`)."""
    from ..data.readers import DataError
    from ..linker import check_entity_index
    if args.entity is not None:
        return check_entity_index(args.entity, len(linker.store))
    if args.qid:
        for i, meta in enumerate(linker.store.entities):
            if meta.get("qid") == args.qid or meta.get("id") == args.qid:
                return i
        raise DataError(f"{args.kb}: no entity with QID {args.qid!r}")
    return linker.link_terms(mention_terms, 1, args.exact)["results"][0]["index"]


def _word_table(words: list) -> str:
    top = max(max((w["s"] for w in words), default=0), 1e-30)
    lines = [f"{'word':<16} {'S':>8} {'S_T':>8}"]
    for w in words:
        lines.append(f"{w['word'][:16]:<16} {w['s']:8.3f} {w['s_t']:8.3f}  {'█' * round(12 * max(w['s'], 0) / top)}")
    return "\n".join(lines)


def _refuse_taken(out: str, files, overwrite: bool):
    taken = [f for f in files if os.path.exists(os.path.join(out, f))]
    if taken and not overwrite:
        raise SystemExit(f"error: {out} already holds {', '.join(taken)}; choose another --out or pass --overwrite")


def cmd_explain(args):
    from ..data.hubrepo import is_repo_name
    from ..query import Query, check_query

    # what can be refused at once, before the model (and PyTorch) loads
    if is_repo_name(args.kb):  # a Hub dataset owner/name: its local snapshot
        from ..kb.hub import resolve_store
        args.kb = resolve_store(args.kb)
    check_store(args.kb)
    sentence, mention = check_query(args.sentence, args.mention)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise SystemExit(f"error: --out {args.out} is a file; give a folder")
    _refuse_taken(args.out, EXPLANATION_FILES, args.overwrite)  # any file this command may write
    from ..explain.heatmap import overlay_grid, patch_grid, with_scale
    from ..explain.relevance import UnsupportedBackbone
    from ..fileio import atomic_file, make_dirs, write_json
    from ..kb.store import KBStore
    from ..linker import Linker
    from ..model.images import ImageError, open_image
    image = checked_image(args.image)  # a bad image is an error here, not zeros
    store = KBStore.load(args.kb)
    linker = Linker(store_model(args, store), store)
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
            pictures[f"{side}-{unit}.png"] = with_scale(
                overlay_grid(picture, grids[unit]), grids[unit],
                f"{side} image: relevance for {UNIT_NAMES[unit]} (compare patches within this picture)")
        if linker.model.config.metadata.get("init") != "zero-shot":
            alpha = patch_grid(out[f"{side}_alpha"].tolist())
            pictures[f"{side}-alpha.png"] = with_scale(overlay_grid(picture, alpha), alpha,
                                                       f"{side} image: CMFU patch attention α (where it pooled)")
    files = [*pictures, "explanation.json"]
    _refuse_taken(args.out, files, args.overwrite)  # (made meanwhile)
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
    print(_word_table(out["word_relevance"]))
    for side in ("mention", "entity"):
        if out[f"{side}_relevance"] is None:
            print(f"the {side} has no image: no patch relevance")
    print(f"written to {args.out}: {', '.join(files)}")
