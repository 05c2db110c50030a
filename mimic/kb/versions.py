"""Versions of a KB store: one atomic switch, one writer at a time, old files removed after the switch.

A store folder (format 2):
    manifest.json      the current version: its segments, its removal list, fingerprints, counts
    segments/<name>/   immutable segments (mimic/kb/segment.py), shared by the versions that list them
    removed/<name>.npy the rows a version has removed (sorted int64, rows counted across its segments)
    images/            pictures copied in by `kb add/update`, named by their content
    .mimic-el-kb       marks the folder as a store from its first moment (see `check_target`)
    .lock              taken by writers

`manifest.json` is the pointer: a writer builds everything a new version needs under new names, then
replaces manifest.json with os.replace, the one atomic step (after an fsync of the file and before one
of the folder). A reader reads manifest.json once and opens only what it names, which no writer ever
changes: it sees the old version or the new one, never a mix. Files no version names any more are
removed after the switch; a reader that was opening them at that moment finds one missing and starts
again from the new manifest (`KBStore.load` retries). A writer killed at any moment leaves the old
manifest in place, hence the old version, whole; its half-written files are removed by the next writer.

Writers (encode-kb, merge, every `kb` command) hold `.lock` (filelock: an OS lock, released when the
process dies, so a killed writer never leaves the store locked). A second writer waits for it, up to a
timeout, then gives up with a message saying so; it never overwrites the first one's work.
"""
import contextlib
import json
import os
import re
import shutil

import filelock

from ..fileio import OutputError, make_dirs, refuse_foreign, write_json

FORMAT, WORK_FORMAT = "mimic-el-kb", "mimic-el-kb-partial"
VERSION = 2  # format 1: terms/*.npy at the top of the folder (read, and converted by `kb upgrade`)
MANIFEST, MARKER, LOCK = "manifest.json", ".mimic-el-kb", ".lock"
WORK_MARKER = ".mimic-el-partial"  # marks an encoding's work folder from its first moment
SEGMENTS, REMOVED, IMAGES = "segments", "removed", "images"
DEFAULT_WAIT = 600.0  # seconds a writer waits for another one


class StoreError(ValueError):
    """A KB store that cannot be used (missing, damaged, or made with another model or KB)."""


class StoreChanged(StoreError):
    """A writer published a new version (and collected this one's files) while it was being opened."""


# what a manifest may name inside the store: one plain name, never a path out of its folder
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def plain_name(path: str, what: str, name, folder: str = None) -> str:
    """`name`, a file or folder the manifest of the store at `path` names, if it is a plain name (with
    `folder`: "<folder>/<plain name>", a file of that folder of the store)."""
    plain = name
    if folder is not None and isinstance(name, str):
        inside, _, plain = name.partition("/")
        plain = plain if inside == folder else None
    if not isinstance(plain, str) or not PLAIN_NAME.fullmatch(plain) or plain == "..":
        raise StoreError(f"{os.path.join(path, MANIFEST)}: damaged manifest ({what} {name!r} is not a name this "
                         f"store gives); re-encode the KB with encode-kb")
    return name


REQUIRED = {1: ("count", "terms", "fingerprints"),
            2: ("count", "terms", "fingerprints", "precision", "segments", "kb_version")}


def read_manifest(path: str) -> dict:
    """The current manifest of the store at `path`, checked; StoreError says what is wrong."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        if os.path.isdir(path.rstrip("/") + ".partial"):
            raise StoreError(f"{path}: encoding has not finished (resume it with the same encode-kb command)")
        raise StoreError(f"{path}: no such KB store folder")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        if os.path.isdir(path.rstrip("/") + ".partial") or os.path.exists(os.path.join(path, MARKER)):
            raise StoreError(f"{path}: encoding has not finished (resume it with the same encode-kb command)")
        raise StoreError(f"{path}: not a KB store (no {MANIFEST})")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{manifest_path}: damaged manifest ({e}); re-encode the KB with encode-kb")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{path}: not a mimic-el KB store")
    version = manifest.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise StoreError(f"{path}: written by a newer mimic-el (store format {version}); update mimic-el")
    for key in REQUIRED.get(version, REQUIRED[1]):
        if key not in manifest:
            raise StoreError(f"{manifest_path}: damaged manifest (it has no {key!r}); re-encode the KB with "
                             f"encode-kb")
    if not isinstance(manifest["count"], int) or not isinstance(manifest["terms"], dict):
        raise StoreError(f"{manifest_path}: damaged manifest ('count' or 'terms' has the wrong type)")
    return manifest


def is_store(path: str) -> bool:
    """Does `path` hold a mimic-el store (any format), or the beginning of one?"""
    if os.path.exists(os.path.join(path, MARKER)):
        return True
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def is_partial(path: str) -> bool:
    """Does `path` hold an encoding's work folder (`<out>.partial`, or a shard), or the beginning of one?"""
    if os.path.exists(os.path.join(path, WORK_MARKER)):
        return True
    try:
        with open(os.path.join(path, "partial.json"), encoding="utf-8") as f:
            return json.load(f).get("format") == WORK_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _refusal(path: str, what: str, entries: list, not_folder: str) -> StoreError:
    if entries is None:
        return StoreError(not_folder)
    shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    return StoreError(f"{path} is not {what} (it holds {shown}); it was left untouched: choose another --out, "
                      f"or move that folder away yourself")


