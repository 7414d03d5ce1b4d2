"""Local copies of the scripts and styles that the HTML pages recops writes would otherwise load from a CDN.

Which page needs what (and why nothing else does):

- the DVC plots page (``dvc plots show``) runs vega, vega-lite and vega-embed; ``.dvc/config`` points DVC at the
  template `write_dvc_plots_template` writes, which inlines the three files, so ``dvc_plots/index.html`` is one
  self-contained file;
- the Great Expectations Data Docs link jQuery, Bootstrap, bootstrap-table, Font Awesome and more from five CDNs
  (GX 1.x ships none of them, and its index tables are drawn by bootstrap-table: without the scripts the page is
  empty); `localise_site` copies the files into the site's ``static/vendor/`` and points the pages at them;
- recops' own reports (A/B, backtest) embed their figures as PNG and load nothing; ``/docs`` and ``/redoc`` are
  served from the ``fastapi-offline`` package.

``assets.json`` pins every file: its npm package and version, the package tarball's integrity (the registry's
sha512), the file's path inside the tarball, its sha256, and the CDN addresses it stands in for. ``python -m
recops.web_assets`` (run by ``make install``) fetches the tarballs with ``npm pack`` (npm checks the integrity
too), checks each file's sha256 and writes it under ``vendor/`` next to this file (git-ignored: ~2 MB that the
registry provides at install time rather than minified blobs in git). Nothing downloads at run time: without the
files a page keeps its CDN addresses and the log says how to get the copies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recops.errors import RecopsError
from recops.io import file_digest, write_text

log = logging.getLogger(__name__)

MANIFEST = Path(__file__).with_name("assets.json")
VENDOR_DIR = Path(__file__).with_name("vendor")
# where .dvc/config's plots.html_template points (relative to .dvc/)
DVC_PLOTS_TEMPLATE = VENDOR_DIR / "dvc_plots.html"
# the vega files the DVC plots page inlines, in load order (vega-embed needs the other two)
DVC_PLOTS_SCRIPTS = ("vega", "vega-lite", "vega-embed")
SITE_VENDOR = Path("static") / "vendor"
FETCH_HINT = ("run `make install` (it runs `python -m recops.web_assets`, which needs npm: on Debian "
              "`apt-get install npm`)")

# What loads a file: a script element with nothing inside, a link element, an image.
_EXTERNAL_TAG = re.compile(r"<script\b[^>]*>\s*</script>|<link\b[^>]*>|<img\b[^>]*>", re.IGNORECASE)
_URL_ATTRIBUTE = re.compile(r"""\b(src|href)\s*=\s*(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
# Subresource integrity and CORS mode are for the CDN copy; a local file: page cannot satisfy either.
_CDN_ONLY_ATTRIBUTES = re.compile(r"""\s+(integrity|crossorigin)(\s*=\s*(["']).*?\3)?""", re.IGNORECASE | re.DOTALL)
_REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)


@dataclass(frozen=True)
class AssetFile:
    source: str          # path inside the npm tarball (under its ``package/`` folder)
    target: str          # path under the vendor folder
    sha256: str
    replaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class AssetPackage:
    name: str
    version: str
    integrity: str
    files: tuple[AssetFile, ...]
    # the package's tags are dropped from a page that does not contain this (GX links vega on every page)
    used_when_page_contains: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class LocalisedSite:
    """What `localise_site` did: pages rewritten, tags pointed at local copies or dropped, addresses left."""

    pages: int = 0
    localised: int = 0
    dropped: int = 0
    left_remote: list[str] = field(default_factory=list)


def load_manifest(path: Path = MANIFEST) -> tuple[AssetPackage, ...]:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return tuple(
        AssetPackage(name=p["name"], version=p["version"], integrity=p["integrity"],
                     used_when_page_contains=p.get("used_when_page_contains"),
                     files=tuple(AssetFile(source=f["from"], target=f["to"], sha256=f["sha256"],
                                           replaces=tuple(f.get("replaces", ()))) for f in p["files"]))
        for p in raw["packages"]
    )


