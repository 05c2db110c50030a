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


def _explain(path, e: OSError) -> OutputError:
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
        raise _explain(path, e) from e


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
        raise _explain(path, e) from e
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


def _remove_leftovers(path: str):
    """Temporary folders of an earlier write of `path` that was killed before it could clean up."""
    parent, name = os.path.dirname(path), os.path.basename(path)
    for entry in os.listdir(parent):
        if entry.startswith(f".{name}.") and entry.endswith((".tmp", ".old")):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path):
    """Build a folder under a temporary name; on success it replaces `path` in one rename."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_leftovers(path)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise _explain(path, e) from e
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
        raise _explain(path, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
