"""The project's text is a manual and a record dated by day and commit: no development sessions,
no issue numbers, a README a user reads through."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP = {".venv", "build", ".git", "node_modules"}
# "session" as development history; the word is fine as an API name (ort.InferenceSession,
# an RTSP session, pytest's scope="session")
HISTORY = re.compile(
    r"\bsessions?[ -]\d+|\b(?:this|that|earlier|previous|last|next|later|same|one|every)\s+sessions?\b"
    r"|\bissues? #?\d+|(?<![\w/])#\d{1,3}\b(?!:)",
    re.IGNORECASE,
)


def files(pattern: str):
    return [p for p in ROOT.rglob(pattern) if not SKIP & set(p.relative_to(ROOT).parts)]


def test_docs_name_no_sessions():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    hits = [
        f"{p.name}:{i}"
        for p in docs
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\bsessions?\b", line, re.IGNORECASE)
    ]
    assert not hits, f"development sessions named in the docs: {hits[:10]}"


def test_code_names_no_development_history():
    hits = []
    for p in files("*.py"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if p.name != "test_docs.py" and HISTORY.search(line):
                hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert not hits, "\n".join(hits[:20])


def test_readme_is_a_manual_of_at_most_300_lines():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for section in ("make demo", "make test", "docs/architecture.md"):
        assert section in text
