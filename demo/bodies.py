"""Request bodies bounded while they arrive.

Gradio bounds uploads (`max_file_size`) but reads any JSON body whole: a client could send a gigabyte
to /queue/join (in a text or a data URL) and the server would hold it before any limit is checked.
`BodyLimit` refuses a body past `MAX_BODY_BYTES` from its Content-Length (HTTP 413, nothing read), and
stops reading a body sent without one once it passes the limit. The limit leaves room for the largest
request the limits allow: a 20 MB picture as a data URL (27 MB of base64) and the longest texts.
"""
import json

MAX_BODY_BYTES = 32 * 2**20
UPLOAD_PATH = "/upload"  # multipart uploads: Gradio bounds each file itself (max_file_size)


class BodyLimit:
    """ASGI middleware refusing request bodies larger than `limit` bytes (uploads excepted)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").rstrip("/").endswith(UPLOAD_PATH):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self.refuse(send)
        received = 0

        async def bounded():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # a body without (or lying about) its length: stop reading it
                    return {"type": "http.disconnect"}
            return message
        return await self.app(scope, bounded, send)

    async def refuse(self, send):
        body = json.dumps({"detail": f"The request is larger than {self.limit // 2**20} MB, the limit."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def body_limit_middleware(limit: int = MAX_BODY_BYTES) -> list:
    """For launch(app_kwargs={"middleware": ...})."""
    from starlette.middleware import Middleware
    return [Middleware(BodyLimit, limit=limit)]
