"""Every file a doc points to exists in the repository.

For README.md and every docs/*.md:

* every relative Markdown link or image `[text](path)` resolves, relative to the doc's folder
  (anchors `#...` are stripped; `http(s)://` and `mailto:` targets are skipped);
* every repository path written in code (inline backticks or fenced blocks) that looks like a
  file or folder — a token such as `docs/spec.md`, `examples/triangular.toml`,
  `proofs_check/models/*.toml` or `tests/theory/` — resolves from the repository root (a glob
  must match at least one file);
* no doc mentions THEORY.md, which is not part of the repository: notation and claims live in
  docs/theory.md.

Names that are outputs of a command or chosen by the user are let through by the explicit
allow-list ``NOT_IN_REPOSITORY`` below, each with its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Path-like names in the docs that are deliberately not files of the repository.
NOT_IN_REPOSITORY: dict[str, str] = {
    "./gapcheck-report/": "default output folder of `gapcheck verify`",
    "gapcheck-report/report.md": "written by `gapcheck verify`",
    "report.md": "written by `gapcheck verify` (docs/report.md describes it)",
    "report.json": "written by `gapcheck verify`",
    "my.toml": "the user's own spec in the examples",
    "out.json": "the user's chosen output file in the examples",
    "cert.json": "the user's chosen output file of gapcheck certify in the examples",
    "SPEC.toml": "placeholder for any spec file",
}

#: File extensions that make a code token look like a file name.
FILE_EXT = r"(?:md|py|toml|json|png|svg|txt|yml|yaml|cfg|ini|csv|sh|ipynb)"
#: A path-like token: folders and a file name with a known extension, or a folder ending in '/'.
PATH_TOKEN = re.compile(rf"^(?:\./)?(?:[\w.*-]+/)*(?:[\w.*-]+\.{FILE_EXT}(?:/\.\w+)?|[\w.-]+/)$")
MD_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def markdown_links(text: str) -> list[str]:
    """Targets of `[..](target)` links outside code, with anchors stripped; URLs skipped."""
    prose = FENCE.sub("", text)
    prose = INLINE_CODE.sub("", prose)
    out = []
    for target in MD_LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
            continue
        path = target.split("#", 1)[0]
        if path:
            out.append(path)
    return out


def code_paths(text: str) -> list[str]:
    """Path-like tokens in fenced code blocks and inline code spans."""
    chunks = [m.group(0) for m in FENCE.finditer(text)]
    chunks += INLINE_CODE.findall(FENCE.sub("", text))
    out = []
    for chunk in chunks:
        for token in re.split(r"[\s\"'=<>|]+", chunk):
            token = token.split("::", 1)[0].strip("(),;:[]`")
            if token.startswith(("/", "~", "-")) or "://" in token:
                continue
            if PATH_TOKEN.match(token):
                out.append(token)
    return out


def exists(base: Path, path: str) -> bool:
    if any(ch in path for ch in "*?["):
        return any(base.glob(path))
    return (base / path).exists()


def _doc_id(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.mark.parametrize("doc", documents(), ids=_doc_id)
def test_markdown_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = [t for t in markdown_links(text) if not exists(doc.parent, t)]
    assert not broken, f"{_doc_id(doc)}: links to missing files: {broken}"


@pytest.mark.parametrize("doc", documents(), ids=_doc_id)
def test_code_paths_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = sorted({t for t in code_paths(text) if t not in NOT_IN_REPOSITORY and not exists(ROOT, t)})
    assert not missing, f"{_doc_id(doc)}: names files that are not in the repository: {missing}"


def _theory_md_params() -> list:
    return [pytest.param(doc, id=_doc_id(doc)) for doc in documents()]


@pytest.mark.parametrize("doc", _theory_md_params())
def test_no_doc_cites_theory_md(doc: Path) -> None:
    lines = [i + 1 for i, line in enumerate(doc.read_text(encoding="utf-8").splitlines()) if "THEORY.md" in line]
    assert not lines, f"{_doc_id(doc)} cites THEORY.md (not in the repository; use docs/theory.md) on lines {lines}"


def test_theory_md_is_listed_in_readme() -> None:
    assert "(docs/theory.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_allow_list_is_used() -> None:
    """Every allow-listed name still occurs in some doc, so the list cannot grow stale."""
    used = set()
    for doc in documents():
        used.update(code_paths(doc.read_text(encoding="utf-8")))
    assert not set(NOT_IN_REPOSITORY) - used, f"unused allow-list entries: {sorted(set(NOT_IN_REPOSITORY) - used)}"
