"""One small, polite HTTP client for Wikimedia's services (the Wikidata API and query service, Commons).

Wikimedia asks bots for a descriptive User-Agent with a way to contact the operator, few parallel
connections, and to back off when told to (429 or 503 with Retry-After). `Web` does that: every request
carries the User-Agent, at most `connections` run at once (a semaphore shared by the threads that use
it), a 429 or 5xx answer or a dropped connection is retried after the server's Retry-After (capped) or
an exponential backoff, and every answer is read up to a byte limit (a server cannot fill the memory).
Only the standard library: urllib.
"""
import email.utils
import importlib.metadata
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PROJECT_URL = "https://github.com/mimic-el/mimic-el"
MAX_ANSWER = 64 * 2**20  # bytes of one API answer (a batch of 50 entities is a few MB)
MAX_WAIT = 300.0  # seconds: the longest Retry-After honoured (a longer one is taken as this)
RETRIED = {429, 500, 502, 503, 504}


class WebError(OSError):
    """A request that failed for good (after its retries), or an answer that cannot be used."""


def user_agent(contact: str = None) -> str:
    """What Wikimedia's User-Agent policy asks for: the tool, its version, where to learn more, a contact."""
    who = f"{PROJECT_URL}; {contact}" if contact else PROJECT_URL
    try:
        version = importlib.metadata.version("mimic-el")
    except importlib.metadata.PackageNotFoundError:  # run from a source folder
        version = "dev"
    return f"mimic-el/{version} ({who}) python-urllib/{urllib.request.__version__}"


def retry_after(value, now: float = None) -> float:
    """A Retry-After header (seconds, or an HTTP date) -> seconds to wait, or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed only to the hosts a request allows (checked by `Web` itself)."""

    def __init__(self, web, hosts):
        self.web, self.hosts = web, hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.web.check_host(newurl, self.hosts)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Web:
    """A polite client: `get(url, params)`, `post(url, form)`, `json(...)`; thread-safe."""

    def __init__(self, contact: str = None, connections: int = 2, retries: int = 5, backoff: float = 1.0,
                 timeout: float = 60.0, sleep=time.sleep):
        if connections < 1 or retries < 0:
            raise ValueError("connections must be >= 1 and retries >= 0")
        self.agent = user_agent(contact)
        self.retries, self.backoff, self.timeout, self.sleep = retries, backoff, timeout, sleep
        self._slots = threading.BoundedSemaphore(connections)
        self.waited = 0.0  # seconds spent backing off (reported, and checked by the tests)

    @staticmethod
    def check_host(url: str, hosts) -> str:
        """`url` if it is http(s) on one of `hosts` (None: any host), else WebError."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or (hosts is not None and parts.hostname not in hosts):
            raise WebError(f"refused: {url[:200]} is not on {', '.join(sorted(hosts)) if hosts else 'http(s)'}")
        return url

    def request(self, url: str, params: dict = None, form: dict = None, max_bytes: int = MAX_ANSWER,
                hosts=None, accept: str = None) -> bytes:
        """The body of a GET (`params` in the query) or POST (`form`), retried; WebError when it fails."""
        self.check_host(url, hosts)
        if params:
            url += ("&" if urllib.parse.urlsplit(url).query else "?") + urllib.parse.urlencode(params)
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        headers = {"User-Agent": self.agent, "Accept-Encoding": "identity"}
        if accept:
            headers["Accept"] = accept
        opener = urllib.request.build_opener(_NoRedirect(self, hosts))
        for attempt in range(self.retries + 1):
            wait = None
            try:
                with self._slots, opener.open(urllib.request.Request(url, data, headers), timeout=self.timeout) as r:
                    body = r.read(max_bytes + 1)
                if len(body) > max_bytes:
                    raise WebError(f"{url[:200]}: the answer is larger than {max_bytes} bytes")
                return body
            except urllib.error.HTTPError as e:
                if e.code not in RETRIED or attempt == self.retries:
                    raise WebError(f"{url[:200]}: HTTP {e.code} {e.reason}") from None
                wait = retry_after(e.headers.get("Retry-After"))
            except WebError:
                raise
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    raise WebError(f"{url[:200]}: {getattr(e, 'reason', e)}") from None
            wait = min(MAX_WAIT, wait if wait is not None else self.backoff * 2 ** attempt)
            self.waited += wait
            self.sleep(wait)
        raise AssertionError("unreachable")

    def json(self, url: str, params: dict = None, form: dict = None, accept: str = None, hosts=None,
             max_bytes: int = MAX_ANSWER):
        body = self.request(url, params, form, max_bytes, hosts=hosts, accept=accept)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise WebError(f"{url[:200]}: the answer is not JSON")
