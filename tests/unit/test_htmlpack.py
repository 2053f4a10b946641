"""Self-contained HTML: local CSS, JS and images inlined, remote references kept."""

from __future__ import annotations

from pathlib import Path

from cxrflow.htmlpack import inline_html


def test_inline_local_assets_keep_remote(tmp_path: Path) -> None:
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "a.css").write_text("body{color:red}")
    (tmp_path / "static" / "a.js").write_text("var x = 1;")
    (tmp_path / "static" / "i.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    page = tmp_path / "p.html"
    page.write_text(
        '<html><head><link rel="stylesheet" href="static/a.css">'
        '<link rel="stylesheet" href="https://cdn.example/x.css">'
        '<link rel="shortcut icon" href="./static/missing.ico">'
        '<script src="static/a.js"></script></head>'
        '<body><img src="static/i.png"><img src="https://cdn.example/y.png"></body></html>'
    )
    out = inline_html(page)
    assert "body{color:red}" in out and "var x = 1;" in out
    assert 'src="data:image/png;base64,' in out
    assert "https://cdn.example/x.css" in out and "https://cdn.example/y.png" in out
    assert "missing.ico" not in out
    assert "static/a.css" not in out and "static/i.png" not in out
