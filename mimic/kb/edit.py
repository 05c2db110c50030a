"""A living KB: add, update and remove entities at a cost that follows the change, not the KB.

An edit holds the store's writer lock, encodes only the new or changed entities (with the store's own
model, checked by fingerprint), writes them as a new segment (terms, records, a small retrieval index
of their own), extends the removal list (removed entities, and the old rows of updated ones) and
publishes the next version in one atomic step (mimic/kb/versions.py). Nothing that exists is rewritten:
adding 100 entities to a million-entity store writes those 100, a removal list and a manifest.

Positions: kept entities keep their order; added and updated ones follow, in the edit's order (an
updated entity moves to the end). Ids never change, whatever is removed. Removed rows stay in their
segment, skipped, until `compact_store` (`kb compact`) rewrites the store as one segment with a fresh
retrieval index, a cost of the whole KB, run when the user chooses. `upgrade_store` (`kb upgrade`)
converts a format-1 store the same way. The manifest's `kb_version` counts the versions, its KB
fingerprint chains the old one with each edit, and `history` lists the last HISTORY edits.

Images of added or updated entities must lie inside the images folder given (`--images`) and decode as
images; they are copied into the store (`images/<content hash>.<ext>`), so the store stays whole when
the files it was given go away. `kb update` changes the fields a record gives: without "image" the
entity keeps its picture, with "image": null it loses it.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil

import numpy as np

from ..data.readers import read_credit, read_json
from ..fileio import atomic_file, make_dirs
from ..model.processing import entity_text
from . import retrieval, versions
from .compression import DEFAULT_PRECISION, DERIVED, PRECISIONS, codec_of
from .encode import encode_terms
from .entity_images import label, read_image
from .fingerprint import model_fingerprints
from .segment import Segment, SegmentWriter, record_id, write_records
from .store import KBStore, StoreError, index_segment, measure_space, now, segment_name
from .versions import DEFAULT_WAIT

HISTORY = 100  # edits kept in the manifest's history
LISTED = 20  # ids listed per edit in the history
UPDATABLE = ("name", "description", "image")


def read_changes(path: str) -> list:
    """A `kb update` file: a JSON list of {"id" (or "qid"), and any of "name", "description", "image"}.
    Only the fields given change; "image": null removes the picture."""
    data = read_json(path, "entity update")
    if not isinstance(data, list):
        raise StoreError(f"{path}: expected a JSON list of entity updates")
    changes = []
    for position, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise StoreError(f"{path}: update #{position} is a {type(entry).__name__}, expected an object")
        ident = entry.get("id", entry.get("qid"))
        if isinstance(ident, int) and not isinstance(ident, bool):
            ident = str(ident)
        if not isinstance(ident, str) or not ident:
            raise StoreError(f"{path}: update #{position} has no \"id\" (or \"qid\"): which entity does it change?")
        change = {"id": ident}
        for key in UPDATABLE:
            if key in entry:
                value = entry[key]
                if value is not None and not isinstance(value, str):
                    raise StoreError(f"{path}: update #{position} (id {ident!r}): {key!r} must be text or null")
                if key == "name" and value is None:
                    raise StoreError(f"{path}: update #{position} (id {ident!r}): 'name' cannot be null (an entity "
                                     f"keeps a name; leave \"name\" out to keep the current one)")
                if key == "name" and not value.strip():
                    raise StoreError(f"{path}: update #{position} (id {ident!r}): 'name' cannot be empty")
                change[key] = value
        if "image_credit" in entry:  # a new picture's credit (a kept picture keeps its own unless given)
            change["image_credit"] = read_credit(path, position, ident, entry["image_credit"])
        if len(change) == 1:
            raise StoreError(f"{path}: update #{position} (id {ident!r}) gives none of {', '.join(UPDATABLE)}")
        changes.append(change)
    return changes


class _Entity:
    """What gets encoded: the text and image of an added or updated entity, and its record."""

    def __init__(self, ident, qid, name, description, image_source, image_record, credit=None, aliases=None):
        self.id, self.qid, self.name, self.description = ident, qid, name, description
        self.image_source, self.image_record, self.credit = image_source, image_record, credit
        self.aliases = aliases

    def record(self) -> dict:
        return {"id": self.id, "qid": self.qid, "name": self.name, "description": self.description,
                "image": self.image_record, "image_credit": self.credit if self.image_record else None,
                "aliases": self.aliases}


# the names `_copy_image` gives: what compaction may remove from images/ (nothing else is the store's)
COPIED_IMAGE = re.compile(r"[0-9a-f]{16}\.[a-z0-9]{1,10}")


def _copy_image(who: str, name: str, image_folder: str, store: str) -> tuple:
    """Copy a checked image into the store under its content hash, from the one handle `read_image`
    checked. -> (its path relative to the store, its absolute path: what the encoder reads)."""
    data = read_image(who, name, image_folder)
    extension = os.path.splitext(name)[1].lower()
    stored = hashlib.sha256(data).hexdigest()[:16] + (extension if re.fullmatch(r"\.[a-z0-9]{1,10}", extension)
                                                       else ".img")
    target = os.path.join(store, versions.IMAGES, stored)
    if not os.path.isfile(target):
        make_dirs(os.path.dirname(target))
        with atomic_file(target, "wb") as out:
            out.write(data)
    return f"{versions.IMAGES}/{stored}", os.path.abspath(target)


def _added(entity, image_folder: str, store_path: str) -> _Entity:
    image = entity.images[0] if entity.images else None
    stored, source = _copy_image(label(entity), image, image_folder, store_path) if image else (None, None)
    return _Entity(entity.qid, entity.qid, entity.name, entity.attr, source, stored, entity.credit, entity.aliases)


def _updated(store: KBStore, position: int, change: dict, image_folder: str) -> _Entity:
    raw, old = store.raw_record(position), store.record(position)
    name = change.get("name", old["name"])
    description = change.get("description", old["description"]) or ""
    if "image" not in change:  # kept: its file must still be readable, or the entity would lose it silently
        source, stored = old["image"], raw.get("image")
        credit = change.get("image_credit", raw.get("image_credit"))
        if source and not os.path.isfile(source):
            raise StoreError(f"entity {change['id']!r}: its image {os.path.basename(source)} is no longer readable; "
                             f"give \"image\" again, or null to remove it")
    elif change["image"] is None:
        source = stored = credit = None
    else:
        stored, source = _copy_image(repr(change["id"]), change["image"], image_folder, store.path)
        credit = change.get("image_credit")  # a new picture: the old one's credit does not apply
    return _Entity(change["id"], old["qid"], name, description, source, stored, credit, raw.get("aliases"))


def _encode(model, entities: list, batch_size: int, device=None) -> dict:
    return encode_terms(model, [entity_text(e.name, e.description) for e in entities],
                        [e.image_source for e in entities], batch_size, device)


def _check_ids(store: KBStore, add: list, update: list, remove: list) -> dict:
    """-> {id: position} of the updated and removed entities; refuses unknown, duplicate or taken ids."""
    seen = set()
    for e in add:
        if not e.qid:
            raise StoreError(f"entity {e.name!r} has no id: give each entity an \"id\" (or \"qid\") field")
    for ident in [e.qid for e in add] + [c["id"] for c in update] + list(remove):
        if ident in seen:
            raise StoreError(f"the id {ident!r} appears twice in the edit")
        seen.add(ident)
    for e in add:
        if store.find(e.qid) is not None:
            raise StoreError(f"cannot add {e.qid!r}: the KB already has an entity with that id (use 'kb update')")
    positions = {}
    for ident in [c["id"] for c in update] + list(remove):
        positions[ident] = store.find(ident)
        if positions[ident] is None:
            raise StoreError(f"no entity with the id {ident!r} in the KB")
    return positions


def _summary(op: str, **ids) -> dict:
    summary = {"op": op, "at": now()}
    for key, values in ids.items():
        summary[key] = list(values)[:LISTED]
        if len(values) > LISTED:
            summary[f"{key}_more"] = len(values) - LISTED
    return summary


def _next_manifest(manifest: dict, summary: dict, digest_of: dict, **changes) -> dict:
    digest = json.dumps({"kb": manifest["fingerprints"]["kb"], "edit": summary, **digest_of}, sort_keys=True)
    return dict(manifest, **changes, kb_version=manifest["kb_version"] + 1,
                fingerprints=dict(manifest["fingerprints"], kb=hashlib.sha256(digest.encode()).hexdigest()[:32]),
                history=(manifest.get("history", []) + [summary])[-HISTORY:])


def _writable(path: str) -> KBStore:
    store = KBStore.load(path)  # a missing or damaged store is reported before anything is locked
    if store.format_version < versions.VERSION:
        raise StoreError(f"{path}: this store is in format {store.format_version}; convert it once with "
                         f"'python -m mimic kb upgrade --kb {path}' (it is rewritten, compressed), then edit it")
    return store


def edit_store(path: str, model=None, add=(), update=(), remove=(), image_folder: str = ".", batch_size: int = 32,
               device=None, wait: float = DEFAULT_WAIT) -> dict:
    """Apply one edit (any mix of add / update / remove) and return the new manifest.
    add: Entities (with qid); update: changes as `read_changes` gives; remove: ids."""
    add, update, remove = list(add), list(update), [str(i) for i in remove]
    if not (add or update or remove):
        raise StoreError("nothing to change")
    if (add or update) and model is None:
        raise StoreError("adding or updating entities needs the store's model")
    _writable(path)
    with versions.writing(path, wait):
        store = _writable(path)  # the latest version: no other writer can publish now
        manifest = store.manifest
        if add or update:
            store.check_model(model_fingerprints(model))
        positions = _check_ids(store, add, update, remove)
        changed = ([_updated(store, positions[c["id"]], c, image_folder) for c in update]
                   + [_added(e, image_folder, store.path) for e in add])
        if len(store) - len(update) - len(remove) + len(changed) == 0:
            raise StoreError("the edit would leave the KB empty")
        segments = list(manifest["segments"])
        if changed:
            name = segment_name(manifest["kb_version"] + 1)
            with _new_segment(path, name) as folder:
                values = _encode(model, changed, batch_size, device)
                spec = manifest["terms"]
                writer = SegmentWriter(folder, len(changed), spec, create=True)
                writer.put(0, values)
                writer.close()
                write_records(folder, len(changed), (e.record() for e in changed))
                space = retrieval.Space.from_manifest(model.matcher, manifest["retrieval"])
                index = index_segment(Segment(folder, len(changed), spec), space, manifest["retrieval"]["flat_limit"])
            segments.append({"name": name, "count": len(changed), "index": index})
        gone = store.physical([positions[c["id"]] for c in update] + [positions[i] for i in remove])
        removed = manifest.get("removed")
        if len(gone):
            rows = np.union1d(store.removed, gone).astype(np.int64)
            removed = {"file": f"{versions.REMOVED}/{segment_name(manifest['kb_version'] + 1)}.npy",
                       "count": int(len(rows))}
            make_dirs(os.path.join(path, versions.REMOVED))
            with atomic_file(os.path.join(path, removed["file"]), "wb") as f:
                np.save(f, rows)
        summary = _summary("edit", added=[e.qid for e in add], updated=[c["id"] for c in update], removed=remove)
        new = _next_manifest(manifest, summary, {"records": [e.record() for e in changed]},
                             count=len(store) - len(gone) + len(changed), segments=segments, removed=removed)
        versions.publish(path, new)
    return new


def _rewrite(path: str, model, precision, op: str, wait: float, progress: bool, accept) -> dict:
    """Rewrite the store as one segment of its live entities (kept order and ids), with a fresh
    retrieval index; images no record names are removed. precision=None keeps the store's."""
    KBStore.load(path)
    with versions.writing(path, wait):
        store = KBStore.load(path)
        accept(store)
        precision = store.manifest["precision"] if precision is None else precision
        if precision not in PRECISIONS:
            raise StoreError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
        store.check_model(model_fingerprints(model))
        manifest = store.manifest
        name = segment_name(manifest.get("kb_version", 1) + 1)
        names = store.term_names()
        spec = {n: {"codec": codec_of(n, precision), "shape": list(store.segments[0].spec[n]["shape"])} for n in names}
        # coded values are copied when no codec changes: coding twice could move them (centred4)
        copy = all({n: segment.spec[n] for n in names} == spec for segment in store.segments)
        images = set()
        with _new_segment(path, name) as folder:
            writer = SegmentWriter(folder, len(store), spec, create=True)
            for position, values in store.scan(names, coded=copy):
                if copy:
                    for term, coded in values.items():
                        writer.put_coded(position, term, coded)
                else:
                    writer.put(position, values)
            writer.close()
            write_records(folder, len(store), _kept_records(store, images))
            segment = Segment(folder, len(store), spec)
            space = measure_space(model.matcher, segment)
            flat_limit = manifest.get("retrieval", {}).get("flat_limit", retrieval.FLAT_LIMIT)
            index = index_segment(segment, space, flat_limit, progress)
        new = {key: value for key, value in manifest.items() if key not in ("terms", "segments", "removed")}
        new.update(version=versions.VERSION, precision=precision, terms=spec, derived=list(DERIVED),
                   kb_version=manifest.get("kb_version", 1) + 1,
                   history=(manifest.get("history", []) + [_summary(op)])[-HISTORY:],
                   retrieval={**space.to_manifest(), "flat_limit": flat_limit},
                   segments=[{"name": name, "count": len(store), "index": index}], removed=None)
        versions.publish(path, new)
        _remove_unnamed_images(path, images)
    return new


