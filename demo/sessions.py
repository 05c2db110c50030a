"""The entities visitors add, one overlay per browser session, in memory only.

A session is Gradio's session hash: one browser tab, or one `gradio_client.Client`. Its entities are
linkable in that session only, are never written to the store or the cache, and are forgotten when
the session ends (the tab closes: Gradio's unload event), after `IDLE_SECONDS` without use, or when
the server stops. Bounded: `PER_SESSION` entities a session, `MAX_SESSIONS` sessions holding entities
at once (past it a new session's add is refused; no session loses its entities for another's).

A place is held only by a session that shows it is alive: a page or a Client keeps Gradio's heartbeat
stream open (a beat every 15 s, seen by `HeartbeatWatch`), and any use counts too. A session with
neither for `SILENT_SECONDS` loses its place: a script that joins the queue with fresh session hashes
and no page fills the places for two minutes, not for an hour.

Each entity keeps its decoded picture shrunk to `demo.kb.PICTURE_SIDE` px and re-encoded as JPEG (for the
thumbnail and the heatmap): never the uploaded bytes, nor the upload's path.
"""
import io
import re
import threading
import time

from PIL import Image

from mimic.kb.overlay import Overlay, OverlayFull

from .kb import compact_picture, thumbnail_tag

PER_SESSION = 20
MAX_SESSIONS = 200
IDLE_SECONDS = 3600
SILENT_SECONDS = 120  # without a heartbeat or a use: the page is gone (or there never was one)


def open_picture(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


class SessionEntities:
    def __init__(self, per_session: int = PER_SESSION, max_sessions: int = MAX_SESSIONS,
                 idle_seconds: float = IDLE_SECONDS, silent_seconds: float = SILENT_SECONDS, clock=time.monotonic):
        self.per_session = per_session
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.silent_seconds = silent_seconds
        self.clock = clock
        self._sessions = {}  # session hash -> [Overlay, last use, last sign of life (a use or a heartbeat)]
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
            entry[1] = entry[2] = self.clock()
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
                entry = self._sessions[session] = [Overlay(precision, self.per_session), self.clock(), self.clock()]
            entry[1] = entry[2] = self.clock()
        extra = {"picture": compact_picture(image), "thumbnail": thumbnail_tag(image)} if image is not None else {}
        try:
            return entry[0].add(model, name, description, image, **extra)
        finally:
            if not len(entry[0]):  # the first add failed: hold no empty session
                self.end(session)

    def alive(self, session):
        """The session's page (or Client) is still there: its heartbeat beat. Keeps its place held."""
        with self._lock:
            entry = self._sessions.get(session)
            if entry is not None:
                entry[2] = self.clock()

    def end(self, session):
        """Forget the session's entities (the page's unload event calls this)."""
        with self._lock:
            self._sessions.pop(session, None)

    def _expire(self):
        now = self.clock()
        for session in [s for s, (_, used, sign) in self._sessions.items()
                        if now - used > self.idle_seconds or now - sign > self.silent_seconds]:
            del self._sessions[session]


class HeartbeatWatch:
    """ASGI middleware: each beat Gradio sends down a session's heartbeat stream (GET .../heartbeat/<session
    hash>, held open by every page and gradio_client Client) tells `sessions` that the session is alive."""
    PATH = re.compile(r"/heartbeat/([A-Za-z0-9_-]{1,100})/?$")

    def __init__(self, app, sessions: SessionEntities):
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope, receive, send):
        found = self.PATH.search(scope.get("path", "")) if scope["type"] == "http" else None
        if not found:
            return await self.app(scope, receive, send)
        session = found.group(1)

        async def beat(message):
            if message["type"] == "http.response.body" and message.get("body"):
                self.sessions.alive(session)
            await send(message)
        return await self.app(scope, receive, beat)


def heartbeat_middleware(sessions: SessionEntities) -> list:
    """For launch(app_kwargs={"middleware": ...}): the page's heartbeats reach `sessions`."""
    from starlette.middleware import Middleware
    return [Middleware(HeartbeatWatch, sessions=sessions)]
