"""`dvc plots show` draws without the internet: .dvc/config points DVC at vendor/vega/plots.html, which
has vega, vega-lite and vega-embed inlined, where DVC's own page loads them from a CDN. Real DVC on the
project's committed plots CSVs (plots/finetune.csv, benchmarks/results/learning_curve_*.csv)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from helpers import ROOT, run

TEMPLATE = ROOT / "vendor" / "vega" / "plots.html"
MAX_BYTES = 3_000_000
# Anything that would make a browser fetch a script or a page part from elsewhere.
REMOTE = re.compile(
    r"<script[^>]*\ssrc\s*=|<link[^>]*\shref\s*=\s*[\"']?(https?:)?//|cdn\.|jsdelivr|unpkg", re.IGNORECASE
)


def plot_names() -> list[str]:
    """The ids DVC gives the plots of dvc.yaml: its top-level plots' names, and each stage's plots
    file with / and . as _ (plots/finetune.csv: plots_finetune_csv)."""
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    names = [next(iter(p)) if isinstance(p, dict) else p for p in dvc_yaml["plots"]]
    for stage in dvc_yaml["stages"].values():
        for plot in stage.get("plots", []):
            names.append(re.sub(r"[/.]", "_", next(iter(plot)) if isinstance(plot, dict) else plot))
    return names


def show(out: Path, *args: str) -> str:
    result = run(["dvc", "plots", "show", "-o", str(out), *args], ROOT)
    assert (out / "index.html").as_uri() in result.stdout
    return (out / "index.html").read_text(encoding="utf8")


def test_plots_show_inlines_vega_and_loads_nothing(tmp_path):
    page = show(tmp_path / "plots")  # as the README says it: no --html-template, .dvc/config's page

    assert not REMOTE.search(page), REMOTE.search(page)
    libraries = re.findall(r"<!-- (vega[\w-]*) \d+\.\d+\.\d+, (build/[\w.-]+) -->\n\s*<script>", page)
    assert libraries == [
        ("vega", "build/vega.min.js"),
        ("vega-lite", "build/vega-lite.min.js"),
        ("vega-embed", "build/vega-embed.min.js"),
    ]
    assert page.count("<script>") == 3  # the three libraries, inlined
    for global_name in (".vega={}", ".vegaLite={}", ".vegaEmbed="):  # their UMD builds' globals
        assert global_name in page
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        assert placeholder not in page

    names = plot_names()
    assert {"loss", "dev_bits_per_byte", "learning_curve_minutes", "plots_finetune_csv"} <= set(names)
    for name in names:
        assert f'<div id = "{name}">' in page, name
        assert f"vegaEmbed('#{name}', spec);" in page, name
    # Each plot's data is in the page: the committed CSVs' columns.
    for column in ("train_loss", "dev_bits_per_byte", "tokens_per_s"):
        assert f'"{column}"' in page

    size = (tmp_path / "plots" / "index.html").stat().st_size
    assert TEMPLATE.stat().st_size < size < MAX_BYTES, size


def test_dvc_default_page_would_load_vega_from_a_cdn(tmp_path):
    """What the template replaces: DVC's own page (dvc_render's PAGE_HTML) gets script tags pointing at
    a CDN, so the check above has something to catch."""
    from dvc_render.html import PAGE_HTML

    default = tmp_path / "default.html"
    default.write_text(PAGE_HTML)
    page = show(tmp_path / "plots", "--html-template", str(default))
    assert re.search(r'<script src="https://cdn\.jsdelivr\.net/npm/vega@', page)
    assert REMOTE.search(page)


def test_template_ships_with_its_licences():
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"^\s*html_template = \.\./vendor/vega/plots\.html$", config, re.MULTILINE)
    head = TEMPLATE.read_text(encoding="utf8")[:2000]
    versions = dict(re.findall(r"(vega(?:-lite|-embed)?) (\d+\.\d+\.\d+)", head.split("-->")[0]))
    assert set(versions) == {"vega", "vega-lite", "vega-embed"}, head
    for name in versions:
        text = (TEMPLATE.parent / f"LICENSE.{name}").read_text()
        assert "University of Washington Interactive Data Lab" in text
        assert "Redistribution and use in source and binary forms" in text  # BSD-3-Clause
    third_party = (TEMPLATE.parent / "THIRD-PARTY.txt").read_text()
    for bundled in ("d3-array", "d3-scale-chromatic", "topojson-client", "fast-json-patch", "semver"):
        assert f"\n{bundled} " in third_party
    assert TEMPLATE.stat().st_size < MAX_BYTES
    assert "/dvc_plots/" in (ROOT / ".gitignore").read_text().split()
