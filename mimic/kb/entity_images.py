"""Where an entity's picture may come from: a file inside the images folder the user named, nothing else.

An entity file says `"image": "name.jpg"`; it is looked up inside `--images`. A name that leads out of
that folder (`../../x`, an absolute path, or a symlink pointing elsewhere) is refused, naming the entity:
otherwise any readable file (a private key...) could be copied into a store and travel with it.
"""
import os

from ..model.images import ImageError, open_image
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


def checked_image(who: str, name: str, folder: str) -> str:
    """image_path, and the file must exist and decode as an image (for edits: a handful of entities)."""
    path = image_path(who, name, folder)
    if not os.path.isfile(path):
        raise StoreError(f"entity {who}: image file {name!r} not found in {folder}")
    try:
        open_image(path)
    except ImageError as e:
        raise StoreError(f"entity {who}: its image cannot be used: {e}")
    return path


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
