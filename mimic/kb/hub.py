"""KB stores on the Hugging Face Hub, as dataset repos: open one by name, publish one with a dataset card.

    resolve_store("owner/name")             -> the local snapshot of that dataset repo (downloaded once into
                                               the Hugging Face cache); a local folder of that name wins
    stage_kb(STORE, folder, "owner/name")   -> the folder `push_kb` uploads: the store's current version,
                                               its pictures inside it, README.md (the dataset card)
    push_kb(STORE, "owner/name")            -> creates the dataset repo if needed, then one upload

A store names its pictures by absolute path (encode-kb) or inside itself (kb add): the staged copy holds
every picture under images/ and its records name them relative to the store, so the download is
self-contained. Local paths never go into the published files.
"""
import collections
import hashlib
import logging
import os
import re
import shutil

from ..data.hubrepo import HubError, check_repo_id, is_repo_name, public, publish
from ..fileio import write_json
from . import versions
from .segment import Records, line_offsets, record_id, write_records
from .store import KBStore, StoreError

log = logging.getLogger(__name__)
CARD = "README.md"


def resolve_store(spec: str) -> str:
    """A local store folder as it is; "owner/name" (no such folder here) from the Hub's dataset repos, or
    from the Hugging Face cache offline."""
    if not isinstance(spec, str) or not is_repo_name(spec):
        return spec
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(spec, repo_type="dataset")
    except Exception as e:  # the hub client raises many kinds; all mean "not available here"
        raise StoreError(f"{spec}: no such store folder here, and the Hub dataset {spec} could not be downloaded: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _copy_picture(source: str, stage: str, copied: dict):
    """A picture into the staged images/ under its content hash -> its path relative to the store, or None
    when the file is gone (the entity is then published without a picture)."""
    if source in copied:
        return copied[source]
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError:
        copied[source] = None
        return None
    extension = os.path.splitext(source)[1].lower()
    name = hashlib.sha256(data).hexdigest()[:16] + (extension if extension[1:].isalnum() and len(extension) <= 6
                                                    else ".img")
    target = os.path.join(stage, versions.IMAGES, name)
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
    copied[source] = f"{versions.IMAGES}/{name}"
    return copied[source]


def _staged_records(store: KBStore, folder: str, stage: str, copied: dict, stats: dict, start: int, removed: set):
    """Every record of one segment (removed rows too: rows keep their numbers), pictures made relative; the
    live ones counted in `stats`."""
    path = os.path.join(folder, "entities.jsonl")
    offsets = line_offsets(path)
    for row, record in enumerate(Records(path, offsets), start):
        if row in removed:  # removed: only its id is published (the row keeps its number), nothing it said
            record = {"id": record_id(record), "qid": None, "name": "", "description": "", "image": None}

        image = record.get("image")
        if isinstance(image, str) and image:
            source = image if os.path.isabs(image) else os.path.join(store.path, image)
            record["image"] = _copy_picture(source, stage, copied)
        if not record.get("image"):
            record["image"], record["image_credit"] = None, None
        if row in removed:
            yield record
            continue
        credit = record.get("image_credit") if isinstance(record.get("image_credit"), dict) else {}
        stats["licences"][credit.get("licence") or ("unknown" if record["image"] else "no picture")] += 1
        stats["commons"] += bool(credit.get("source"))
        stats["qids"] += bool(record.get("qid"))
        yield record


def dataset_card(manifest: dict, repo_id: str, stats: dict) -> str:
    """README.md of the dataset repo: what the KB holds, where from, the model, the licences, how to use it."""
    from huggingface_hub import DatasetCard, DatasetCardData
    count, source = manifest["count"], manifest.get("source") or {}
    model = source.get("checkpoint") or source.get("init") or "unrecorded"
    licences = sorted(stats["licences"].items(), key=lambda kv: -kv[1])
    size = next(c for n, c in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                               (1e7, "1M<n<10M"), (float("inf"), "n>10M")) if count < n)
    data = DatasetCardData(license="other", pretty_name=repo_id, size_categories=[size],
                           tags=["mimic-el", "entity-linking", "knowledge-base", "multimodal"]
                           + (["wikidata"] if stats["qids"] else []))
    lines = [f"# {repo_id}", "",
             f"A knowledge base of {count} entities pre-encoded for MIMIC, the multimodal entity linker of Luo et al. "
             "(KDD 2023), with mimic-el: every entity's name, description and picture, with the entity-side terms "
             "of the three units already computed, and a retrieval index.", "",
             "## Use it", "", "```bash",
             f"python -m mimic link --kb {repo_id} --sentence \"Hopper painted Nighthawks.\" --mention Hopper",
             f"MIMIC_KB={repo_id} python app.py   # the demo, from the mimic-el repository", "```", "",
             "```python", "from mimic import Linker", f"linker = Linker.open(\"{repo_id}\")",
             "linker.link(\"Hopper painted Nighthawks in 1942.\", \"Hopper\", top_k=5)", "```", "",
             "It is downloaded once into the Hugging Face cache. The model must be the one it was encoded with "
             "(checked by fingerprint).", "",
             "## Contents", "", "| | |", "|---|---|", f"| entities | {count} |",
             f"| with a Wikidata QID | {stats['qids']} |",
             f"| pictures from Wikimedia Commons | {stats['commons']} |",
             f"| encoded | {_cell(manifest.get('created'))} (KB version {manifest.get('kb_version')}) |",
             f"| model | `{_cell(model)}` |", f"| encoder | `{_cell(source.get('encoder'))}` |",
             f"| image mode | {_cell(source.get('image_mode'))} |", f"| precision | {_cell(manifest.get('precision'))} |",
             "", "## Licences", "",
             "Names and descriptions from Wikidata are CC0. Each picture keeps its own licence: its record's "
             "`image_credit` gives the licence, its URL, the artist and the file's page, which must be shown with "
             "the picture (mimic-el's page does).", "", "| licence | pictures |", "|---|---|"]
    lines += [f"| {_cell(name)} | {n} |" for name, n in licences] + [""]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _cell(value) -> str:
    text = re.sub(r"[\s|<>`\\]+", " ", str(public(value))).strip()
    return text[:80]


