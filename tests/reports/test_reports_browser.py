"""The HTML report in a real browser: headless Chromium renders it to a screenshot."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from catcache.reports.html import render

from .test_reports import recorded, records, window

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, png: Path, profile: Path, size: str = "1280,2400") -> None:
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size}", page.as_uri()],
        check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
async def test_report_page_renders_in_chromium(redis_url, clean_redis, tmp_path):
    now = time.time()
    await recorded(redis_url, [r for hour in range(6) for r in records(now - hour * 3600)])
    page = tmp_path / "report.html"
    page.write_text(render(await window(redis_url, "6h"), "6h"))
    png = tmp_path / "report.png"
    screenshot(page, png, tmp_path / "profile")
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2400)
    top = image.crop((0, 0, 1280, 1400))
    assert len(top.getcolors(1 << 20) or []) > 50  # cards, lines and bars drawn, not a blank page
    # the accent green of the title and hit rate, and the plots' semantic-hit green, are on screen
    colors = {c for _, c in top.getcolors(1 << 20)}
    assert (4, 120, 87) in colors and (52, 211, 153) in colors
