"""docs/ stays true to the repository: the tests it names exist, every "§" citation of
docs/protocol.md or docs/architecture.md (in code, tests or docs) names a real section, every
relative link of the README and docs/ leads to a file and heading that exist, and nothing cites
a document outside the repository."""
from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = {name: (REPO_ROOT / "docs" / name).read_text() for name in ("protocol.md", "architecture.md")}
SEARCHED = ("jetstream", "tests", "bench", "fuzz", "soak", "docs", "contrib", "systemd", ".ci")
SEARCHED_FILES = ("README.md", "Makefile", "setup.py", "pyproject.toml", "MANIFEST.in")
TEXT_SUFFIXES = {".py", ".pyx", ".pxd", ".md", ".toml", ".json", ".service", ".cfg", ""}

TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")
DOC_CITATION = re.compile(r"(protocol|architecture)\.md\)? (§\d+(?:\.\d+)?)")
BARE_SECTION = re.compile(r"(?<![\w.)] )§(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (§\d+(?:\.\d+)?) ", re.M)
# Built from parts so this file does not match itself.
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
MARKDOWN_HEADING = re.compile(r"^#{1,6} (.+)$", re.M)
OUTSIDE_CITATIONS = re.compile("|".join([
    r"\.\./" + "shared", "V1-" + "REFERENCE", "V2-" + "LESSONS", "DESIGN ?" + "§", "DESIGN" + r"\.md",
    "STYLE" + r"\.md", "JETSTREAM_" + "SHARED_DIR", r"DESIGN " + "invariant",
]))


def sections(doc: str) -> set[str]:
    return set(HEADING.findall(DOCS[doc]))


def repository_texts():
    paths = [REPO_ROOT / name for name in SEARCHED_FILES]
    for folder in SEARCHED:
        paths += [p for p in (REPO_ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for path in paths:
        if path.exists() and path.suffix in TEXT_SUFFIXES and "data" not in path.relative_to(REPO_ROOT).parts[:2]:
            yield path, path.read_text(errors="replace")


def test_every_test_the_docs_name_exists():
    missing = []
    for name, text in DOCS.items():
        for path, function in TEST_REFERENCE.findall(text):
            test_file = REPO_ROOT / path
            if not test_file.exists():
                missing.append(f"{name}: {path}")
            elif function and not re.search(rf"^(async )?def {function}\(", test_file.read_text(), re.M):
                missing.append(f"{name}: {path}::{function}")
    assert not missing


def test_sections_are_numbered_once_each():
    for name, text in DOCS.items():
        headings = HEADING.findall(text)
        assert len(headings) == len(set(headings)) >= 8, name


def test_every_citation_of_a_docs_section_resolves():
    unresolved = []
    for path, text in repository_texts():
        for doc, section in DOC_CITATION.findall(text):
            if section not in sections(f"{doc}.md"):
                unresolved.append(f"{path.relative_to(REPO_ROOT)}: {doc}.md {section}")
    for name, text in DOCS.items():
        # A bare "§N.M" inside a doc means a section of that same doc.
        cited_elsewhere = {section for _, section in DOC_CITATION.findall(text)}
        for number in BARE_SECTION.findall(text):
            section = f"§{number}"
            if section not in sections(name) and section not in cited_elsewhere:
                unresolved.append(f"docs/{name}: {section}")
    assert not unresolved


def test_code_cites_sections_of_our_docs_or_of_an_rfc_only():
    """A bare "§N" in code or tests used to point at documents outside the repository."""
    uncited = []
    for path, text in repository_texts():
        if path.suffix not in (".py", ".pyx", ".pxd"):
            continue
        for match in re.finditer(r"§\d", text):
            before = text[max(0, match.start() - 40):match.start()]
            if not re.search(r"(protocol\.md|architecture\.md|RFC ?\d+)[ §\d.,and]*$", before):
                uncited.append(f"{path.relative_to(REPO_ROOT)}:{text[:match.start()].count(chr(10)) + 1}")
    assert not uncited


def test_nothing_cites_a_document_outside_the_repository():
    hits = [f"{path.relative_to(REPO_ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
            for path, text in repository_texts() if path.name != Path(__file__).name
            for m in OUTSIDE_CITATIONS.finditer(text)]
    assert not hits


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a document's headings (lowercase, punctuation dropped, spaces to -)."""
    anchors: set[str] = set()
    for heading in MARKDOWN_HEADING.findall(re.sub(r"```.*?```", "", markdown, flags=re.S)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, suffix = slug, 1
        while anchor in anchors:
            anchor, suffix = f"{slug}-{suffix}", suffix + 1
        anchors.add(anchor)
    return anchors


def test_every_relative_link_of_the_readme_and_docs_resolves():
    """Sections moved between README.md and docs/ leave no link behind that leads nowhere."""
    broken = []
    for source in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]:
        text = source.read_text()
        for target in MARKDOWN_LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s): an address, not a file of ours
            path, _, anchor = target.partition("#")
            linked = (source.parent / path).resolve() if path else source
            if not linked.exists():
                broken.append(f"{source.relative_to(REPO_ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
                broken.append(f"{source.relative_to(REPO_ROOT)}: {target} (no such heading)")
    assert not broken
