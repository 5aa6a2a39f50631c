"""The newcomer's documents: a README that reads in five minutes, links that lead somewhere, and
a parameters page that is the code's own table."""

import re
from pathlib import Path

import pytest

from pipelines import param_docs

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
README_LIMIT = 10_000  # characters (issue 27): the rest lives in docs/

# [text](target) links, and code spans that name a docs/ page.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOCS_PATH = re.compile(r"`(docs/[^`#\s]+)`")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '#' in code is no heading
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def local_links(page: Path) -> list[tuple[str, Path, str]]:
    """(as written, the file it names, its anchor) for every link that is not a URL."""
    text = page.read_text()
    found = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        found.append((target, (page.parent / path).resolve() if path else page, anchor))
    return found


def test_the_readme_is_at_most_10000_characters():
    size = len(README.read_text())
    assert size <= README_LIMIT, f"README.md has {size:,} characters; move detail to docs/"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_local_link_resolves(page):
    broken = []
    for written, target, anchor in local_links(page):
        if not target.exists():
            broken.append(f"{written}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{written}: no heading with anchor #{anchor} in {target.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_every_docs_page_the_readme_names_exists():
    text = README.read_text()
    named = set(DOCS_PATH.findall(text)) | {t for t in LINK.findall(text) if t.startswith("docs/")}
    assert named, "the README names no docs/ page"
    missing = sorted(n for n in named if not (REPO / n.partition("#")[0]).exists())
    assert not missing, f"README.md names missing pages: {missing}"


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {target for _, target, _ in local_links(README)}
    orphans = [p.name for p in DOCS if p.resolve() not in linked]
    assert not orphans, f"docs/ pages the README does not link: {orphans}"


def test_the_parameters_page_is_generated_from_the_code():
    committed = (REPO / "docs" / "parameters.md").read_text()
    assert committed == param_docs.render(), (
        "docs/parameters.md is out of date: run `make docs` (python -m pipelines.param_docs > docs/parameters.md)")


def test_the_parameters_page_has_every_parameter_and_profile_value():
    from pipelines.pipeline import PARAMETERS
    from pipelines.profiles import PROFILES

    rows = {line.split(" | ")[0].strip("| `"): line for line in param_docs.render().splitlines()
            if line.startswith("| `")}
    assert list(rows) == list(PARAMETERS)
    for values in PROFILES.values():
        for name, value in values.items():
            assert param_docs.cell(value) in rows[name], name


def test_slug_matches_githubs_anchors():
    assert slug("The quick profile") == "the-quick-profile"
    assert slug("`make run` on a Zen 3, 2026-12-03") == "make-run-on-a-zen-3-2026-12-03"
    assert slug("Model quality (`benchmarks/quality.py`)") == "model-quality-benchmarksqualitypy"
    assert slug("The `val_every` knob") == "the-val_every-knob"
