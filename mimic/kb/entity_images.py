"""Where an entity's picture may come from: a file inside the images folder the user named, nothing else.

An entity file says `"image": "name.jpg"`; it is looked up inside `--images`. A name that leads out of
that folder (`../../x`, an absolute path, or a symlink pointing elsewhere) is refused, naming the entity:
otherwise any readable file (a private key...) could be copied into a store and travel with it.

`kb add/update` copy the picture into the store: `read_image` opens the file once, checks the file it
opened (a regular file, inside the folder, not too large) and reads it from that handle, so that a file
swapped for a symlink between the check and the copy is never what gets copied.
"""
import os
import stat

from ..model.images import MAX_BYTES, ImageError, open_image
from .versions import StoreError


def label(entity) -> str:
    """How messages name an entity: its id, else its name."""
    return repr(entity.qid) if getattr(entity, "qid", None) else repr(entity.name)


def image_path(who: str, name: str, folder: str) -> str:
    """The real path of the image `name` of the entity `who` (a label), which must lie inside `folder`."""
    root = os.path.realpath(folder or ".")
    real = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, real]) != root:
        raise StoreError(f"entity {who}: its image {name!r} is outside the images folder {folder}; "
                         f"only files inside the folder given with --images are used")
    return real


def _opened_path(fd: int):
    """Where the file open at `fd` lies (Linux's /proc), or None where the system does not say."""
    try:
        return os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def read_image(who: str, name: str, folder: str) -> bytes:
    """The bytes of the image `name` of the entity `who`, read from one handle whose file is checked: a
    regular file inside `folder`, at most MAX_BYTES, that decodes as an image (for edits: a handful of
    entities)."""
    path = image_path(who, name, folder)
    root = os.path.realpath(folder or ".")
    try:  # no symlink at the end (it could have been swapped in since), no wait on a FIFO
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise StoreError(f"entity {who}: image file {name!r} not found in {folder}") from None
    except OSError as e:
        raise StoreError(f"entity {who}: image file {name!r} cannot be opened ({e.strerror}); only regular files "
                         f"inside {folder} are used") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"entity {who}: image {name!r} is not a regular file; only regular files inside "
                             f"{folder} are used")
        opened = _opened_path(f.fileno())
        if opened is not None and os.path.commonpath([root, opened]) != root:
            raise StoreError(f"entity {who}: its image {name!r} is outside the images folder {folder}; only files "
                             f"inside the folder given with --images are used")
        if info.st_size > MAX_BYTES:
            raise StoreError(f"entity {who}: its image {name!r} is larger than {MAX_BYTES // 2**20} MB")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:  # it grew since fstat
        raise StoreError(f"entity {who}: its image {name!r} is larger than {MAX_BYTES // 2**20} MB")
    try:
        open_image(data)
    except ImageError as e:  # said of "the image" (bytes): name the file
        reason = str(e).removeprefix("the image: ")
        raise StoreError(f"entity {who}: its image cannot be used: {os.path.basename(name)}: {reason}") from None
    return data


def check_all_inside(entities: list, folder: str):
    """Every entity's first image must be inside `folder` (encode-kb: paths only; a missing or damaged
    file is encoded as the zero image and counted in the log, as before)."""
    bad = []
    for entity in entities:
        if entity.images:
            try:
                image_path(label(entity), entity.images[0], folder)
            except StoreError as e:
                bad.append(str(e))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise StoreError(bad[0] + more)
