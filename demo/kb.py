"""The page's KB: MIMIC_KB, else the demo KB (assets/demo_kb).

MIMIC_KB is a store folder (served as it is), a Hub dataset "owner/name" of one (`kb push-to-hub`;
downloaded once into the Hugging Face cache, a local folder of that name winning), or an entity file
(.json or .jsonl, its pictures in MIMIC_KB_IMAGES, else beside it), which is encoded like the demo KB:
once per (KB, encoder, checkpoint) into a cache folder.

The first start encodes it (progress in the log and in the page); later starts load the cache.
Preparation runs in a background thread so that the page is up at once and says what is happening.
Visitors never change the store: what they add lives in their session (demo/sessions.py). Its operator
edits it with `python -m mimic kb ...`, and the linker picks the new version up at the next request.
"""
import base64
import hashlib
import io
import logging
import os
import threading

from PIL import Image

from mimic.data.hubrepo import is_repo_name
from mimic.data.readers import read_entity_file, read_kb, read_qid2id
from mimic.kb.encode import encode_store
from mimic.kb.fingerprint import file_fingerprint, model_fingerprints
from mimic.kb.hub import resolve_store
from mimic.kb.store import KBStore, StoreError
from mimic.kb.versions import is_store
from mimic.linker import Linker
from mimic.model.images import ImageError, open_image

from .safe_text import without_paths

log = logging.getLogger(__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_KB = os.path.join(ROOT, "assets", "demo_kb")
NO_IMAGE = '<span style="color:#888;font-size:12px">no image</span>'
THUMBNAIL_SIDE = 72
PICTURE_SIDE = 384  # a picture kept for the heatmaps (a session entity's, the last explained pair's)


def cache_root() -> str:
    return os.environ.get("MIMIC_CACHE") or os.path.join(ROOT, "cache")


class DemoKB:
    """The page's KB and its linker, once ready; `status` says where preparation stands, then the KB's name
    and size. `source`: MIMIC_KB's value (None: the environment's, else the demo KB)."""

    def __init__(self, loaded, kb_dir: str = DEMO_KB, source: str = None, images: str = None):
        self.loaded = loaded
        self.kb_dir = kb_dir
        self.source = source if source is not None else (os.environ.get("MIMIC_KB") or "")
        self.images = images if images is not None else (os.environ.get("MIMIC_KB_IMAGES") or "")
        self.name = public_name(self.source)
        self.linker = None
        self.error = None
        self.status = "Preparing the knowledge base..."
        self._thumbs = {}
        self._lock = threading.Lock()
        self._thread = None

    @property
    def ready(self) -> bool:
        return self.linker is not None

    def start(self):
        self._thread = threading.Thread(target=self._prepare, name="prepare-kb", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout=None):
        if self._thread:
            self._thread.join(timeout)
        return self.ready

    def kb_files(self) -> list:
        if self.source:
            return [self.source]
        return [os.path.join(self.kb_dir, "kb_entity.json"), os.path.join(self.kb_dir, "qid2id.json")]

    def store_path(self, fingerprints: dict) -> str:
        kb_files = self.kb_files()
        key = hashlib.sha256((file_fingerprint(*kb_files) + fingerprints["encoder"] + fingerprints["checkpoint"])
                             .encode()).hexdigest()[:16]
        return os.path.join(cache_root(), f"kb-{key}")

    def _prepare(self):
        try:
            fingerprints = self.loaded.fingerprints = model_fingerprints(self.loaded.model)
            if self.source and (is_repo_name(self.source) or is_store(self.source)):
                self.status = f"Opening {self.name}..."
                store = KBStore.load(resolve_store(self.source))  # served as it is: never encoded here
            else:
                path = self.store_path(fingerprints)
                try:
                    store = KBStore.load(path)
                    log.info("KB %s loaded from the cache %s", self.name, path)
                except StoreError:
                    store = self._encode(path)
            self.linker = Linker(self.loaded.model, store, fingerprints=fingerprints)
            self.status = f"Ready: {self.name}, {len(store):,} entities."
        except Exception as e:  # shown in the page instead of a dead app; the paths stay in the log
            log.exception("the KB could not be prepared")
            folders = {cache_root(): "the cache", self.kb_dir: "the KB folder", ROOT: "the app"}
            if self.source and not is_repo_name(self.source):
                folders[os.path.abspath(self.source)] = "the KB"
            if self.images:
                folders[os.path.abspath(self.images)] = "the KB's pictures"
            reason = without_paths(e, folders)
            self.error = f"The knowledge base could not be prepared: {reason}"
            self.status = self.error

    def _encode(self, path: str) -> KBStore:
        if self.source:  # an entity file
            entities = read_entity_file(self.source)
            images = self.images or os.path.dirname(os.path.abspath(self.source))
        else:
            qid2id = read_qid2id(os.path.join(self.kb_dir, "qid2id.json"))
            entities = read_kb(os.path.join(self.kb_dir, "kb_entity.json"), qid2id)
            images = os.path.join(self.kb_dir, "kb_image")
        kb_files = self.kb_files()

        def progress(done, total):
            self.status = f"First start: encoding the knowledge base, {done} of {total} entities..."

        log.info("encoding the KB %s into %s (first start)", self.name, path)
        encode_store(self.loaded.model, entities, images, path,
                     file_fingerprint(*kb_files), batch_size=16, chunk_size=64, restart=True, on_progress=progress)
        return KBStore.load(path)

    def thumbnail(self, record: dict, size: int = THUMBNAIL_SIDE) -> str:
        """An <img> tag with the KB entity's picture (or a 'no image' note), cached by entity id."""
        key = (record.get("id"), record.get("image"))
        with self._lock:
            if key not in self._thumbs:
                self._thumbs[key] = self._make_thumbnail(record.get("image"), size)
            return self._thumbs[key]

    @staticmethod
    def _make_thumbnail(path: str, size: int) -> str:
        if not path:
            return NO_IMAGE
        try:
            image = open_image(path)
        except ImageError:
            return '<span style="color:#888;font-size:12px">image missing</span>'
        return thumbnail_tag(image, size)


def public_name(source: str) -> str:
    """How the page names the KB: a Hub name as it is, a local one by its last part (never its path)."""
    if not source:
        return "the demo KB"
    if is_repo_name(source):
        return source
    return os.path.basename(os.path.normpath(source))[:80] or "the KB"


def compact_picture(image: Image.Image, side: int = PICTURE_SIDE, quality: int = 90) -> bytes:
    """A copy of the picture at most `side` px on its longer side, as JPEG bytes (a few tens of kB)."""
    small = image.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def thumbnail_tag(image: Image.Image, size: int = THUMBNAIL_SIDE) -> str:
    """An <img> tag holding a small JPEG of `image` (a data URL: nothing is served from disk)."""
    data = base64.b64encode(compact_picture(image, size, quality=85)).decode()
    return f'<img src="data:image/jpeg;base64,{data}" style="max-height:{size}px;max-width:{size}px">'
