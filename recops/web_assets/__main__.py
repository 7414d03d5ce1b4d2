"""``python -m recops.web_assets``: fetch the pinned offline copies and write the DVC plots template (make install).

Exit 0 with a warning when npm is missing (the pages then load their scripts from the CDN, and say so); exit 1
when a download fails or is not the pinned file: a changed file must never be used silently.
"""

from __future__ import annotations

import sys

from recops.errors import RecopsError
from recops.web_assets import (DVC_PLOTS_TEMPLATE, VENDOR_DIR, fetch, load_manifest, missing_files,
                               write_dvc_plots_template)


def main() -> int:
    packages = load_manifest()
    status = 0
    try:
        fetched = fetch(packages, VENDOR_DIR)
        if fetched:
            print(f"offline web assets: fetched {', '.join(fetched)} into {VENDOR_DIR}")
    except RecopsError as exc:
        print(f"offline web assets: {exc}", file=sys.stderr)
        status = 0 if str(exc).startswith("npm not found") else 1
    write_dvc_plots_template(packages)
    left = missing_files(packages, VENDOR_DIR)
    complete = VENDOR_DIR / ".complete"  # make's target: absent until every file is there, so make retries
    if left:
        complete.unlink(missing_ok=True)
        print(f"offline web assets: {len(left)} files missing, so the DVC plots page and the Data Docs load them "
              f"from a CDN (written: {DVC_PLOTS_TEMPLATE})", file=sys.stderr)
    else:
        complete.write_text("every file of recops/web_assets/assets.json, checked\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