def check_target(path: str):
    """Refuse to write a store into a folder that is neither a store nor empty: never replace user data."""
    refuse_foreign(path, is_store, lambda entries: _refusal(
        path, "a mimic-el KB store", entries, f"{path} exists and is not a folder; it was left untouched: "
                                              f"choose another --out"))


def check_work_target(path: str):
    """The same for an encoding's work folder (`<out>.partial`, or a shard folder)."""
    refuse_foreign(path, is_partial, lambda entries: _refusal(
        path, "an unfinished mimic-el encoding", entries, f"{path} exists and is not a folder; it was left untouched"))


def create(path: str):
    """Make `path` a store folder (marked as one before anything else is written into it)."""
    check_target(path)
    make_dirs(os.path.join(path, SEGMENTS))
    marker = os.path.join(path, MARKER)
    if not os.path.exists(marker):
        with open(marker, "w", encoding="utf-8") as f:
            f.write("mimic-el KB store (see manifest.json)\n")


@contextlib.contextmanager
def writing(path: str, wait: float = DEFAULT_WAIT):
    """Hold the store's writer lock (creating the store folder if needed) for one edit or encoding."""
    create(path)
    with _locked(os.path.join(path, LOCK), wait, f"{path}: another command is changing this KB store"):
        yield


@contextlib.contextmanager
def working(path: str, wait: float = DEFAULT_WAIT):
    """Hold the lock of an encoding's work folder (creating it, marked as one, if needed): one encoding
    writes a work folder at a time."""
    check_work_target(path)
    make_dirs(path)
    marker = os.path.join(path, WORK_MARKER)
    if not os.path.exists(marker):
        with open(marker, "w", encoding="utf-8") as f:
            f.write("mimic-el: an unfinished encode-kb (see partial.json)\n")
    with _locked(os.path.join(path, LOCK), wait, f"{path}: another encode-kb is writing this folder"):
        yield


@contextlib.contextmanager
def _locked(lock_file: str, wait: float, busy: str):
    lock = filelock.FileLock(lock_file)
    try:
        lock.acquire(timeout=wait)
    except filelock.Timeout:
        raise StoreError(f"{busy} (waited {wait:g} s); run this one again when it has finished") from None
    try:
        yield
    finally:
        lock.release()


def _fsync_folder(path: str):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(path: str, manifest: dict):
    """Make `manifest` the store's current version (the one atomic step), then remove what no version
    needs any more. Call while holding `writing(path)`."""
    for segment in manifest.get("segments", []):
        _fsync_folder(os.path.join(path, SEGMENTS, segment["name"]))
    _fsync_folder(os.path.join(path, SEGMENTS))
    write_json(os.path.join(path, MANIFEST), manifest)
    _fsync_folder(path)
    collect_garbage(path, manifest)


def collect_garbage(path: str, manifest: dict):
    """Remove the segments and removal lists `manifest` does not name, format-1 files once the store
    is format 2, and what killed writers left behind. Only writers call it, under the lock."""
    keep = {s["name"] for s in manifest.get("segments", [])}
    removed = (manifest.get("removed") or {}).get("file")
    for folder, kept in ((SEGMENTS, keep), (REMOVED, {os.path.basename(removed)} if removed else set())):
        full = os.path.join(path, folder)
        for entry in os.listdir(full) if os.path.isdir(full) else []:
            if entry not in kept:
                remove(os.path.join(full, entry))
    if manifest.get("version") == VERSION:
        remove(os.path.join(path, "terms"))  # format 1, converted
        remove(os.path.join(path, "entities.jsonl"))
    for entry in os.listdir(path):
        if entry.startswith(f".{MANIFEST}.") and entry.endswith(".tmp"):
            remove(os.path.join(path, entry))


def remove(path: str):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise OutputError(e.errno, f"cannot remove {path}: {e.strerror}") from e
