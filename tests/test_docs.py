"""The docs run as written: every fenced ```python block of README.md and docs/*.md is executed.

The blocks of one file run in order in one namespace (a later block may use what an earlier one
defined), in a temporary working directory. Two HTML comments, invisible when rendered, steer it
(docs/verification.md, "Docs that run"):

- ``<!-- not-run: REASON -->`` on the line right before a fence skips that block (an excerpt of
  internal code, a recipe that needs a GPU); the reason is required;
- ``<!-- docs-test: slow -->`` anywhere in a file runs its blocks in the slow lane only.
"""
from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->\s*$")
SLOW = "<!-- docs-test: slow -->"


def blocks(text: str) -> list:
    """[(line number of the fence, code, reason it is not run or None)] of the ```python blocks."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, j = i, i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            prev = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            m = NOT_RUN.match(prev)
            out.append((start + 1, "\n".join(lines[i + 1:j]) + "\n", m.group(1) if m else None))
            i = j
        i += 1
    return out


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def _params():
    out = []
    for name in FILES:
        text = _read(name)
        if not any(reason is None for _, _, reason in blocks(text)):
            continue
        marks = [pytest.mark.slow] if SLOW in text else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.interp                      # the recipes run kernels in Triton's interpreter
@pytest.mark.parametrize("name", _params())
def test_python_blocks_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIXIR_TUNING_DB", str(tmp_path / "tuning_db"))
    ns = {"__name__": "__docs__"}
    for line, code, reason in blocks(_read(name)):
        if reason is not None:
            continue
        try:
            exec(compile(code, f"{name}:{line}", "exec"), ns)   # noqa: S102 - the docs' own code
        except Exception as e:
            raise AssertionError(f"{name}, the block at line {line} fails: {type(e).__name__}: {e}") from e


def test_markers_parse_and_say_why():
    text = ("x\n<!-- not-run: needs a GPU -->\n```python\nraise SystemExit\n```\n\n```python\ny = 1\n```\n"
            "<!-- not-run: -->\n```python\nz\n```\n")
    got = blocks(text)
    assert [(ln, reason) for ln, _, reason in got] == [(3, "needs a GPU"), (7, None), (11, "")]
    assert got[1][1] == "y = 1\n"
    bad = [f"{n}:{ln}" for n in FILES for ln, _, reason in blocks(_read(n)) if reason == ""]
    assert bad == [], "a not-run marker without a reason"
    assert len(blocks(_read("README.md"))) >= 2


def test_library_doc_lists_every_registered_name():
    from mixir.library import MIXERS
    from mixir.library.attention import MASKS
    text = _read("docs/library.md")
    missing = [n for n in list(MIXERS) + list(MASKS) + ["lssl", "lmu"] if f"`{n}`" not in text]
    assert missing == []


def test_docs_cite_only_files_in_the_repository():
    bad = []
    for name in FILES + ["benchmarks/README.md"]:
        text = _read(name)
        bad += [f"{name}: {m.group(0)}" for m in re.finditer(r"/work/\S*|design\.md", text)]
        for m in re.finditer(r"\]\(([^)#\s]+)", text):
            target = m.group(1)
            if not target.startswith(("http://", "https://")) and not os.path.exists(
                    os.path.join(ROOT, os.path.dirname(name), target)):
                bad.append(f"{name}: link to {target}")
    assert bad == []
