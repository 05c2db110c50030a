"""Atomic file and folder writes: a reader sees the old version or the new one, never half of one."""
import contextlib
import errno
import json
import os
import shutil
import tempfile


class OutputError(OSError):
    """An output that cannot be written (read-only folder, full disk), said plainly."""

    def __str__(self):
        return self.strerror


def explain(path, e: OSError) -> OutputError:
    if e.errno == errno.ENOSPC:
        why = "the disk is full"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder is not writable"
    else:
        why = e.strerror or str(e)
    return OutputError(e.errno, f"cannot write {path}: {why}")


def make_dirs(path):
    """os.makedirs, with an unwritable place or a full disk said plainly."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise explain(path, e) from e


@contextlib.contextmanager
def atomic_file(path, mode="w", **kwargs):
    """Write to a temporary file beside `path`, then rename it into place."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise explain(path, e) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, data, indent=2):
    with atomic_file(path, encoding="utf-8") as f:
        json.dump(data, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path, rows):
    with atomic_file(path, encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _leftovers(path: str, suffix: str) -> list:
    parent, name = os.path.dirname(path), os.path.basename(path)
    return sorted(os.path.join(parent, e) for e in os.listdir(parent)
                  if e.startswith(f".{name}.") and e.endswith(suffix))


def _recover(path: str):
    """Clean up after an earlier write of `path` killed half-way. Killed between its two renames, it left
    the previous folder aside as `.old` and nothing at `path`: put it back. Then remove what is left."""
    olds = _leftovers(path, ".old")
    if olds and not os.path.exists(path):
        os.rename(olds[-1], path)
        olds = olds[:-1]
    for leftover in olds + _leftovers(path, ".tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


def refuse_foreign(path, recognised, refusal):
    """Raise refusal(entries) unless `path` is absent, an empty folder or a folder `recognised(path)`
    accepts (None: any folder): never write over what is not ours. entries is None when `path` is not
    a folder, else what it holds."""
    if not os.path.lexists(path):
        return
    entries = os.listdir(path) if os.path.isdir(path) else None
    if entries is None or (entries and recognised is not None and not recognised(path)):
        raise refusal(entries)


@contextlib.contextmanager
def atomic_folder(path, replaceable=None):
    """Build a folder under a temporary name; on success it replaces `path` (two renames, and the previous
    folder is put back if a crash falls between them). `replaceable(path)` says whether an existing folder
    is one this code may replace (e.g. a checkpoint folder): any other is refused, never touched."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        _recover(path)
        refuse_foreign(path, replaceable, lambda entries: OutputError(
            errno.EEXIST, f"{path} exists and is not a folder this command writes; it was left untouched: "
                          f"choose another output, or move it away yourself"))
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OutputError:
        raise
    except OSError as e:
        raise explain(path, e) from e
    try:
        yield tmp
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".old")
            os.rmdir(old)
            os.rename(path, old)
        os.rename(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise explain(path, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def reserve(path: str):
    """Allocate the whole of a (sparse) file now: on a full disk this fails with a message, where writing
    into a memory map of it later would kill the process (SIGBUS)."""
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # a filesystem that cannot: write as we go
            return
        raise explain(path, e) from e
