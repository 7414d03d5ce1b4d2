"""recops.web_assets: the pinned offline copies, the DVC plots template and the rewriting of a site's CDN tags.

Fake packages and a fake ``npm`` (a script that packs files given in an environment variable) stand in for the
registry; the real manifest is only checked for consistency here (tests/integration/test_browser.py opens the
pages built with the real files).
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import sys
from pathlib import Path

import pytest

from recops.errors import RecopsError
from recops.web_assets import (AssetFile, AssetPackage, dvc_plots_template, fetch, load_manifest, localise_site,
                               missing_files, remote_addresses)

JQUERY_URL = "https://code.jquery.com/jquery-3.7.1.min.js"
VEGA_URL = "https://cdn.jsdelivr.net/npm/vega@5"
FONT_CSS_URL = "https://cdnjs.example/font/all.min.css"


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


FILES = {
    "jquery.min.js": b"window.jQuery = function () {};",
    "vega.min.js": b"window.vega = {};",
    "vega-lite.min.js": b"window.vegaLite = {};",
    "vega-embed.min.js": b"window.vegaEmbed = function () {};",
    "all.min.css": b"@font-face { src: url(../webfonts/solid.woff2) }",
    "solid.woff2": b"\x00font",
}


def package(name: str, files: list[tuple[str, str, bytes, tuple[str, ...]]], marker: str | None = None,
            integrity: str = "sha512-fake") -> AssetPackage:
    return AssetPackage(name=name, version="1.0.0", integrity=integrity, used_when_page_contains=marker,
                        files=tuple(AssetFile(source=src, target=dest, sha256=sha256(payload), replaces=urls)
                                    for src, dest, payload, urls in files))


def fake_packages() -> tuple[AssetPackage, ...]:
    return (
        package("jquery", [("dist/jquery.min.js", "jquery/jquery.min.js", FILES["jquery.min.js"], (JQUERY_URL,))]),
        package("vega", [("build/vega.min.js", "vega/vega.min.js", FILES["vega.min.js"], (VEGA_URL,))],
                marker="vegaEmbed("),
        package("vega-lite", [("build/vega-lite.min.js", "vega-lite/vega-lite.min.js", FILES["vega-lite.min.js"], ())],
                marker="vegaEmbed("),
        package("vega-embed", [("build/vega-embed.min.js", "vega-embed/vega-embed.min.js",
                                FILES["vega-embed.min.js"], ())], marker="vegaEmbed("),
        package("font", [("css/all.min.css", "font/css/all.min.css", FILES["all.min.css"], (FONT_CSS_URL,)),
                         ("webfonts/solid.woff2", "font/webfonts/solid.woff2", FILES["solid.woff2"], ())]),
    )


def vendor(tmp_path: Path, skip: tuple[str, ...] = ()) -> Path:
    root = tmp_path / "vendor"
    for pkg in fake_packages():
        for asset in pkg.files:
            if asset.target in skip:
                continue
            (root / asset.target).parent.mkdir(parents=True, exist_ok=True)
            (root / asset.target).write_bytes(FILES[Path(asset.target).name])
    return root


PAGE = """<html><head>
<link rel="stylesheet" href="{font}">
<script src="{vega}"></script>
<script src="{jquery}" integrity="sha384-abc" crossorigin="anonymous"></script>
<script src="https://unknown.example/lib.js"></script>
<script>{body}</script>
</head><body><img src="https://images.example/logo.png?d=123"></body></html>
"""


def site(tmp_path: Path, body: str = "$('#t').table()") -> Path:
    root = tmp_path / "site"
    for page in (root / "index.html", root / "validations" / "a" / "b" / "page.html"):
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(PAGE.format(font=FONT_CSS_URL, vega=VEGA_URL, jquery=JQUERY_URL, body=body))
    (root / "static" / "images").mkdir(parents=True)
    (root / "static" / "images" / "logo.png").write_bytes(b"png")
    return root


# ------------------------------------------------------------------------------------------------ the manifest
def test_the_manifest_pins_every_file_with_a_digest_and_replaces_each_cdn_address_once():
    packages = load_manifest()
    targets = [f.target for p in packages for f in p.files]
    urls = [u for p in packages for f in p.files for u in f.replaces]
    assert len(targets) == len(set(targets)) and len(urls) == len(set(urls))
    assert all(p.integrity.startswith("sha512-") and p.version[0].isdigit() for p in packages)
    assert all(len(f.sha256) == 64 and int(f.sha256, 16) >= 0 for p in packages for f in p.files)
    assert {"vega", "vega-lite", "vega-embed"} <= {p.name for p in packages}


# --------------------------------------------------------------------------------------------- localise_site
def test_a_site_links_the_local_copies_relative_to_each_page_without_cdn_attributes(tmp_path):
    root = site(tmp_path)
    result = localise_site(root, fake_packages(), vendor(tmp_path))
    index = (root / "index.html").read_text()
    deep = (root / "validations" / "a" / "b" / "page.html").read_text()
    assert '<script src="static/vendor/jquery/jquery.min.js"></script>' in index
    assert '<link rel="stylesheet" href="static/vendor/font/css/all.min.css">' in index
    assert '<script src="../../../static/vendor/jquery/jquery.min.js"></script>' in deep
    assert "integrity" not in index and "crossorigin" not in index
    # the stylesheet's font comes along with it
    assert (root / "static/vendor/font/webfonts/solid.woff2").read_bytes() == FILES["solid.woff2"]
    assert (root / "static/vendor/jquery/jquery.min.js").is_file()
    assert result.pages == 2 and result.localised == 4


def test_a_package_a_page_never_calls_is_dropped_and_kept_where_it_is_called(tmp_path):
    root = site(tmp_path)
    localise_site(root, fake_packages(), vendor(tmp_path))
    assert "vega" not in (root / "index.html").read_text() and not (root / "static/vendor/vega").exists()
    root = site(tmp_path / "charts", body="vegaEmbed('#c', spec)")
    localise_site(root, fake_packages(), vendor(tmp_path))
    assert '<script src="static/vendor/vega/vega.min.js"></script>' in (root / "index.html").read_text()


def test_an_address_without_a_local_copy_stays_and_is_reported(tmp_path):
    root = site(tmp_path)
    result = localise_site(root, fake_packages(), vendor(tmp_path, skip=("jquery/jquery.min.js",)))
    index = (root / "index.html").read_text()
    assert JQUERY_URL in index and "https://unknown.example/lib.js" in index
    assert result.left_remote == sorted([JQUERY_URL, "https://images.example/logo.png?d=123",
                                         "https://unknown.example/lib.js"])
    assert remote_addresses(index) == [JQUERY_URL, "https://unknown.example/lib.js",
                                       "https://images.example/logo.png?d=123"]


def test_a_mirrored_image_points_at_the_sites_own_file(tmp_path):
    root = site(tmp_path)
    result = localise_site(root, fake_packages(), vendor(tmp_path),
                           mirrored={"https://images.example/": root / "static" / "images"})
    assert '<img src="../../../static/images/logo.png">' in (root / "validations/a/b/page.html").read_text()
    assert result.left_remote == ["https://unknown.example/lib.js"]


# ------------------------------------------------------------------------------------------ the DVC template
def test_the_dvc_template_inlines_vega_and_leaves_out_dvcs_cdn_scripts(tmp_path):
    page = dvc_plots_template(fake_packages(), vendor(tmp_path))
    assert "{plot_divs}" in page and "{refresh_tag}" in page and "{scripts}" not in page
    positions = [page.index(FILES[name].decode()) for name in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")]
    assert positions == sorted(positions)  # vega-embed needs the other two
    assert "http" not in page.split("<body>")[0].replace("http-equiv", "")


def test_without_the_files_the_dvc_template_uses_the_cdn_and_says_so(tmp_path):
    page = dvc_plots_template(fake_packages(), vendor(tmp_path, skip=("vega-lite/vega-lite.min.js",)))
    assert "{scripts}" in page and "{plot_divs}" in page and "needs the network" in page
    assert FILES["vega.min.js"].decode() not in page


def test_a_script_that_would_break_the_template_is_refused(tmp_path):
    root = vendor(tmp_path)
    (root / "vega/vega.min.js").write_bytes(b"x='</script>'")
    packages = tuple(
        package("vega", [("build/vega.min.js", "vega/vega.min.js", b"x='</script>'", (VEGA_URL,))])
        if p.name == "vega" else p for p in fake_packages())
    with pytest.raises(RecopsError, match="</script"):
        dvc_plots_template(packages, root)


# ----------------------------------------------------------------------------------------------------- fetch
FAKE_NPM = """#!{python}
import io, json, os, sys, tarfile
spec = json.loads(os.environ["FAKE_NPM_PACKAGES"])
args = sys.argv[1:]
dest = args[args.index("--pack-destination") + 1]
out = []
for wanted in [a for a in args if "@" in a[1:]]:
    name, version = wanted.rsplit("@", 1)
    package = spec[name]
    filename = name + "-" + version + ".tgz"
    with tarfile.open(os.path.join(dest, filename), "w:gz") as archive:
        for path, payload in package["files"].items():
            data = payload.encode("latin-1")
            info = tarfile.TarInfo("package/" + path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    out.append({{"name": name, "version": version, "filename": filename, "integrity": package["integrity"]}})
print(json.dumps(out))
"""


def fake_npm(tmp_path: Path, monkeypatch, integrity: str = "sha512-fake", tamper: bool = False) -> str:
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir()
    npm.write_text(FAKE_NPM.format(python=sys.executable))
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    spec = {p.name: {"integrity": integrity,
                     "files": {f.source: (FILES[Path(f.target).name] + (b"!" if tamper else b"")).decode("latin-1")
                               for f in p.files}}
            for p in fake_packages()}
    monkeypatch.setenv("FAKE_NPM_PACKAGES", json.dumps(spec))
    return str(npm)


def test_fetch_writes_the_missing_files_and_then_has_nothing_to_do(tmp_path, monkeypatch):
    npm = fake_npm(tmp_path, monkeypatch)
    root = tmp_path / "vendor"
    assert len(fetch(fake_packages(), root, npm=npm)) == len(fake_packages())
    assert missing_files(fake_packages(), root) == []
    (root / "jquery/jquery.min.js").write_bytes(b"changed by hand")
    assert fetch(fake_packages(), root, npm=npm) == ["jquery@1.0.0"]
    assert fetch(fake_packages(), root, npm=npm) == []


def test_fetch_refuses_a_tarball_with_another_integrity(tmp_path, monkeypatch):
    npm = fake_npm(tmp_path, monkeypatch, integrity="sha512-" + base64.b64encode(b"other").decode())
    with pytest.raises(RecopsError, match="integrity"):
        fetch(fake_packages(), tmp_path / "vendor", npm=npm)


def test_fetch_refuses_a_file_with_another_digest_and_writes_nothing(tmp_path, monkeypatch):
    npm = fake_npm(tmp_path, monkeypatch, tamper=True)
    with pytest.raises(RecopsError, match="sha256"):
        fetch(fake_packages(), tmp_path / "vendor", npm=npm)
    assert not any(p.is_file() and not p.name.startswith(".") for p in (tmp_path / "vendor").rglob("*"))


def test_fetch_without_npm_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RecopsError, match="apt-get install npm"):
        fetch(fake_packages(), tmp_path / "vendor", npm="npm")
