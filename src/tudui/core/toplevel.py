"""Which top-level statements of a model's file run when tudui loads the model from it.

A course script often defines `class Tudui(nn.Module)` and trains it in the same file, with no
`if __name__ == "__main__":` guard. Loading the class by importing the file would run the training again, so a
model's file is loaded from its definitions only (core/pyfile.py): the statements kept are

- imports (`import torch`, `from model import *`; what they import runs as any import does), and
  `sys.path.append(...)`/`insert(...)` with a path made of literals, `__file__` and `os.path`/`Path` calls;
- definitions: `def`, `async def`, `class`, decorators, base classes and defaults included (they are part of the
  definition);
- plain assignments to names whose value calls nothing (`N = 10`, `X: int = 3`, `CLASSES = ["cat", "dog"]`,
  `ACT = nn.ReLU` without the brackets, `__all__`), where a few builtins that only compute from their arguments
  count as calling nothing (`len`, `int`, `range`, `tuple`, `sorted`, ...);
- docstrings and `pass`; `if` and `try` blocks whose conditions call nothing, with the same rule inside (so
  `try: import timm` / `except ImportError: timm = None` is kept, `if torch.cuda.is_available():` is not).

Everything else is skipped: calls (`tudui.train(...)`, `print(...)`, `writer = SummaryWriter("logs")`,
`model = Tudui()`, `ACT = nn.ReLU()`), loops, `with` blocks, assignments into objects (`os.environ["X"] = "1"`,
`torch.backends.cudnn.benchmark = True`), `assert`, `del`. The `if __name__ == "__main__":` block is dropped
without a word: it never runs on import anyway. A kept statement that would read a name only a skipped one sets
(`NUM = len(CLASSES)` after `CLASSES = os.listdir(...)`, `class Net(Base)` after `Base = make_base()`) is skipped
too, so the rest of the file still loads. A value that needs a call is built where the model uses it (in
`__init__`), or in a function.

`scan` parses a file into what is kept and what is skipped; `needs` says which skipped names a definition uses.
Both read the source only (ast, symtable): nothing of the file runs here.
"""
from __future__ import annotations

import ast
import symtable
from dataclasses import dataclass, field

# builtins that compute from their arguments and call nothing of the user's: `NUM_CLASSES = len(CLASSES)` is plain
PURE_BUILTINS = frozenset({"len", "int", "float", "str", "bool", "complex", "tuple", "list", "dict", "set",
                           "frozenset", "range", "min", "max", "sum", "abs", "round", "sorted", "reversed",
                           "enumerate", "zip"})
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_PATH_CALLS = frozenset({"str", "Path", "abspath", "dirname", "join", "realpath", "normpath", "expanduser",
                         "resolve", "absolute", "joinpath", "parent", "as_posix", "getcwd", "cwd"})


@dataclass
class TopLevel:
    """A module's top level split into the statements tudui runs and those it skips."""
    kept: list[ast.stmt]
    skipped: list[ast.stmt]  # the statements that would run code on import, in file order (nested ones included)
    lines: list[str]  # the source's lines, to quote a skipped statement
    only_skipped: dict[str, int] = field(default_factory=dict)  # names only skipped statements set -> first line

    def quote(self, stmt: ast.stmt, width: int = 60) -> str:
        """'line 12: `ACT = nn.ReLU()`' (the statement's first line, shortened)."""
        text = self.lines[stmt.lineno - 1].strip() if stmt.lineno <= len(self.lines) else ""
        text = text if len(text) <= width else text[: width - 3] + "..."
        return f"line {stmt.lineno}: `{text}`"


def scan(source: str | bytes, filename: str = "<file>") -> TopLevel:
    """Split a module's top level (raises SyntaxError as compile would)."""
    tree = ast.parse(source, filename=filename)
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    pure = PURE_BUILTINS - _bound_names(tree.body)  # a file that defines its own `len` does not get ours
    skipped: list[ast.stmt] = []
    kept = _filter(tree.body, pure, skipped)
    while True:  # `NUM = len(CLASSES)` after a skipped `CLASSES = load()` would fail: it is skipped too
        only = _only_skipped(kept, skipped)
        stranded = [s for s in kept if any(isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in only
                                           for n in _run_now(s))]
        if not stranded:
            break
        kept = [s for s in kept if s not in stranded]
        skipped = sorted(skipped + stranded, key=lambda s: s.lineno)
    return TopLevel(kept, skipped, text.splitlines(), only)