def missing_files(packages: tuple[AssetPackage, ...], vendor_dir: Path = VENDOR_DIR) -> list[AssetFile]:
    """Files absent from ``vendor_dir`` or whose bytes are not the pinned ones."""
    return [f for p in packages for f in p.files
            if not (vendor_dir / f.target).is_file() or file_digest(vendor_dir / f.target) != f.sha256]


def fetch(packages: tuple[AssetPackage, ...], vendor_dir: Path = VENDOR_DIR, npm: str = "npm") -> list[str]:
    """Write every pinned file that is missing or different into ``vendor_dir``; return the packages fetched.

    Raises RecopsError when npm is missing or fails, or when a tarball or a file is not the pinned one.
    """
    stale = set(missing_files(packages, vendor_dir))
    wanted = [p for p in packages if stale.intersection(p.files)]
    if not wanted:
        return []
    npm_path = shutil.which(npm)
    if npm_path is None:
        raise RecopsError(f"npm not found: the offline copies of {', '.join(p.spec for p in wanted)} come from the "
                          f"npm registry; install npm (Debian: apt-get install npm) and run `make install` again")
    with tempfile.TemporaryDirectory(prefix="recops-web-assets-") as tmp:
        proc = subprocess.run([npm_path, "pack", "--json", "--pack-destination", tmp, *(p.spec for p in wanted)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RecopsError(f"`npm pack {' '.join(p.spec for p in wanted)}` failed (exit {proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        packed = {(entry["name"], entry["version"]): entry for entry in json.loads(proc.stdout)}
        for package in wanted:
            entry = packed.get((package.name, package.version))
            if entry is None:
                raise RecopsError(f"npm pack did not return {package.spec}")
            if entry.get("integrity") != package.integrity:
                raise RecopsError(f"{package.spec}: the registry's tarball has integrity {entry.get('integrity')}, "
                                  f"recops/web_assets/assets.json pins {package.integrity}: not using it")
            _extract(package, Path(tmp) / entry["filename"], vendor_dir)
    return [p.spec for p in wanted]


def _extract(package: AssetPackage, tarball: Path, vendor_dir: Path) -> None:
    with tarfile.open(tarball, "r:gz") as archive:
        for asset in package.files:
            member = archive.extractfile(f"package/{asset.source}")
            if member is None:
                raise RecopsError(f"{package.spec} has no file {asset.source}")
            payload = member.read()
            target = vendor_dir / asset.target
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            if file_digest(Path(tmp)) != asset.sha256:
                os.unlink(tmp)
                raise RecopsError(f"{package.spec}: {asset.source} does not have the pinned sha256 {asset.sha256}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)


# ------------------------------------------------------------------------------------------- the DVC plots page
_DVC_PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{inlined}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
{notice}    {plot_divs}
</body>
</html>
"""
_DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


def dvc_plots_template(packages: tuple[AssetPackage, ...], vendor_dir: Path = VENDOR_DIR) -> str:
    """DVC's page (dvc_render's PAGE_HTML) with vega, vega-lite and vega-embed inlined instead of ``{scripts}``.

    DVC fills ``{scripts}`` with its renderers' CDN tags, so the template leaves that placeholder out (recops' plots
    are all vega). Without the vendored files it keeps ``{scripts}``: the CDN page, with a line saying so.
    """
    by_name = {p.name: p for p in packages}
    chosen = [by_name[name] for name in DVC_PLOTS_SCRIPTS]
    files = [(p, f) for p in chosen for f in p.files if f.target.endswith(".js")]
    if any(f in missing_files(tuple(chosen), vendor_dir) for _, f in files):
        notice = (f'    <p style="color:#c62828">The plot scripts are loaded from a CDN: this page needs the '
                  f'network. For an offline page, {FETCH_HINT}.</p>\n')
        return _DVC_PAGE.replace("{inlined}", "    {scripts}").replace("{notice}", notice)
    scripts = []
    for package, asset in files:
        code = (vendor_dir / asset.target).read_text(encoding="utf-8")
        clash = [p for p in _DVC_PLACEHOLDERS if p in code]
        if clash or "</script" in code.lower():
            raise RecopsError(f"{package.spec}: {asset.target} contains {clash or '</script'}, which would break the "
                              f"inlined DVC template")
        scripts.append(f"    <script>/* {package.spec} {asset.source} */\n{code}\n    </script>")
    versions = ", ".join(p.spec for p in chosen)
    scripts.insert(0, f"    <!-- {versions}: inlined by recops.web_assets, so the page needs no network -->")
    return _DVC_PAGE.replace("{inlined}", "\n".join(scripts)).replace("{notice}", "")


def write_dvc_plots_template(packages: tuple[AssetPackage, ...], vendor_dir: Path = VENDOR_DIR,
                             target: Path = DVC_PLOTS_TEMPLATE) -> Path:
    write_text(dvc_plots_template(packages, vendor_dir), target)
    return target


# ------------------------------------------------------------------------------------------ a site of pages
def localise_site(site_dir: Path, packages: tuple[AssetPackage, ...] | None = None,
                  vendor_dir: Path = VENDOR_DIR, mirrored: Mapping[str, Path] | None = None) -> LocalisedSite:
    """Point the CDN scripts, stylesheets and images of every ``*.html`` under ``site_dir`` at local copies.

    The files a page uses are copied into ``site_dir/static/vendor/`` and the page links them by a relative path
    (the site can be moved or zipped whole); tags of a package a page does not use (``used_when_page_contains``)
    are removed. ``mirrored`` maps an address prefix to a folder of the site that already holds the same files
    (the query string is dropped). An address with no local copy stays as it was and is listed in
    ``left_remote``.
    """
    packages = load_manifest() if packages is None else packages
    absent = {f.target for f in missing_files(packages, vendor_dir)}
    by_url = {url: (p, f) for p in packages for f in p.files for url in f.replaces}
    result = LocalisedSite()
    used: set[str] = set()
    for page in sorted(site_dir.rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        result.pages += 1

        def rewrite(match: re.Match[str], page: Path = page, html: str = html) -> str:
            tag = match.group(0)
            url_match = _URL_ATTRIBUTE.search(tag)
            if url_match is None or not _REMOTE.match(url_match.group(3).strip()):
                return tag
            url = url_match.group(3).strip()
            hit = by_url.get(url)
            if hit is None:
                local_file = _mirrored_file(url, mirrored or {})
                if local_file is None:
                    result.left_remote.append(url)
                    return tag
                result.localised += 1
                return _with_url(tag, url_match, _relative(local_file, page))
            package, asset = hit
            if package.used_when_page_contains and package.used_when_page_contains not in html:
                result.dropped += 1
                return ""
            if asset.target in absent:
                result.left_remote.append(url)
                return tag
            used.add(package.name)
            result.localised += 1
            return _with_url(tag, url_match, _relative(site_dir / SITE_VENDOR / asset.target, page))

        rewritten = _EXTERNAL_TAG.sub(rewrite, html)
        if rewritten != html:
            write_text(rewritten, page)
    for package in packages:
        if package.name in used:
            for asset in package.files:  # the whole package: a stylesheet's fonts come with it
                target = site_dir / SITE_VENDOR / asset.target
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(vendor_dir / asset.target, target)
    result.left_remote = sorted(set(result.left_remote))
    return result


def _mirrored_file(url: str, mirrored: Mapping[str, Path]) -> Path | None:
    for prefix, folder in mirrored.items():
        if url.startswith(prefix):
            name = url[len(prefix):].split("?", 1)[0].split("#", 1)[0]
            candidate = folder / name
            if name and ".." not in Path(name).parts and candidate.is_file():
                return candidate
    return None


def _relative(target: Path, page: Path) -> str:
    return os.path.relpath(target, page.parent).replace(os.sep, "/")


def _with_url(tag: str, url_match: re.Match[str], local: str) -> str:
    tag = tag[:url_match.start(3)] + local + tag[url_match.end(3):]
    return _CDN_ONLY_ATTRIBUTES.sub("", tag)


def remote_addresses(html: str) -> list[str]:
    """The internet addresses a page's script, stylesheet and image tags load (what `localise_site` replaces)."""
    found = []
    for match in _EXTERNAL_TAG.finditer(html):
        url_match = _URL_ATTRIBUTE.search(match.group(0))
        if url_match is not None and _REMOTE.match(url_match.group(3).strip()):
            found.append(url_match.group(3).strip())
    return found
