"""A living KB: add, update and remove entities of a store without re-encoding the rest.

Each edit encodes only the new or changed entities (with the store's own model, checked by
fingerprint), then writes the next version of the store beside it and swaps it in with one rename:
a failure at any point leaves the previous version in place and usable. The manifest's `kb_version`
counts the edits, its KB fingerprint chains the old one with the edit, and `history` lists them.
Images of added or updated entities are copied into the store (`images/`), so it stays whole when
the files it was given go away (a browser upload, a temporary folder).

Rows keep their order: kept entities first, in their old order, then the added ones, so a store
built from A and then given B holds the same rows as one built from A ∪ B.
"""
import datetime
import hashlib
import json
import os
import shutil

import numpy as np

from .encoding import encode_batch
from .fileio import atomic_file, atomic_folder, write_json
from .fingerprint import model_fingerprints
from .matcher import flatten_terms
from .processing import entity_text
from .store import KBStore, StoreError, entity_record, term_dtype

COPY_CHUNK = 8192


def _encode(model, entities: list, image_folder: str, precision: str, batch_size: int, device=None) -> dict:
    parts = []
    for start in range(0, len(entities), batch_size):
        batch = entities[start:start + batch_size]
        images = [os.path.join(image_folder, e.images[0]) if e.images else None for e in batch]
        parts.append(flatten_terms(encode_batch(model, [entity_text(e.name, e.attr) for e in batch], images,
                                                "entity", device)))
    return {name: np.concatenate([p[name].numpy() for p in parts]).astype(term_dtype(name, precision))
            for name in parts[0]}


def _check_ids(existing: dict, add: list, update: list, remove: list):
    seen = set()
    for e in add + update:
        if not e.qid:
            raise StoreError(f"entity {e.name!r} has no id: give each entity an \"id\" (or \"qid\") field")
        if e.qid in seen:
            raise StoreError(f"the id {e.qid!r} appears twice in the edit")
        seen.add(e.qid)
    for e in add:
        if e.qid in existing:
            raise StoreError(f"cannot add {e.qid!r}: the KB already has an entity with that id (use 'kb update')")
    for ident in [e.qid for e in update] + list(remove):
        if ident not in existing:
            raise StoreError(f"no entity with the id {ident!r} in the KB")


def _copy_image(entity, image_folder: str, images_dir: str, final_dir: str) -> str:
    """Copy the entity's image into the store; return the path it will have once the store is in place."""
    if not entity.images:
        return None
    source = os.path.join(image_folder, entity.images[0])
    if not os.path.isfile(source):
        raise StoreError(f"entity {entity.qid!r}: image file {source} not found")
    digest = hashlib.sha256(open(source, "rb").read()).hexdigest()[:12]
    name = f"{digest}{os.path.splitext(source)[1].lower() or '.img'}"
    os.makedirs(images_dir, exist_ok=True)
    shutil.copyfile(source, os.path.join(images_dir, name))
    return os.path.join(final_dir, "images", name)


def edit_store(path: str, model=None, add=(), update=(), remove=(), image_folder: str = ".", batch_size: int = 32,
               device=None) -> dict:
    """Apply one edit (any mix of add / update / remove) and return the new manifest."""
    add, update, remove = list(add), list(update), list(remove)
    if not (add or update or remove):
        raise StoreError("nothing to change")
    store = KBStore.load(path, mmap=True)
    if (add or update) and model is None:
        raise StoreError("adding or updating entities needs the store's model")
    if add or update:
        store.check_model(model_fingerprints(model))
    existing = {e.get("id", e.get("qid") or str(e["index"])): i for i, e in enumerate(store.entities)}
    _check_ids(existing, add, update, remove)
    precision = store.manifest["precision"]
    new_rows = _encode(model, update + add, image_folder, precision, batch_size, device) if add or update else {}
    updated_at = {existing[e.qid]: k for k, e in enumerate(update)}
    removed = {existing[i] for i in remove}
    kept = [i for i in range(len(store.entities)) if i not in removed]
    if not kept and not add:
        raise StoreError("the edit would leave the KB empty")
    final = os.path.abspath(path)
    with atomic_folder(path) as tmp:
        if os.path.isdir(os.path.join(path, "images")):
            shutil.copytree(os.path.join(path, "images"), os.path.join(tmp, "images"))
        os.makedirs(os.path.join(tmp, "terms"))
        count = len(kept) + len(add)
        terms = {}
        for name, spec in store.manifest["terms"].items():
            old = store.arrays[name]
            out = np.lib.format.open_memmap(os.path.join(tmp, "terms", f"{name}.npy"), mode="w+",
                                            dtype=np.dtype(spec["dtype"]), shape=(count, *spec["shape"][1:]))
            for start in range(0, len(kept), COPY_CHUNK):
                rows = kept[start:start + COPY_CHUNK]
                out[start:start + len(rows)] = old[rows]
            for position, i in enumerate(kept):
                if i in updated_at:
                    out[position] = new_rows[name][updated_at[i]]
            if add:
                out[len(kept):] = new_rows[name][len(update):]
            out.flush()
            terms[name] = {"dtype": spec["dtype"], "shape": [count, *spec["shape"][1:]]}
            del out
        records = []
        changed = {e.qid: e for e in update}
        for position, i in enumerate(kept):
            record = dict(store.entities[i], index=position)
            if record.get("id") in changed:
                e = changed[record["id"]]
                record.update(name=e.name, description=e.attr,
                              image=_copy_image(e, image_folder, os.path.join(tmp, "images"), final))
            records.append(record)
        for k, e in enumerate(add):
            e.index = len(kept) + k
            record = entity_record(e, image_folder)
            record["image"] = _copy_image(e, image_folder, os.path.join(tmp, "images"), final)
            records.append(record)
        with atomic_file(os.path.join(tmp, "entities.jsonl"), encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        summary = {"op": "edit", "added": [e.qid for e in add], "updated": [e.qid for e in update],
                   "removed": list(remove),
                   "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        digest = json.dumps({"kb": store.manifest["fingerprints"]["kb"], "edit": summary,
                             "texts": [entity_text(e.name, e.attr) for e in update + add]}, sort_keys=True)
        manifest = dict(store.manifest, count=count, terms=terms, kb_version=store.manifest.get("kb_version", 1) + 1,
                        fingerprints=dict(store.manifest["fingerprints"],
                                          kb=hashlib.sha256(digest.encode()).hexdigest()[:32]),
                        history=store.manifest.get("history", []) + [summary])
        write_json(os.path.join(tmp, "manifest.json"), manifest)
        del store  # release the memory maps of the old version before it is replaced
    return manifest
