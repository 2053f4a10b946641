"""Self-contained HTML pages: Markdown rendered once, local stylesheets, scripts and images inlined.

Every HTML page cxrflow writes (``compare.html``, ``reproduction.html``) is its Markdown
document rendered by :func:`render_page`, so that the two files always say the same thing.
KFP's UI shows an ``HTML`` artifact as one file, and a report mailed or committed should not
depend on the folder it came from: local references are inlined (:func:`inline_html`), remote
(``http``) ones are left as they are.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from markdown_it.token import Token

_LINK = re.compile(r"<link\b[^>]*\bhref=[\"']([^\"']+)[\"'][^>]*>", re.I)
_SCRIPT = re.compile(r"<script\b([^>]*)\bsrc=[\"']([^\"']+)[\"']([^>]*)>\s*</script>", re.I)
_SRC = re.compile(r"(<img\b[^>]*\bsrc=)[\"']([^\"']+)[\"']", re.I)

PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1400px;
margin:1.5em auto;padding:0 1em;line-height:1.4;color:#1b1f24}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;display:block;max-width:100%;
overflow-x:auto}
td,th{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top}
td{white-space:nowrap}td.wrap{white-space:normal;min-width:24em}
th{background:#f6f8fa}td.num{font-variant-numeric:tabular-nums}
tr.beyond-better td{background:#dafbe1}tr.beyond-worse td{background:#ffebe9}
td.pass{color:#1a7f37;font-weight:600}td.fail{color:#cf222e;font-weight:600}
img{max-width:100%;border:1px solid #eee}
blockquote{background:#f6f8fa;margin:.5em 0;padding:.5em .8em;border-left:3px solid #8c959f;
font-size:.9em}
code{font-size:.9em}
"""
"""The one stylesheet of every page."""

RowClass = Callable[[Sequence[str]], str]
"""A table row's cells (the text they show) -> a CSS class for the row, or ``""``."""

_WRAP_AFTER = 60  # characters: longer cells (audit reasons) wrap instead of widening the table
_VERDICT_CLASS = {"passed": "pass", "FAILED": "fail"}


def _local(base: Path, ref: str) -> Path | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I) or ref.startswith("//"):
        return None  # http:, https:, data: ...
    # Markdown renderers percent-encode link targets (a space is %20)
    path = (base / unquote(ref.split("#", 1)[0].split("?", 1)[0])).resolve()
    return path if path.is_file() else None


def data_uri(path: Path) -> str:
    """A ``data:`` URI of a file (images for self-contained pages)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def inline_text(text: str, base: str | Path) -> str:
    """An HTML document with its local CSS, JS and images inlined.

    Args:
        text: The HTML.
        base: The folder relative references are resolved against.

    Returns:
        The page as one string; references to missing local files are dropped from ``<link>``
        (a favicon) and kept elsewhere.
    """
    folder = Path(base)

    def link(m: re.Match[str]) -> str:
        tag, ref = m.group(0), m.group(1)
        local = _local(folder, ref)
        if local is None:
            return tag if re.match(r"^(https?:)?//|^data:", ref) else ""
        if "stylesheet" in tag.lower():
            return f"<style>\n{local.read_text(encoding='utf-8', errors='replace')}\n</style>"
        return tag.replace(ref, data_uri(local))

    def script(m: re.Match[str]) -> str:
        local = _local(folder, m.group(2))
        if local is None:
            return m.group(0)
        return f"<script{m.group(1)}{m.group(3)}>\n{local.read_text(encoding='utf-8')}\n</script>"

    def image(m: re.Match[str]) -> str:
        local = _local(folder, m.group(2))
        return m.group(0) if local is None else f'{m.group(1)}"{data_uri(local)}"'

    return _SRC.sub(image, _SCRIPT.sub(script, _LINK.sub(link, text)))


def inline_html(page: str | Path) -> str:
    """The HTML page ``page`` with its local CSS, JS and images inlined (:func:`inline_text`).

    Args:
        page: An HTML file; relative references are resolved against its folder.
    """
    path = Path(page)
    return inline_text(path.read_text(encoding="utf-8"), path.parent)


def _slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _visible(inline: Token) -> str:
    """The text a cell shows (link targets and emphasis marks left out)."""
    return "".join(
        c.content for c in inline.children or [] if c.type in ("text", "code_inline")
    ).strip()


def _cell_class(text: str) -> str:
    if text in _VERDICT_CLASS:
        return _VERDICT_CLASS[text]
    if re.match(r"^[-+]?\d", text):
        return "num"
    return "wrap" if len(text) > _WRAP_AFTER else ""


def _decorate(tokens: list[Token], ids: Mapping[str, str], row_class: RowClass | None) -> None:
    """Anchors on headings, arrows in text, CSS classes on table cells and rows."""
    row: Token | None = None
    cells: list[str] = []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            title = tokens[i + 1].content
            tok.attrSet("id", ids.get(title) or _slug(title))
        elif tok.type == "inline":
            # a typographic arrow on the page where the text files write "->"
            for child in tok.children or []:
                if child.type == "text":
                    child.content = child.content.replace(" -> ", " \u2192 ")
        elif tok.type == "tr_open":
            row, cells = tok, []
        elif tok.type == "td_open":
            text = _visible(tokens[i + 1])
            cells.append(text)
            if cls := _cell_class(text):
                tok.attrSet("class", cls)
        elif tok.type == "tr_close" and row is not None and row_class is not None:
            cls = row_class(cells)
            if cls:
                row.attrSet("class", cls)


def markdown_to_html(
    text: str, *, ids: Mapping[str, str] | None = None, row_class: RowClass | None = None
) -> str:
    """The HTML body of a Markdown document (CommonMark + GitHub tables, raw HTML escaped).

    Args:
        text: The Markdown.
        ids: Heading text -> anchor id, for anchors other pages link to (default: the
            GitHub-style slug of the heading).
        row_class: Gives table rows a CSS class from their cells (e.g. a highlighted change).
    """
    from markdown_it import MarkdownIt

    # html off: run data (tags, notes) goes into the Markdown verbatim and must stay text
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    env: dict[str, Any] = {}
    tokens = md.parse(text, env)
    _decorate(tokens, ids or {}, row_class)
    return str(md.renderer.render(tokens, md.options, env))


def render_page(
    markdown: str,
    *,
    title: str,
    base: str | Path,
    ids: Mapping[str, str] | None = None,
    row_class: RowClass | None = None,
) -> str:
    """One self-contained HTML page from a Markdown document: no script, no remote file.

    Args:
        markdown: The document (the same text the caller writes to its ``.md`` file).
        title: The page title.
        base: The folder the document's relative image links are resolved against; the
            images are inlined as ``data:`` URIs.
        ids: See :func:`markdown_to_html`.
        row_class: See :func:`markdown_to_html`.

    Returns:
        The page, ending with a newline.
    """
    body = markdown_to_html(markdown, ids=ids, row_class=row_class)
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        "<link rel='icon' href='data:,'>\n"  # no favicon request
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head>\n"
        f"<body>\n{body}</body></html>\n"
    )
    return inline_text(page, base)
