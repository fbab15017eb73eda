"""The docs a newcomer reads: every relative link in the Markdown files resolves (file and #anchor), the README
stays short with a contents list, and no page cites a document the repository does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.common import ROOT

PAGES = sorted([ROOT / n for n in ("README.md", "ARCHITECTURE.md", "BENCHMARKS.md", "SECURITY.md")
                if (ROOT / n).is_file()] + list((ROOT / "docs").rglob("*.md")))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def _text(page: Path) -> str:
    return FENCE.sub("", page.read_text(encoding="utf-8"))  # links inside code blocks are not links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\w)|(?<=\w)_", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)          # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _text(page).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    out |= set(re.findall(r'<a (?:name|id)="([^"]+)"', page.read_text(encoding="utf-8")))
    return out


def test_there_are_pages_to_check():
    assert ROOT / "README.md" in PAGES and len([p for p in PAGES if p.parent.name == "docs"]) >= 5


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    bad = []
    for target in LINK.findall(_text(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # http(s):, mailto: … are not checked (no network here)
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}:\n" + "\n".join(bad)


def test_readme_is_short_and_lists_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "README.md grew past 250 lines: move the detail to a page in docs/"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(_text(ROOT / "README.md"))}
    missing = [p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not missing, f"README.md's contents do not link: {missing}"


def test_no_file_cites_a_document_the_repository_lacks():
    cited = re.compile(r"\b([A-Z][A-Z_]+\.md)\b")
    bad = []
    files = [p for d in ("src", "bundle", "export", "runtime", "device_agent", "mqtt", "fleet", "bench", "tests",
                         "scripts", "docs", "examples") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".md", ".sh", ".toml") and "corpus" not in p.parts]
    for p in files + PAGES:
        for name in set(cited.findall(p.read_text(encoding="utf-8", errors="replace"))):
            if not (ROOT / name).is_file() and not (ROOT / "docs" / name).is_file() and not (p.parent / name).is_file():
                bad.append(f"{p.relative_to(ROOT)} cites {name}")
        if re.search(r"\bDESIGN \N{SECTION SIGN}", p.read_text(encoding="utf-8", errors="replace")):
            bad.append(f"{p.relative_to(ROOT)} cites a section of a design document the repository lacks")
    assert not bad, "\n".join(sorted(bad))


def test_no_bench_patches_sys_path():
    bad = [str(p.relative_to(ROOT)) for p in (ROOT / "bench").rglob("*.py")
           if re.search(r"sys\.path\.(insert|append)|sys\.path\[", p.read_text(encoding="utf-8"))]
    assert not bad, f"run benches as modules (python -m bench.NAME) instead of patching sys.path: {bad}"
