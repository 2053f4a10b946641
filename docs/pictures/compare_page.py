"""``compare.png``: ``cxrflow compare``'s self-contained ``compare.html``, shot in a browser.

The run folder's ``reports/compare/compare.html`` is used where it exists, else one is written to
a temporary folder. The picture is the page's top (models x metrics with CIs) and its
audit-verdicts figure, zoomed out so that the widest table fits 1400 pixels.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

from headless_browser import VIEWPORT, new_page


def compare_html(run_dir: Path, tmp: Path) -> Path:
    """The run folder's ``reports/compare/compare.html``, else one written now to ``tmp``."""
    page = run_dir / "reports" / "compare" / "compare.html"
    if page.exists():
        return page
    cxrflow = Path(sys.executable).with_name("cxrflow")
    db = (run_dir / "mlruns.db").resolve()
    subprocess.run(
        [
            str(cxrflow),
            "--params",
            str(run_dir / "params.yaml"),
            "compare",
            "--tracking-uri",
            f"sqlite:///{db}",
            "--out",
            str(tmp / "compare"),
        ],
        cwd=run_dir,
        check=True,
        capture_output=True,
        text=True,
    )
    return tmp / "compare" / "compare.html"


def compare_picture(browser: Any, html: Path, out: Path) -> Path:
    """``compare.png``: the top of the page (title, models x metrics) and, from further down
    the same page, its audit-verdicts figure, zoomed out so that the widest table fits."""
    from PIL import Image

    uri = html.resolve().as_uri()
    wide = 2 * VIEWPORT["width"]  # CSS pixels: no table of the page wraps or is cut
    with new_page(browser, wide) as page:
        page.goto(uri, wait_until="load")
        left = float(page.evaluate("document.body.getBoundingClientRect().left")) - 4
        right = 12 + float(
            page.evaluate(
                "Math.max(...[...document.body.querySelectorAll('*')]"
                ".map(e => e.getBoundingClientRect().right))"
            )
        )
    # the same layout (the CSS width is unchanged), rendered smaller: what fits 1400 pixels
    with new_page(browser, wide, VIEWPORT["width"] / (right - left)) as page:
        page.goto(uri, wait_until="load")
        regions = _compare_regions(page, left, right)
        parts = [page.screenshot(full_page=True, clip=clip) for clip in regions]
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in parts]
    gap = _gap(images[0].width, "...  further down the same page")
    sheet = Image.new("RGB", (images[0].width, sum(i.height for i in images) + gap.height), "white")
    sheet.paste(images[0], (0, 0))
    sheet.paste(gap, (0, images[0].height))
    sheet.paste(images[1], (0, images[0].height + gap.height))
    target = out / "compare.png"
    sheet.save(target, optimize=True)
    return target


def _compare_regions(page: Any, left: float, right: float) -> list[dict[str, float]]:
    """The page's top down to the models table, and the audit-verdicts figure with its caption."""
    table = page.locator("#models + table").bounding_box()
    figure = page.locator("p:has(> img[alt='audit verdicts'])")
    caption = figure.locator("xpath=preceding-sibling::p[1]").bounding_box()
    image = figure.bounding_box()
    if not (table and caption and image):
        raise SystemExit("compare.html: no models table or audit-verdicts figure")
    across = {"x": left, "width": right - left}
    return [
        {**across, "y": 0, "height": table["y"] + table["height"] + 12},
        {
            **across,
            "y": caption["y"] - 8,
            "height": image["y"] + image["height"] - caption["y"] + 16,
        },
    ]


def _gap(width: int, words: str) -> Any:
    """A grey band saying that the two crops around it are not contiguous."""
    from PIL import Image, ImageDraw, ImageFont

    band = Image.new("RGB", (width, 30), "#f0f0f0")
    ImageDraw.Draw(band).text((16, 7), words, fill="#555", font=ImageFont.load_default(14))
    return band
