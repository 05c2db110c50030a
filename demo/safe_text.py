"""Text from the KB, from visitors or from errors, made safe to show on a public page.

Entity names and descriptions are data: a name like "[win](https://x)" or "<img src=https://x>" must
show as those characters, not become a link or a tracking pixel for every visitor whose query ranks
it first. Markdown (the verdict) and plotly labels each get their own escaping. Messages shown to
visitors never carry the server's paths: those stay in the log.
"""
import html
import os
import re
import string

_HTML_SPECIALS = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\])(?:[A-Za-z]:)?[/\\](?:[^\s/\\:'\"`()<>]+[/\\])+([^\s/\\:'\"`()<>]*)")


def markdown_literal(text) -> str:
    """`text` as literal characters in Markdown: HTML specials as entities, every other ASCII punctuation
    backslash-escaped (CommonMark allows it for all of them), so no link, image, emphasis, heading,
    HTML tag or bare-URL autolink can form."""
    out = []
    for c in str(text or ""):
        if c in _HTML_SPECIALS:
            out.append(_HTML_SPECIALS[c])
        elif c in string.punctuation:
            out.append("\\" + c)
        elif c in "\r\n":
            out.append(" ")
        else:
            out.append(c)
    return "".join(out)


def plotly_literal(text) -> str:
    """`text` for a plotly label, title or hover text: plotly reads a subset of HTML there (<a href>,
    <b>, <br>...), so the specials become entities, which it shows as the characters."""
    return html.escape(str(text or ""), quote=True)


def without_paths(text, named: dict = None) -> str:
    """`text` with server paths removed: each path of `named` ({path: label}) becomes its label, then
    any other absolute path becomes its last component."""
    text = str(text)
    for path, label in sorted((named or {}).items(), key=lambda item: -len(item[0])):
        if path:
            for form in {path, os.path.abspath(path), os.path.realpath(path)}:
                text = text.replace(form.rstrip("/"), label)
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "…", text)


def html_literal(text) -> str:
    """`text` as characters in HTML (the best-match card, the ranked list, the examples)."""
    return html.escape(str(text or ""), quote=True)


def http_url(url) -> str:
    """`url` escaped for an href if it is an http(s) address, else "" (no javascript:, data: or relative link)."""
    url = str(url or "").strip()
    return html.escape(url, quote=True) if re.fullmatch(r"https?://[^\s<>\"']+", url, re.IGNORECASE) else ""