def stage_kb(path: str, folder: str, repo_id: str) -> str:
    """Write the folder `push_kb` uploads into `folder` (absent or empty). Returns `folder`."""
    check_repo_id(repo_id, "dataset")
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise HubError(f"{folder} exists and is not an empty folder; choose a new one")
    store = KBStore.load(path)
    if store.format_version < 2:
        raise StoreError(f"{path}: a format-1 store; convert it first with 'python -m mimic kb upgrade --kb {path}'")
    manifest = store.manifest
    stats = {"licences": collections.Counter(), "commons": 0, "qids": 0}
    copied, removed, start = {}, set(store.removed.tolist()), 0
    os.makedirs(folder, exist_ok=True)
    with versions.writing(path):  # no edit collects this version's files while they are copied
        for segment in manifest["segments"]:
            source = os.path.join(path, versions.SEGMENTS, segment["name"])
            target = os.path.join(folder, versions.SEGMENTS, segment["name"])
            shutil.copytree(source, target)
            records = list(_staged_records(store, source, folder, copied, stats, start, removed))
            write_records(target, segment["count"], records)
            start += segment["count"]
        if manifest.get("removed"):
            target = os.path.join(folder, manifest["removed"]["file"])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(path, manifest["removed"]["file"]), target)
    published = public({k: v for k, v in manifest.items() if k != "history"})  # history: who changed what, when
    write_json(os.path.join(folder, versions.MANIFEST), published)
    with open(os.path.join(folder, versions.MARKER), "w", encoding="utf-8") as f:
        f.write("")
    lost = sum(1 for v in copied.values() if v is None)
    if lost:
        log.warning("%d pictures named by the store are gone: those entities are published without one", lost)
    with open(os.path.join(folder, CARD), "w", encoding="utf-8") as f:
        f.write(dataset_card(published, repo_id, stats))
    return folder


def push_kb(path: str, repo_id: str, private: bool = False, token: str = None) -> str:
    """Publish a store as the Hub dataset repo `repo_id` (created if needed). Returns the repo's URL."""
    return publish(repo_id, "dataset", lambda folder: stage_kb(path, folder, repo_id), private, token,
                   "Upload KB store (mimic-el)")

