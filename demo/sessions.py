"""The entities visitors add, one overlay per browser session, in memory only.

A session is Gradio's session hash: one browser tab, or one `gradio_client.Client`. Its entities are
linkable in that session only, are never written to the store or the cache, and are forgotten when
the session ends (the tab closes: Gradio's unload event), after `IDLE_SECONDS` without use, or when
the server stops. Bounded: `PER_SESSION` entities a session, `MAX_SESSIONS` sessions holding entities
at once (past it a new session's add is refused; no session loses its entities for another's).

Each entity keeps its decoded picture shrunk to `demo.kb.PICTURE_SIDE` px and re-encoded as JPEG (for the
thumbnail and the heatmap): never the uploaded bytes, nor the upload's path.
"""
import io
import threading
import time

from PIL import Image

from mimic.kb.overlay import Overlay, OverlayFull

from .kb import compact_picture, thumbnail_tag

PER_SESSION = 20
MAX_SESSIONS = 200
IDLE_SECONDS = 3600


def open_picture(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


class SessionEntities:
    def __init__(self, per_session: int = PER_SESSION, max_sessions: int = MAX_SESSIONS,
                 idle_seconds: float = IDLE_SECONDS, clock=time.monotonic):
        self.per_session = per_session
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._sessions = {}  # session hash -> [Overlay, last use]
        self._lock = threading.Lock()

    def __len__(self):
        """Sessions holding entities."""
        return len(self._sessions)

    def entity_count(self) -> int:
        return sum(len(overlay) for overlay, _ in self._sessions.values())

    def overlay(self, session) -> Overlay:
        """The session's overlay, or None when it has added nothing (or its entities are forgotten)."""
        with self._lock:
            self._expire()
            entry = self._sessions.get(session) if session else None
            if entry is None:
                return None
            entry[1] = self.clock()
            return entry[0]

    def add(self, session, model, precision: str, name: str, description: str, image=None) -> dict:
        """Encode an entity into the session's overlay; OverlayFull past a limit."""
        if not session:
            raise OverlayFull("Adding an entity needs a session (open the page, or use one gradio_client Client).")
        with self._lock:
            self._expire()
            entry = self._sessions.get(session)
            if entry is None:
                if len(self._sessions) >= self.max_sessions:
                    raise OverlayFull(f"The demo already holds the added entities of {self.max_sessions} sessions, "
                                      "its limit; please try again later.")
                entry = self._sessions[session] = [Overlay(precision, self.per_session), self.clock()]
            entry[1] = self.clock()
        extra = {"picture": compact_picture(image), "thumbnail": thumbnail_tag(image)} if image is not None else {}
        try:
            return entry[0].add(model, name, description, image, **extra)
        finally:
            if not len(entry[0]):  # the first add failed: hold no empty session
                self.end(session)

    def end(self, session):
        """Forget the session's entities (the page's unload event calls this)."""
        with self._lock:
            self._sessions.pop(session, None)

    def _expire(self):
        now = self.clock()
        for session in [s for s, (_, used) in self._sessions.items() if now - used > self.idle_seconds]:
            del self._sessions[session]
