"""Atomic file and folder writes: a reader sees the old version or the new one, never half of one.

What they create follows the umask, as `open` would (0644 files and 0755 folders under the usual umask
022): a store or a checkpoint written by one user stays readable to the others it is shared with.
Temporary names are made here rather than by tempfile.mkstemp / mkdtemp, which make them private (0600,
0700), a mode the rename would then carry into place.
"""
import contextlib
import errno
import json
import os
import secrets
import shutil
import stat


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


def _unique(folder: str, prefix: str, suffix: str, make) -> tuple:
    """A new name `folder/prefix<random>suffix`, created by `make(path)`, which must fail if it exists.
    -> (the path, what `make` returned)."""
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            return path, make(path)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", os.path.join(folder, prefix + "*" + suffix))


def _new_file(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)  # umask applies


def _new_folder(path: str):
    os.mkdir(path, 0o777)  # the umask applies


@contextlib.contextmanager
def atomic_file(path, mode="w", **kwargs):
    """Write to a temporary file beside `path`, then rename it into place."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        tmp, fd = _unique(folder, f".{os.path.basename(path)}.", ".tmp", _new_file)
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


# The file inside every folder atomic_folder sets aside (the one it builds, the one it replaces) until it is
# done: a crash leaves `.<name>.<random>.tmp` or `.old` folders, and only those holding it are cleaned up
# after. A user's own `.out.archive.old/` or `.best.mydata.tmp/` is never touched.
MARKER = ".mimic-el-unfinished"


def _mark(folder: str) -> bool:
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        f.write("mimic-el was writing this folder; the next write of it removes or restores it\n")
    return True


def _unmark(folder: str):
    marker = os.path.join(folder, MARKER)
    if os.path.isfile(marker) and not os.path.islink(marker):
        os.remove(marker)


def _ours(folder: str) -> bool:
    marker = os.path.join(folder, MARKER)
    return (os.path.isdir(folder) and not os.path.islink(folder) and os.path.isfile(marker)
            and not os.path.islink(marker))


def _leftovers(path: str, suffix: str) -> list:
    """The folders an earlier atomic_folder(path) left with this suffix: its name pattern and its marker."""
    parent, name = os.path.dirname(path), os.path.basename(path)
    return sorted(os.path.join(parent, e) for e in os.listdir(parent)
                  if e.startswith(f".{name}.") and e.endswith(suffix) and _ours(os.path.join(parent, e)))


def _recover(path: str):
    """Clean up after an earlier write of `path` killed half-way. Killed between its two renames, it left
    the previous folder aside as `.old` and nothing at `path`: put it back. Then remove what is left."""
    olds = _leftovers(path, ".old")
    if olds and not os.path.lexists(path):
        os.rename(olds[-1], path)
        _unmark(path)
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
        if os.path.isdir(path):
            _unmark(path)  # ours (just checked): left by a write killed just before or after a rename
        tmp, _ = _unique(parent, f".{os.path.basename(path)}.", ".tmp", _new_folder)
        _mark(tmp)
    except OutputError:
        raise
    except OSError as e:
        raise explain(path, e) from e
    old = marked = None
    try:
        yield tmp
        if os.path.exists(path):
            marked = _mark(path)  # set aside, it must be recognised as ours (and put back) if we are killed now
            old, _ = _unique(parent, f".{os.path.basename(path)}.", ".old", lambda o: _rename_to_new(path, o))
        os.rename(tmp, path)
        _unmark(path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old and not os.path.lexists(path):  # the new one did not go into place: the previous one goes back
            os.rename(old, path)
        if marked and os.path.isdir(path):
            _unmark(path)
        raise explain(path, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def mode_of_folder(path: str, folder: str):
    """Give `path`, a file another library wrote privately (safetensors: 0600) into `folder`, which
    atomic_folder made under the umask, the mode `open` would have given it: the folder's, without the
    execute bits."""
    try:
        os.chmod(path, stat.S_IMODE(os.stat(folder).st_mode) & 0o666)
    except OSError as e:
        raise explain(path, e) from e


def _rename_to_new(source: str, target: str):
    """os.rename, never over an existing entry (it would replace an empty folder)."""
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "exists", target)
    os.rename(source, target)


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