def _run_now(stmt: ast.stmt):
    """The nodes evaluated when `stmt` runs at the top level: all of a plain statement; of a definition, its decorators,
    bases and defaults, and a class body's statements (a function body runs only when called)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for node in [*stmt.decorator_list, *stmt.args.defaults, *(d for d in stmt.args.kw_defaults if d)]:
            yield from ast.walk(node)
    elif isinstance(stmt, ast.ClassDef):
        for node in [*stmt.decorator_list, *stmt.bases, *stmt.keywords]:
            yield from ast.walk(node)
        for inner in stmt.body:
            yield from _run_now(inner)
    else:
        yield from ast.walk(stmt)


def _only_skipped(kept: list[ast.stmt], skipped: list[ast.stmt]) -> dict[str, int]:
    bound = _bound_names(kept)
    only: dict[str, int] = {}
    for stmt in skipped:
        for name in sorted(_bound_names([stmt]) - bound):
            only.setdefault(name, stmt.lineno)
    return only


def needs(source: str | bytes, filename: str, name: str, top: TopLevel) -> dict[str, int]:
    """The names `name` (a top-level class or function) reads from the module, directly or through the module's
    other functions and classes, that only skipped statements set: {name: line}. Empty when it needs none."""
    try:
        table = symtable.symtable(source.decode("utf-8", "replace") if isinstance(source, bytes) else source,
                                  filename, "exec")
    except SyntaxError:
        return {}
    children: dict[str, list[symtable.SymbolTable]] = {}
    for child in table.get_children():
        children.setdefault(child.get_name(), []).append(child)
    seen, todo, used = set(), [name], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for t in children.get(current, []):
            for g in _globals_read(t):
                used.add(g)
                todo.append(g)
    return {n: top.only_skipped[n] for n in sorted(used) if n in top.only_skipped}


def _globals_read(table: symtable.SymbolTable) -> set[str]:
    out = {s.get_name() for s in table.get_symbols() if s.is_global() and s.is_referenced()}
    for child in table.get_children():
        out |= _globals_read(child)
    return out


def is_main_guard(test: ast.expr) -> bool:
    """`__name__ == "__main__"` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
        any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def _filter(body: list[ast.stmt], pure: frozenset, skipped: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of `body` that are kept (if/try blocks filtered inside); the others are added to `skipped`."""
    kept: list[ast.stmt] = []
    for stmt in body:
        if isinstance(stmt, ast.If) and is_main_guard(stmt.test):
            kept += _filter(stmt.orelse, pure, skipped)  # the else of a main guard runs on import
        elif isinstance(stmt, ast.If) and _inert(stmt.test, pure):
            kept.append(_block(stmt, pure, skipped, body=stmt.body, orelse=stmt.orelse))
        elif isinstance(stmt, ast.Try) and all(h.type is None or _inert(h.type, pure) for h in stmt.handlers):
            new = _block(stmt, pure, skipped, body=stmt.body, orelse=stmt.orelse, finalbody=stmt.finalbody)
            new.handlers = [_block(h, pure, skipped, body=h.body) for h in stmt.handlers]
            kept.append(new)
        elif _plain(stmt, pure):
            kept.append(stmt)
        else:
            skipped.append(stmt)
    return kept


def _block(node, pure, skipped, **bodies):
    """A copy of an if/try/except node with each of its statement lists filtered (`pass` where all went)."""
    new = type(node)(**{f: getattr(node, f) for f in node._fields})
    ast.copy_location(new, node)
    for name, stmts in bodies.items():
        inner = _filter(stmts, pure, skipped)
        if not inner and (stmts or name in ("body",)):
            inner = [ast.copy_location(ast.Pass(), stmts[0] if stmts else node)]
        setattr(new, name, inner)
    return new


def _plain(stmt: ast.stmt, pure: frozenset) -> bool:
    """An import, a definition, a docstring, `pass`, or an assignment to names whose value calls nothing."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass, ast.Global) + _DEFINITIONS):
        return True
    if hasattr(ast, "TypeAlias") and isinstance(stmt, ast.TypeAlias):  # `type X = ...` (3.12): evaluated lazily
        return True
    if isinstance(stmt, ast.Expr):
        return isinstance(stmt.value, ast.Constant) or _sys_path_call(stmt.value)
    if isinstance(stmt, ast.Assign):
        return all(_name_target(t) for t in stmt.targets) and _inert(stmt.value, pure)
    if isinstance(stmt, ast.AnnAssign):
        return isinstance(stmt.target, ast.Name) and _inert(stmt.annotation, pure) and \
            (stmt.value is None or _inert(stmt.value, pure))
    if isinstance(stmt, ast.AugAssign):
        return isinstance(stmt.target, ast.Name) and _inert(stmt.value, pure)
    return False


def _name_target(t: ast.expr) -> bool:
    if isinstance(t, ast.Name):
        return True
    if isinstance(t, (ast.Tuple, ast.List)):
        return all(_name_target(e) for e in t.elts)
    return isinstance(t, ast.Starred) and _name_target(t.value)


def _inert(expr: ast.expr, pure: frozenset) -> bool:
    """Evaluating `expr` calls nothing (a lambda's body is not evaluated; its defaults are), bar `pure` builtins."""
    for node in _evaluated(expr):
        if isinstance(node, (ast.Await, ast.Yield, ast.YieldFrom)):
            return False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in pure):
            return False
    return True


def _evaluated(node: ast.AST):
    """The nodes evaluated when `node` is: all of them, except inside a lambda's body."""
    yield node
    if isinstance(node, ast.Lambda):
        children = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _evaluated(child)


def _sys_path_call(expr: ast.expr) -> bool:
    """`sys.path.append(p)` / `sys.path.insert(0, p)` with p built from literals, names, `__file__` and path calls:
    import plumbing, kept so the imports after it find what they found when the script ran."""
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and
            expr.func.attr in ("append", "insert") and ast.unparse(expr.func.value) == "sys.path"):
        return False
    for node in (n for a in expr.args for n in ast.walk(a)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name not in _PATH_CALLS:
                return False
    return not expr.keywords


def _bound_names(body: list[ast.stmt]) -> set[str]:
    """Names that statements bind at module level (not inside the functions and classes they define)."""
    out: set[str] = set()
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
            continue
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        if isinstance(node, ast.alias):
            out.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        todo.extend(ast.iter_child_nodes(node))
    return out - {"*"}