@contextlib.contextmanager
def _new_segment(path: str, name: str):
    """The folder a new segment is written in, renamed to `name` when the block ends; removed when it
    fails (a killed writer's is removed by the next one)."""
    folder = os.path.join(path, versions.SEGMENTS, f".tmp-{name}")
    try:
        yield folder
        os.rename(folder, os.path.join(path, versions.SEGMENTS, name))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _kept_records(store: KBStore, named: set):
    """The records of every live entity, in order, for a rewritten store; an image inside the store is
    named relative to it (it travels with the store) and its file name added to `named`."""
    root = os.path.realpath(store.path)
    for position in range(len(store)):
        raw = store.raw_record(position)
        image = raw.get("image")
        if isinstance(image, str) and image and not os.path.isabs(image):  # a copy kb add/update made
            named.add(os.path.basename(image))
        elif image and os.path.commonpath([root, os.path.realpath(image)]) == root:
            image = os.path.relpath(os.path.realpath(image), root)
            named.add(os.path.basename(image))
        yield {"id": record_id(raw), "qid": raw.get("qid"), "name": raw.get("name"),
               "description": raw.get("description"), "image": image, "image_credit": raw.get("image_credit"),
               "aliases": raw.get("aliases")}


def _remove_unnamed_images(path: str, named: set):
    """Remove the copies `kb add/update` made that no record names any more: files with the names
    `_copy_image` gives, in the store's own images/ folder; never through a link, nothing else."""
    folder = os.path.join(path, versions.IMAGES)
    if os.path.islink(folder) or not os.path.isdir(folder):
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name not in named and COPIED_IMAGE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.remove(entry.path)


def compact_store(path: str, model, wait: float = DEFAULT_WAIT, progress: bool = True) -> dict:
    """`kb compact`: one segment, no removed rows, a retrieval index chosen for the KB's size now."""
    def accept(store):
        if store.format_version < versions.VERSION:
            raise StoreError(f"{path}: format {store.format_version}; run 'kb upgrade' instead")
    return _rewrite(path, model, None, "compact", wait, progress, accept)


def upgrade_store(path: str, model, precision: str = DEFAULT_PRECISION, wait: float = DEFAULT_WAIT,
                  progress: bool = True) -> dict:
    """`kb upgrade`: a format-1 store rewritten in format 2 (compressed at `precision`), in place."""
    def accept(store):
        if store.format_version >= versions.VERSION:
            raise StoreError(f"{path}: already in format {versions.VERSION}; nothing to upgrade")
    return _rewrite(path, model, precision, "upgrade", wait, progress, accept)
