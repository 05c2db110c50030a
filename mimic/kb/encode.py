"""Encoding a KB into a store (encode-kb): chunk by chunk, resumable, shardable.

Encoding runs chunk by chunk straight into the segment's files in `<out>.partial/` (no chunk is held
twice, nor the KB in memory), marking each finished chunk, so an interrupted run resumes where it
stopped, without gaps or duplicates, and gives the same store. `--shard i/n` encodes every n-th chunk
into a shard folder; `merge_shards` copies the shards' chunks, one at a time, into one segment. The
records and the retrieval index are written last; the store then appears (or its new version replaces
the old one) in one atomic step (mimic/kb/versions.py). The whole job holds the store's writer lock (its
folder is made, empty and marked, when the job starts), so a second encode-kb or `kb` command on the
same store waits for it; a work folder has a lock of its own (a shard folder is written by one run).
"""
import json
import logging
import os
import shutil

import numpy as np
from tqdm.auto import tqdm

from ..data.readers import entity_image_path
from ..fileio import atomic_file, make_dirs, write_json
from ..model.encoding import encode_batch
from ..model.images import log_unusable
from ..model.matcher import flatten_terms
from ..model.processing import entity_text
from . import compression, retrieval, versions
from .compression import DEFAULT_PRECISION, DERIVED, PRECISIONS
from .entity_images import check_all_inside
from .segment import SEGMENT_FILE, Segment, SegmentWriter, load_npy, read_spec, write_records
from .store import entity_record, index_segment, link_tree, measure_space, now, segment_name, term_spec
from .versions import DEFAULT_WAIT, FORMAT, VERSION, WORK_FORMAT, StoreError

log = logging.getLogger(__name__)


