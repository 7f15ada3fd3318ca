"""Write plots.html, the page `dvc plots show` fills in (`plots.html_template` in .dvc/config), with
vega, vega-lite and vega-embed inlined so that the plots draw without the internet, and the licence
texts beside it: LICENSE.vega, LICENSE.vega-lite, LICENSE.vega-embed, and THIRD-PARTY.txt for the
packages their browser builds bundle (d3 and others, read from the builds' source maps).

To update them:

    cd "$(mktemp -d)" && npm install --ignore-scripts vega@5 vega-lite@5 vega-embed@6 \
        fast-json-stable-stringify@2
    python /path/to/autocoder/vendor/vega/build.py node_modules

The page keeps DVC's placeholders {refresh_tag} and {plot_divs} but not {scripts}, where DVC would
put its <script src="https://cdn.jsdelivr.net/..."> tags.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js",
            "vega-embed": "build/vega-embed.min.js"}
# The source maps that name what each build bundles (vega-lite's minified build has none; its
# unminified build bundles the same sources).
MAPS = {"vega": "build/vega.min.js.map", "vega-lite": "build/vega-lite.js.map",
        "vega-embed": "build/vega-embed.min.js.map"}
# Packages not bundled but adapted in the builds' own code.
ADAPTED = {"fast-json-stable-stringify": "vega-lite's stringify (src/util.ts) is adapted from it"}
# Placeholders DVC replaces anywhere in the page, and strings that would end or upset an inline script.
FORBIDDEN = ["{plot_divs}", "{scripts}", "{refresh_tag}", "</script", "<!--"]

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <!-- Autocoder's page for `dvc plots show` (.dvc/config: plots.html_template): it draws the
         plots without the internet, with the browser builds of
         {versions} inlined below.
         Their licences (BSD-3-Clause): vendor/vega/LICENSE.*; what the builds bundle, with its
         licences: vendor/vega/THIRD-PARTY.txt. Written by vendor/vega/build.py. -->
    {refresh_tag}
    <title>Autocoder plots</title>
{scripts}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def package_dir(modules: Path, name: str) -> Path:
    """node_modules/<name>, or a copy npm nested under another package."""
    if (modules / name / "package.json").is_file():
        return modules / name
    nested = sorted(modules.glob(f"**/node_modules/{name}/package.json"), key=lambda p: len(p.parts))
    if not nested:
        raise SystemExit(f"{name} is not installed in {modules}")
    return nested[0].parent


def package_json(modules: Path, name: str) -> dict:
    return json.loads((package_dir(modules, name) / "package.json").read_text())


def licence_file(modules: Path, name: str) -> Path | None:
    found = sorted(p for p in package_dir(modules, name).iterdir()
                   if re.match(r"(licen[cs]e|copying)", p.name, re.IGNORECASE))
    return found[0] if found else None


def in_vega_monorepo(modules: Path, name: str) -> bool:
    repo = package_json(modules, name).get("repository")
    return (repo.get("url", "") if isinstance(repo, dict) else repo or "").endswith("vega/vega")


def licence_text(modules: Path, name: str) -> str:
    path = licence_file(modules, name)
    if path is None and in_vega_monorepo(modules, name):
        # vega's own package and some of its monorepo's ship no LICENSE file; vega-view ships the
        # monorepo's.
        path = licence_file(modules, "vega-view")
    if path is None:
        raise SystemExit(f"no licence file in {package_dir(modules, name)}")
    return path.read_text().strip() + "\n"


def bundled(modules: Path, name: str) -> set[str]:
    """The npm packages a build bundles: node_modules/<package>/... in its source map, and the vega
    monorepo's packages (../../vega-util/... in vega's map)."""
    sources = json.loads((package_dir(modules, name) / MAPS[name]).read_text())["sources"]
    found = set()
    for source in sources:
        inside = re.findall(r"node_modules/((?:@[^/]+/)?[^/]+)", source)
        if inside:
            found.add(inside[-1])
        elif name == "vega" and (m := re.match(r"(?:\.\./)+(vega-[^/]+)/", source)):
            found.add(m.group(1))
    return found - set(PACKAGES)


def main(modules: Path) -> None:
    versions = {name: package_json(modules, name)["version"] for name in PACKAGES}
    scripts = []
    for name, build in PACKAGES.items():
        js = (package_dir(modules, name) / build).read_text(encoding="utf8")
        js = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "", js)  # the maps are not beside the page
        for bad in FORBIDDEN:
            if bad in js:
                raise SystemExit(f"{name}/{build} contains {bad!r}: it cannot be inlined as it is")
        scripts.append(f"    <!-- {name} {versions[name]}, {build} -->\n    <script>{js}</script>")
    listed = ", ".join(f"{name} {version}" for name, version in versions.items())
    page = (PAGE.replace("{versions}", listed).replace("{scripts}", "\n".join(scripts)))
    (HERE / "plots.html").write_text(page, encoding="utf8")

    for name in PACKAGES:
        (HERE / f"LICENSE.{name}").write_text(licence_text(modules, name))

    notes = [f"What the browser builds inlined in plots.html ({listed})\nbundle, with each package's "
             "licence (the version is the one npm installed with them).\n"]
    for name in sorted(set().union(*(bundled(modules, p) for p in PACKAGES))):
        meta = package_json(modules, name)
        head = f"{name} {meta['version']} ({meta.get('license', 'see below')})"
        if licence_text(modules, name) == licence_text(modules, "vega"):
            notes.append(f"{'=' * 80}\n{head}: the licence in LICENSE.vega\n")
        else:
            notes.append(f"{'=' * 80}\n{head}\n\n{licence_text(modules, name)}")
    for name, why in ADAPTED.items():
        meta = package_json(modules, name)
        notes.append(f"{'=' * 80}\n{name} {meta['version']} ({meta['license']}): {why}\n\n"
                     f"{licence_text(modules, name)}")
    (HERE / "THIRD-PARTY.txt").write_text("\n".join(notes))
    print(f"plots.html: {listed}, {(HERE / 'plots.html').stat().st_size:,} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
