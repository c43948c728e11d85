"""Screenshot the Dask dashboard's Fine Performance Metrics page while cxrdask extracts.

    python scripts/dashboard_screenshot.py          # writes docs/img/fine_metrics.png

A synthetic archive is extracted on a local cluster; half-way through, headless Chromium
(Debian's ``chromium``, driven by Playwright) opens the page and saves what a user sees:
seconds per stage (read, decode, resize, forward, write) of the ``extract-chunk`` tasks in
the run's span.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrdask import extract_features, make_archive  # noqa: E402
from cxrdask.runtime.cluster import local_client  # noqa: E402

PAGE = "individual-fine-performance-metrics"


def main() -> int:
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        print("needs Chromium (Debian: apt-get install chromium)", file=sys.stderr)
        return 1
    target = ROOT / "docs" / "img" / "fine_metrics.png"
    with tempfile.TemporaryDirectory() as workdir:
        archive = make_archive(f"{workdir}/archive", n=400, size=256, seed=2)
        with local_client(n_workers=2, dashboard_address="127.0.0.1:0") as client:
            run = threading.Thread(target=extract_features, daemon=True, kwargs=dict(
                metadata=archive.metadata_url, images_root=archive.root,
                store_url=f"{workdir}/features.zarr", client=client, weights="random",
                progress=False))
            run.start()
            time.sleep(12)  # the model is built and a few chunks are done
            page_url = client.dashboard_link.replace("status", PAGE)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=browser_path, headless=True,
                                                     args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(page_url)
                page.wait_for_timeout(6000)  # let bokeh draw and take two updates
                page.screenshot(path=str(target))
                browser.close()
            run.join()
    print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