def chunk_ranges(count: int, chunk_size: int) -> list:
    return [(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]


def _chunk_file(work: str, chunk: int) -> str:
    return os.path.join(work, "chunks", f"{chunk:06d}.npz")


def _done_file(work: str, chunk: int) -> str:
    return os.path.join(work, "done", f"{chunk:06d}")


def _chunk_done(work: str, layout: str, chunk: int) -> bool:
    return os.path.exists(_done_file(work, chunk) if layout == "segment" else _chunk_file(work, chunk))


def _read_plan(work: str) -> dict:
    try:
        with open(os.path.join(work, "partial.json"), encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, ValueError):
        raise StoreError(f"{work}: not an encode-kb partial or shard folder")
    if not isinstance(plan, dict) or plan.get("format") != WORK_FORMAT:
        raise StoreError(f"{work}: not an encode-kb partial or shard folder")
    if plan.get("version") != VERSION:
        raise StoreError(f"{work}: an unfinished encoding made by another version of mimic-el (its format is "
                         f"{plan.get('version')}); encode it again with --restart")
    return plan


def _open_work(work: str, plan: dict, restart: bool):
    """Check that the work folder (locked, see `versions.working`) belongs to the same job, or start it:
    with `restart`, or when a killed run left it before writing its plan, what it holds is discarded."""
    spec_path = os.path.join(work, "partial.json")
    if restart or not os.path.exists(spec_path):
        for entry in os.listdir(work):
            if entry not in (versions.LOCK, versions.WORK_MARKER):
                versions.remove(os.path.join(work, entry))
    if os.path.exists(spec_path):
        existing = _read_plan(work)
        if existing.get("layout") != plan["layout"]:
            how = "on one process" if existing.get("layout") == "segment" else "with --devices or --shard"
            raise StoreError(f"{work}: an unfinished encoding that ran {how} is here; run it again the same way "
                             f"to resume it, or pass --restart to discard it")
        for key in ("count", "chunk_size", "precision", "fingerprints", "shard"):
            if existing.get(key) != plan[key]:
                raise StoreError(f"{work}: an unfinished encoding of another job is here (its {key} differs: "
                                 f"{existing.get(key)} vs {plan[key]}); pass --restart to discard it")
        return
    make_dirs(os.path.join(work, "done" if plan["layout"] == "segment" else "chunks"))
    write_json(spec_path, plan)


def start_work(work: str, model, count: int, fingerprints: dict, *, chunk_size: int, precision: str, layout: str,
               shard=(0, 1), source: dict = None, restart: bool = False) -> dict:
    """The plan of this job's work folder, written if the folder is new (or `restart`), else checked
    against the one there. layout "segment": one process writes the segment itself; "chunks": one file
    per chunk (shards, and the ranks of a distributed run), merged by `finish`. Call holding
    `versions.working(work)`."""
    if precision not in PRECISIONS:
        raise StoreError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    plan = {"format": WORK_FORMAT, "version": VERSION, "layout": layout, "count": count, "chunk_size": chunk_size,
            "precision": precision, "fingerprints": fingerprints, "shard": list(shard),
            "units": list(model.config.units), "source": source or {}}
    _open_work(work, plan, restart)
    return plan


def pending_chunks(work: str, plan: dict, chunks: list) -> list:
    """The chunks of `chunks` that the work folder does not hold finished yet."""
    return [c for c in chunks if not _chunk_done(work, plan["layout"], c)]


def write_chunk(work: str, chunk: int, values: dict, precision: str):
    """One chunk's float terms, coded, into its own file of a "chunks" work folder (atomically: a chunk
    file is whole or absent, so any process may die at any moment)."""
    spec = term_spec(values, precision)
    if not os.path.exists(os.path.join(work, "terms.json")):
        write_json(os.path.join(work, "terms.json"), spec)
    coded = {}
    for name, v in values.items():
        for i, array in enumerate(compression.encode(spec[name]["codec"], v, name)):
            coded[f"{name}#{i}"] = array
    with atomic_file(_chunk_file(work, chunk), "wb") as f:
        np.savez(f, **coded)


def encode_terms(model, texts: list, images: list, batch_size: int, device=None, autocast=None, step=None) -> dict:
    """Entities' texts and images -> their stored terms ({flat name: float32 [n, ...]}, no `DERIVED`),
    encoded batch by batch; step(n) after each batch."""
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = slice(start, start + batch_size)
        terms = encode_batch(model, texts[batch], images[batch], "entity", device, autocast=autocast)
        parts.append({k: v.numpy() for k, v in flatten_terms(terms).items() if k not in DERIVED})
        if step:
            step(len(texts[batch]))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _model_terms(model, entities: list, image_folder: str, batch_size: int, device, autocast, progress_step):
    """terms_of(start, end) that runs the model's encoder, batch by batch."""
    def terms_of(start, end):
        return encode_terms(model, [entity_text(e.name, e.attr) for e in entities[start:end]],
                            [entity_image_path(e, image_folder) for e in entities[start:end]], batch_size, device,
                            autocast, progress_step)
    return terms_of


def encode_chunks(model, entities: list, image_folder: str, work: str, fingerprints: dict, *, wait=DEFAULT_WAIT,
                  **options) -> list:
    """Encode this shard's chunks into `work` (skipping finished ones), holding the work folder's lock:
    a second encoding of the same folder waits for the first (up to `wait` s). Returns the chunk ids."""
    with versions.working(work, wait):
        return _encode_chunks(model, entities, image_folder, work, fingerprints, **options)


def _encode_chunks(model, entities: list, image_folder: str, work: str, fingerprints: dict, *, batch_size=64,
                   chunk_size=1024, shard=(0, 1), precision=DEFAULT_PRECISION, restart=False, device=None,
                   progress=True, source: dict = None, on_progress=None, autocast=None, terms_of=None) -> list:
    """encode_chunks' work. on_progress(done, total) is called after every batch (for a UI).
    terms_of(start, end) -> flat float terms replaces the encoder (benchmarks write synthetic terms
    through the same path)."""
    index, total = shard
    plan = start_work(work, model, len(entities), fingerprints, chunk_size=chunk_size, precision=precision,
                      layout="segment" if total == 1 else "chunks", shard=shard, source=source, restart=restart)
    ranges = chunk_ranges(len(entities), chunk_size)
    mine = [c for c in range(len(ranges)) if c % total == index]
    todo = pending_chunks(work, plan, mine)
    done_entities = sum(ranges[c][1] - ranges[c][0] for c in mine if c not in todo)
    bar = tqdm(total=sum(ranges[c][1] - ranges[c][0] for c in mine), initial=done_entities, unit="entity",
               desc="encode KB", disable=not progress, smoothing=0.1)

    def step(n):
        bar.update(n)
        if on_progress:
            on_progress(bar.n, bar.total)
    if terms_of is None:
        model.eval()
        terms_of = _model_terms(model, entities, image_folder, batch_size, device, autocast, step)
    else:
        given = terms_of

        def terms_of(start, end):
            values = given(start, end)
            step(end - start)
            return values
    writer = None
    for chunk in todo:
        start, end = ranges[chunk]
        values = {k: v for k, v in terms_of(start, end).items() if k not in DERIVED}
        if plan["layout"] == "segment":
            if writer is None:
                folder = os.path.join(work, "segment")
                writer = (SegmentWriter.reopen(folder) if os.path.exists(os.path.join(folder, SEGMENT_FILE))
                          else SegmentWriter(folder, len(entities), term_spec(values, precision), create=True))
            writer.put(start, values)
            writer.flush()  # the rows are on disk before the chunk is marked done
            with atomic_file(_done_file(work, chunk)):
                pass
        else:
            write_chunk(work, chunk, values, precision)
    if writer is not None:
        writer.close()
    bar.close()
    if model is not None and hasattr(model, "processor"):
        log_unusable(model.processor.images, sum(bool(e.images) for e in entities), "entity images")
    return mine


def finish(works: list, out: str, entities: list, image_folder: str, kb_fingerprint: str, model, *,
           flat_limit: int = retrieval.FLAT_LIMIT, progress: bool = True) -> dict:
    """Finished chunks of one work folder (or of shards) -> the store's new version at `out`: records,
    retrieval index, then the atomic switch. Returns the new manifest. Call holding `versions.writing(out)`."""
    plans = [_read_plan(w) for w in works]
    first = plans[0]
    for work, plan in zip(works[1:], plans[1:]):
        for key in ("count", "chunk_size", "precision", "fingerprints", "units"):
            if plan[key] != first[key]:
                raise StoreError(f"{work}: made with a different {key} than {works[0]}; shards must come from the "
                                 f"same model, KB and settings")
    count, chunk_size, precision = first["count"], first["chunk_size"], first["precision"]
    if first["fingerprints"].get("kb") != kb_fingerprint:
        raise StoreError(f"{works[0]}: was encoded from another KB file than the one given")
    if count != len(entities):
        raise StoreError(f"the partial encoding has {count} entities but the KB has {len(entities)}")
    ranges = chunk_ranges(count, chunk_size)
    direct = len(works) == 1 and first["layout"] == "segment"
    sources = {}
    for work, plan in zip(works, plans):
        for chunk in range(len(ranges)):
            if chunk not in sources and _chunk_done(work, plan["layout"], chunk):
                sources[chunk] = work
    missing = [c for c in range(len(ranges)) if c not in sources]
    if missing:
        start, end = ranges[missing[0]]
        raise StoreError(f"{len(missing)} of {len(ranges)} chunks are not encoded yet (the first: entities "
                         f"{start}-{end - 1}); finish every shard before merging")
    name = segment_name(1)
    if direct:
        folder = os.path.join(works[0], "segment")
        spec = read_spec(folder)["terms"]
    else:
        folder = os.path.join(out, versions.SEGMENTS, f".tmp-{name}")
        spec = _merge_chunks(works, sources, ranges, folder, count, progress)
    write_records(folder, count, (entity_record(e, image_folder) for e in entities))
    segment = Segment(folder, count, spec)
    space = measure_space(model.matcher, segment)
    index = index_segment(segment, space, flat_limit, progress)
    target = os.path.join(out, versions.SEGMENTS, name)
    if direct:
        link_tree(folder, target)
    else:
        os.rename(folder, target)
    manifest = {"format": FORMAT, "version": VERSION, "count": count, "precision": precision, "terms": spec,
                "derived": list(DERIVED), "fingerprints": first["fingerprints"], "kb_version": 1,
                "units": first["units"], "source": first.get("source") or {}, "created": now(), "history": [],
                "retrieval": {**space.to_manifest(), "flat_limit": flat_limit},
                "segments": [{"name": name, "count": count, "index": index}], "removed": None}
    versions.publish(out, manifest)
    return manifest


def _merge_chunks(works: list, sources: dict, ranges: list, folder: str, count: int, progress: bool) -> dict:
    """Copy the shards' chunks, one at a time, into a new segment; returns its term spec."""
    specs = []
    for work in works:
        try:
            with open(os.path.join(work, "terms.json"), encoding="utf-8") as f:
                specs.append(json.load(f))
        except FileNotFoundError:
            continue
    spec = specs[0]
    if any(s != spec for s in specs):
        raise StoreError("the shards were written with different term layouts; encode them again")
    writer = SegmentWriter(folder, count, spec, create=True)
    for chunk, (start, end) in enumerate(tqdm(ranges, desc="merge", unit="chunk", disable=not progress)):
        file = _chunk_file(sources[chunk], chunk)
        with load_npy(file) as z:
            for name, term in spec.items():
                coded = [z[f"{name}#{i}"] for i in range(len(compression.files_of(name, term["codec"])))]
                if len(coded[0]) != end - start:
                    raise StoreError(f"{file}: holds {len(coded[0])} entities, expected {end - start}")
                writer.put_coded(start, name, coded)
    writer.close()
    return spec


def encode_store(model, entities: list, image_folder: str, out: str, kb_fingerprint: str, *, batch_size=64,
                 chunk_size=1024, shard=None, precision=DEFAULT_PRECISION, restart=False, device=None, progress=True,
                 source: dict = None, on_progress=None, autocast=None, flat_limit=retrieval.FLAT_LIMIT,
                 wait=DEFAULT_WAIT, terms_of=None) -> str:
    """Encode a KB into a store at `out` (resumable). With shard=(i, n), write shard i's chunks to `out`
    and stop; `merge_shards` makes the store. `out` must be a store, an empty folder or absent."""
    from .fingerprint import model_fingerprints
    if not entities:
        raise StoreError("the KB has no entities")
    check_all_inside(entities, image_folder)
    fingerprints = {**model_fingerprints(model), "kb": kb_fingerprint}
    options = dict(batch_size=batch_size, chunk_size=chunk_size, precision=precision, restart=restart,
                   device=device, progress=progress, source=source, on_progress=on_progress, autocast=autocast,
                   terms_of=terms_of, wait=wait)
    if shard is not None and shard[1] > 1:
        encode_chunks(model, entities, image_folder, out, fingerprints, shard=shard, **options)
        return out
    versions.check_target(out)
    work = out.rstrip("/") + ".partial"
    versions.check_work_target(work)
    with versions.writing(out, wait):  # the whole job, encoding included: one writer at a time
        if not restart and _up_to_date(out, fingerprints, len(entities), precision):
            log.info("%s is up to date (same model, KB and precision): nothing to encode", out)
            return out
        encode_chunks(model, entities, image_folder, work, fingerprints, **options)
        finish([work], out, entities, image_folder, kb_fingerprint, model, flat_limit=flat_limit,
               progress=progress)
        shutil.rmtree(work, ignore_errors=True)
    return out


def _up_to_date(out: str, fingerprints: dict, count: int, precision: str) -> bool:
    try:
        with open(os.path.join(out, versions.MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and manifest.get("version") == VERSION
            and manifest.get("fingerprints") == fingerprints and manifest.get("count") == count
            and manifest.get("precision") == precision and manifest.get("kb_version", 1) == 1)


def merge_shards(shards: list, out: str, entities: list, image_folder: str, kb_fingerprint: str, model, *,
                 flat_limit=retrieval.FLAT_LIMIT, wait=DEFAULT_WAIT, progress=True) -> str:
    """Finished shard folders -> a store at `out` (the model builds the retrieval index)."""
    versions.check_target(out)
    with versions.writing(out, wait):
        finish(shards, out, entities, image_folder, kb_fingerprint, model, flat_limit=flat_limit, progress=progress)
    return out
