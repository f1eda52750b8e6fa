"""README.md, README.zh-CN.md and docs/*.md against the code: every `tudui ...` line they show parses with the real
CLI parser, docs/layout.md names every module of src/tudui (and nothing else), and every relative link leads to a
file (and heading) that exists.

Placeholders in command lines are filled in before parsing, by one rule:
  * `[--opt X]`      optional parts are parsed as if given (the brackets are dropped);
  * `a|b|c`          alternatives are each parsed (one command line per alternative);
  * `NAME`, `FILE`   an ALL-CAPS word (`DEFAULT` aside, a real value) stands for a value: it becomes the first of
                     the option's choices, or a number or word its type accepts (positionals get a word);
  * `...`            elided values: after an option still waiting for its value it becomes one as above, else it is
                     dropped (`PATH...` is `PATH`);
  * an option at the end of a line without its value (`tudui train --resume`, named in prose) gets one as above;
  * `--help`, `-h`, `--version` are dropped (parsing them would print and exit);
  * a line naming only a command (`tudui convert`, `tudui data check`, `tudui lr-find ...`,
    `tudui predict/eval/export`) is prose: each command named must exist, and nothing is parsed.
Skipped, with the reason in SKIPPED: a line whose command is itself a placeholder (`tudui --debug COMMAND ...`).
Parsing runs nothing: `parse_known_args` only, no command function is called.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO
from tudui.cli import COMMANDS, build_parser

DOCS = [REPO / "README.md", REPO / "README.zh-CN.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
LITERALS = {"DEFAULT"}  # `--weights DEFAULT` is a value tudui reads, not a placeholder
HELP_FLAGS = {"--help", "-h", "--version"}
SKIPPED = {"placeholder command": "the command itself is a placeholder (`tudui --debug COMMAND ...`)"}


def rel(doc: Path) -> str:
    return doc.relative_to(REPO).as_posix()


# --- command lines ---------------------------------------------------------------------------------------------------
def tudui_part(line: str) -> str | None:
    """The `tudui ...` command in a shell line (`tudui x`, `python -m tudui x`, `torchrun ... -m tudui x`)."""
    line = line.strip()
    if line.startswith("tudui "):
        return line
    m = re.search(r"(?:^|\s)-m tudui (.*)$", line)
    return f"tudui {m.group(1)}" if m else None


def commands(text: str) -> list[str]:
    """`tudui ...` lines of fenced blocks (comments dropped, continuation lines joined, `&&` split) and of inline code
    spans, in order."""
    found = []
    for block in FENCE.findall(text):
        lines: list[str] = []
        for raw in block.splitlines():
            line = raw.split("  #")[0].rstrip()
            # a `\` continuation, or an indented line of options under a command (`[--max-batch 32] ...`)
            if lines and (lines[-1].endswith("\\") or (raw[:1].isspace() and line.strip()[:1] in "[-")):
                lines[-1] = lines[-1].rstrip("\\").rstrip() + " " + line.strip()
            else:
                lines.append(line)
        for line in lines:
            for part in line.split(" && "):
                cmd = tudui_part(part)
                if cmd:
                    found.append(cmd)
    spans = SPAN.findall(FENCE.sub("", text))
    return found + [s.replace("\\|", "|").strip() for s in spans if s.startswith("tudui ")]


def leaf_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, int]:
    """The (sub)parser that reads the options after the command words (`data export` -> data's export parser), and
    how many command words there are."""
    depth = 0
    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or token not in subs[0].choices:
            break
        parser, depth = subs[0].choices[token], depth + 1
    return parser, depth


def sample(action: argparse.Action | None) -> str:
    """A value the option accepts, standing for a placeholder."""
    if action is None or (action.type is None and not action.choices):
        return "x"
    if action.choices:
        return str(next(iter(action.choices)))
    for value in ("1", "0.5", "x"):
        try:
            action.type(value)
            return value
        except Exception:
            continue
    return "x"


def argvs(cmd: str, parser: argparse.ArgumentParser) -> list[list[str]] | str:
    """The argument lists `cmd` stands for, [] for a command named in prose, or a SKIPPED key."""
    tokens = [t.strip("[]") for t in shlex.split(cmd)[1:]]
    tokens = [t for t in tokens if t and t not in HELP_FLAGS]
    lead = []  # global flags before the command
    while tokens and tokens[0] == "--debug":
        lead.append(tokens.pop(0))
    if tokens and PLACEHOLDER.match(tokens[0]):
        return "placeholder command"
    words = [t[:-3] if len(t) > 3 and t.endswith("...") else t for t in tokens]
    if not words:
        return []  # `tudui --help`
    if "/" in words[0]:
        assert all(n in COMMANDS for n in words[0].split("/")) and len(words) == 1, f"`{cmd}`: no such command"
        return []
    leaf, depth = leaf_parser(parser, words)
    assert depth, f"`{cmd}`: no such command"
    if depth == len([w for w in words if w != "..."]):
        return []  # only command words: `tudui convert`, `tudui data check` named in prose
    out: list[list[str]] = []
    for choice in itertools.product(*[w.split("|") if "|" in w else [w] for w in words]):
        argv, waiting = [], None  # waiting: the option last named, while it may still take a value
        for token in choice:
            if token.startswith("-"):
                action = leaf._option_string_actions.get(token.split("=")[0])
                waiting = action if action is not None and action.nargs != 0 and "=" not in token else None
                argv.append(token)
            elif token == "...":
                if waiting is not None and argv[-1].startswith("-"):
                    argv.append(sample(waiting))
            elif PLACEHOLDER.match(token) and token not in LITERALS:
                argv.append(sample(waiting))
            else:
                argv.append(token)
        if waiting is not None and argv[-1].startswith("-") and waiting.nargs is None:
            argv.append(sample(waiting))  # prose naming an option (`tudui train --resume`): its value left out
        out.append(lead + argv)
    return out


def test_commands_are_found():
    """The extractor sees the tour, fenced continuation lines and inline spans (so the next test checks real lines)."""
    found = {rel(d): commands(d.read_text(encoding="utf-8")) for d in DOCS}
    assert sum(map(len, found.values())) >= 100, found
    assert "tudui lr-find --data fashion-mnist" in found["README.md"]
    serve = [c for c in found["docs/export-serve.md"] if c.startswith("tudui serve runs/exp/best.onnx [--host")]
    assert serve and "--no-docs" in serve[0], found["docs/export-serve.md"]
    assert any(c.startswith("tudui train --data /shared/data") for c in found["docs/distributed.md"])


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_command_line_parses(doc):
    parser = build_parser()
    for cmd in commands(doc.read_text(encoding="utf-8")):
        lists = argvs(cmd, parser)
        if isinstance(lists, str):
            assert lists in SKIPPED, cmd
            continue
        for argv in lists:
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    args, unknown = parser.parse_known_args(argv)
            except SystemExit:  # argparse said why: a bad choice, a missing argument, a wrong type
                pytest.fail(f"{rel(doc)}: `{cmd}` (parsed as {argv}) does not parse: {err.getvalue().strip()}")
            assert not unknown, f"{rel(doc)}: `{cmd}` (parsed as {argv}): unknown {unknown}"
            # argparse accepts a prefix (`--epoch` for `--epochs`); a document spells the flag out
            leaf, _ = leaf_parser(parser, [a for a in argv if a != "--debug"])
            flags = {f.split("=")[0] for f in argv if f.startswith("--")}
            exact = set(leaf._option_string_actions) | set(parser._option_string_actions)
            assert flags <= exact, f"{rel(doc)}: `{cmd}`: {sorted(flags - exact)} not spelled as the parser does"
            assert args.command == [a for a in argv if a != "--debug"][0], (cmd, argv)


def test_placeholder_rule():
    parser = build_parser()
    assert argvs("tudui eval CKPT --data ... --split test|val|train", parser) == [
        ["eval", "x", "--data", "x", "--split", s] for s in ("test", "val", "train")]
    assert argvs("tudui lr-find ...", parser) == [] and argvs("tudui predict/eval/export", parser) == []
    assert argvs("tudui --debug COMMAND ...", parser) == "placeholder command"
    assert argvs("tudui export RUN --format onnx [--opset N]", parser) == [
        ["export", "x", "--format", "onnx", "--opset", "1"]]
    with pytest.raises(AssertionError):
        argvs("tudui nosuchcommand", parser)
    # a wrong flag in a document would be reported, not filled in
    assert argvs("tudui train --no-such-flag 3", parser) == [["train", "--no-such-flag", "3"]]
    assert parser.parse_known_args(["train", "--no-such-flag", "3"])[1] == ["--no-such-flag", "3"]


# --- the code-layout page ---------------------------------------------------------------------------------------------
def test_layout_page_names_every_module_once():
    text = (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
    named = re.findall(r"^- `(tudui/[\w/]+\.py)`: \S", text, re.M)
    src = REPO / "src"
    tree = {p.relative_to(src).as_posix() for p in (src / "tudui").rglob("*.py") if "__pycache__" not in p.parts}
    assert not tree - set(named), f"docs/layout.md does not describe {sorted(tree - set(named))}"
    assert not set(named) - tree, f"docs/layout.md names modules that do not exist: {sorted(set(named) - tree)}"
    assert len(named) == len(set(named)), "a module is listed twice"
    mentioned = set(re.findall(r"`(tudui/[\w/]+\.py)`", text))
    assert mentioned <= tree, sorted(mentioned - tree)


# --- links --------------------------------------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters of any script kept), spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", doc.read_text(encoding="utf-8")), re.M):
        s = slug(heading)
        found.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return found


def links(text: str) -> list[str]:
    text = SPAN.sub("", FENCE.sub("", text))
    return re.findall(r"\]\(<?([^)\s>]+)>?\)", text)


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_relative_links_lead_somewhere(doc):
    for link in links(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        assert target.exists(), f"{rel(doc)} links to {link}: no such file"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{rel(doc)} links to {link}: no such heading in {target.name}"


def test_slugs_follow_github():
    assert slug("Training options (all in `tudui train --help`)") == "training-options-all-in-tudui-train---help"
    assert slug("The toolbox (timm / Ultralytics / fastai / Lightning switches)") == \
        "the-toolbox-timm--ultralytics--fastai--lightning-switches"
    assert slug("数据（`--data`）") == "数据--data"


# --- the README stays a first page ---------------------------------------------------------------------------------------
def test_readme_starts_with_set_up_and_links_every_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = FENCE.search(text).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["make demo", "make test"]
    linked = {Path(link).name for link in links(text)}
    pages = {p.name for p in (REPO / "docs").glob("*.md") if not p.name.endswith(".zh-CN.md")}
    assert pages <= linked, f"README.md does not link {sorted(pages - linked)}"
    zh = (REPO / "README.zh-CN.md").read_text(encoding="utf-8")
    zh_pages = {p.name for p in (REPO / "docs").glob("*.zh-CN.md")}
    assert zh_pages <= {Path(link).name for link in links(zh)}, sorted(zh_pages)


# --- the torch floor is a tested one -------------------------------------------------------------------------------------
def test_the_claimed_torch_floor_is_the_pair_make_test_min_runs():
    """pyproject.toml's `torch>=`/`torchvision>=`, the Makefile's TORCH_MIN (the pair `make test-min` installs and
    runs the unit tests on) and both READMEs name one pair: raising or lowering one of them alone fails here."""
    floor = dict(re.findall(r'"(torch|torchvision)>=([\d.]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8")))
    make = re.search(r"^TORCH_MIN \?= (.*)$", (REPO / "Makefile").read_text(encoding="utf-8"), re.M).group(1)
    pinned = dict(re.findall(r"\b(torch|torchvision)==([\d.]+)", make))
    assert set(floor) == set(pinned) == {"torch", "torchvision"}, (floor, make)
    for name in floor:
        assert pinned[name] in (floor[name], f"{floor[name]}.0"), f"{name}>={floor[name]} but TORCH_MIN tests {make}"
    for readme in ("README.md", "README.zh-CN.md"):
        text = " ".join((REPO / readme).read_text(encoding="utf-8").split())
        for name in floor:
            assert f"{name} >= {floor[name]}" in text and f"{name} {pinned[name]}" in text, (readme, name)
