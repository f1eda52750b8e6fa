"""docs/course.md and docs/course.zh-CN.md: every `tudui ...` line parses with the real CLI (subcommand, flags,
choices, types), every `tudui.x.y` they name exists, every file they link to exists, and both pages give the same
commands, so neither can drift from the code or from the other."""
import importlib
import re
import shlex

import pytest

from tests.conftest import REPO
from tudui.cli import COMMANDS, build_parser

DOCS = [REPO / "docs" / "course.md", REPO / "docs" / "course.zh-CN.md"]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def commands(text: str) -> list[str]:
    """`tudui ...` lines of fenced blocks (comments dropped) and of inline code spans, in order."""
    found = [line.split("  #")[0].strip() for block in FENCE.findall(text) for line in block.splitlines()]
    found = [c for c in found if c.startswith("tudui ")]
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
    return found + [s.strip() for s in spans if s.startswith("tudui ")]


def api_names(text: str) -> set[str]:
    return {m.rstrip(".") for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
            for m in re.findall(r"\btudui(?:\.[A-Za-z_]\w*)+", span)}


def resolve(dotted: str):
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_parses(doc):
    cmds = commands(doc.read_text(encoding="utf-8"))
    assert len(cmds) >= 30, cmds  # a table row per lesson, each with its line
    parser = build_parser()
    for cmd in cmds:
        argv = shlex.split(cmd)[1:]
        assert argv[0] in COMMANDS, cmd
        if len(argv) == 1:
            continue  # a command named in prose ("`tudui convert` turns ..."): existing is all it can do
        try:
            _, unknown = parser.parse_known_args(argv)
        except SystemExit:  # argparse printed why: a bad choice, a missing argument, a wrong type
            pytest.fail(f"{doc.name}: `{cmd}` does not parse")
        assert not unknown, f"{doc.name}: `{cmd}`: unknown {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_api_and_links_exist(doc):
    text = doc.read_text(encoding="utf-8")
    names = api_names(text)
    assert {"tudui.register_model", "tudui.create_model", "tudui.data.eval_transforms"} <= names
    for name in names:
        assert resolve(name) is not None, name
    for link in re.findall(r"\]\((?!https?:)([^)#]+)\)", text):
        assert (doc.parent / link).exists(), f"{doc.name} links to {link}, which does not exist"


def test_both_languages_give_the_same_commands_and_no_todo_is_left():
    en, zh = (d.read_text(encoding="utf-8") for d in DOCS)
    assert commands(en) == commands(zh)
    assert "TODO" not in en and "TODO" not in zh


def test_every_convert_line_of_the_readmes_and_docs_parses():
    """`tudui convert` has a required --out: a line without it (placeholders such as FILE and NAME are fine) would
    stop a reader who copies it with argparse's usage error."""
    parser = build_parser()
    pages = [REPO / "README.md", REPO / "README.zh-CN.md", *sorted((REPO / "docs").glob("*.md"))]
    lines = [(p.name, c) for p in pages for c in commands(p.read_text(encoding="utf-8"))
             if c.startswith("tudui convert ")]
    assert len(lines) >= 6, lines
    for page, cmd in lines:
        try:
            parser.parse_known_args(shlex.split(cmd)[1:])
        except SystemExit:
            pytest.fail(f"{page}: `{cmd}` does not parse")
