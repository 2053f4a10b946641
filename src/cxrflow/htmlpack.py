"""Self-contained HTML: local stylesheets, scripts and images inlined into one file.

KFP's UI shows an ``HTML`` artifact as one file, and a report mailed or committed should not
depend on the folder it came from. Remote (``http``) references are left as they are.
"""

from __future__ import annotations

import base64
import mimetypes
import re
from pathlib import Path

_LINK = re.compile(r"<link\b[^>]*\bhref=[\"']([^\"']+)[\"'][^>]*>", re.I)
_SCRIPT = re.compile(r"<script\b([^>]*)\bsrc=[\"']([^\"']+)[\"']([^>]*)>\s*</script>", re.I)
_SRC = re.compile(r"(<img\b[^>]*\bsrc=)[\"']([^\"']+)[\"']", re.I)


def _local(base: Path, ref: str) -> Path | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I) or ref.startswith("//"):
        return None  # http:, https:, data: ...
    path = (base / ref.split("#", 1)[0].split("?", 1)[0]).resolve()
    return path if path.is_file() else None


def data_uri(path: Path) -> str:
    """A ``data:`` URI of a file (images for self-contained pages)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def inline_html(page: str | Path) -> str:
    """The HTML page ``page`` with its local CSS, JS and images inlined.

    Args:
        page: An HTML file; relative references are resolved against its folder.

    Returns:
        The page as one string; references to missing local files are dropped from ``<link>``
        (a favicon) and kept elsewhere.
    """
    path = Path(page)
    base = path.parent
    html = path.read_text(encoding="utf-8")

    def link(m: re.Match[str]) -> str:
        tag, ref = m.group(0), m.group(1)
        local = _local(base, ref)
        if local is None:
            return tag if re.match(r"^(https?:)?//", ref) else ""
        if "stylesheet" in tag.lower():
            return f"<style>\n{local.read_text(encoding='utf-8', errors='replace')}\n</style>"
        return tag.replace(ref, data_uri(local))

    def script(m: re.Match[str]) -> str:
        local = _local(base, m.group(2))
        if local is None:
            return m.group(0)
        return f"<script{m.group(1)}{m.group(3)}>\n{local.read_text(encoding='utf-8')}\n</script>"

    def image(m: re.Match[str]) -> str:
        local = _local(base, m.group(2))
        return m.group(0) if local is None else f'{m.group(1)}"{data_uri(local)}"'

    return _SRC.sub(image, _SCRIPT.sub(script, _LINK.sub(link, html)))
