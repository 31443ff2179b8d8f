"""An AST scan for touches of Celery's and kombu's internals (tests/compat/test_compat.py).

What it reports, per source file:
- `import`: an import of a private Celery/kombu name (a module path or imported name component that
  starts with `_`), e.g. `from celery._state import _task_stack`.
- `patch`: an assignment to an attribute of a Celery/kombu module or class, or `setattr`/`delattr`
  on one, e.g. `kombu.transport.redis.Channel._create_client = f`, wherever the name comes from:
  `import kombu.transport.redis`, `from kombu.transport import redis as r`, or a local alias
  (`channel: Any = r.Channel; channel._create_client = f`). Assignments to an instance built by a
  call (`app = Celery(...); app.conf.x = 1`) are configuration, not patches, and are not reported.
- `private`: a read of a private attribute (`_name`, not `__dunder__`) of a Celery/kombu module or
  class (resolved as above), or of any object when the attribute is not a name our own code
  defines (`message._raw`: the scan cannot know the object's type, so a private name that is not
  ours is taken to be a library's). Reported as `*._raw`; an allow-list entry whose symbol ends
  with that name (`kombu.transport.virtual.Message._raw`) allows it.

Each finding has a symbol (`kombu.transport.redis.Channel._connparams`); the allow-list, in
docs/compat.md, is keyed by symbol, not by our file path, so moving code between files changes
nothing here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LIBRARIES = ("celery", "kombu")


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    kind: str  # import | patch | private
    symbol: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} {self.symbol}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library(symbol: str | None) -> bool:
    return symbol is not None and symbol.split(".")[0] in LIBRARIES


def own_names(sources: Iterable[str]) -> set[str]:
    """Every name our own code defines: functions, classes, attributes it assigns, parameters,
    module and class variables, import aliases."""
    names: set[str] = set()
    for src in sources:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
    return names


class _Scan(ast.NodeVisitor):
    def __init__(self, path: str, ours: set[str], aliases: dict[str, str]) -> None:
        self.path = path
        self.ours = ours
        self.aliases = aliases
        self.findings: list[Finding] = []

    def add(self, node: ast.AST, kind: str, symbol: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), kind, symbol))

    def resolve(self, node: ast.expr) -> str | None:
        """The dotted name an expression stands for, through imports and aliases (no calls)."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in LIBRARIES and any(is_private(p) for p in alias.name.split(".")):
                self.add(node, "import", alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or module.split(".")[0] not in LIBRARIES:
            return
        for alias in node.names:
            symbol = f"{module}.{alias.name}"
            if any(is_private(p) for p in symbol.split(".")):
                self.add(node, "import", symbol)

    # patches
    def _patched(self, target: ast.expr) -> None:
        if isinstance(target, ast.Attribute):
            base = self.resolve(target.value)
            if _library(base):
                self.add(target, "patch", f"{base}.{target.attr}")
        elif isinstance(target, ast.Tuple | ast.List):
            for t in target.elts:
                self._patched(t)

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._patched(t)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._patched(node.target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._patched(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._patched(t)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        fn = node.func
        name = fn.id if isinstance(fn, ast.Name) else None
        if name in ("setattr", "delattr", "getattr") and len(node.args) >= 2:
            base = self.resolve(node.args[0])
            arg = node.args[1]
            attr = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
            if name in ("setattr", "delattr") and _library(base):
                self.add(node, "patch", f"{base}.{attr or '<dynamic>'}")
            elif name == "getattr" and attr is not None and is_private(attr):
                self._private_read(node, base, attr)
        self.generic_visit(node)

    # reads of private attributes
    def _private_read(self, node: ast.AST, base: str | None, attr: str) -> None:
        """`base`: what the object resolves to (None: unknown, e.g. a parameter or a call's result)."""
        if _library(base):
            self.add(node, "private", f"{base}.{attr}")
        elif base is None and attr not in self.ours:
            self.add(node, "private", f"*.{attr}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            base = self.resolve(node.value)
            if is_private(node.attr):  # `a._b.c`: reported once, where `_b` is read
                self._private_read(node, base, node.attr)
        self.generic_visit(node)


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local names bound to imported modules and names (`os`, `kombu.transport.redis`), and to
    Celery/kombu classes and attributes through local aliases."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    root = a.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    scan = _Scan("", set(), aliases)
    changed = True
    while changed:  # aliases of aliases (`c = r.Channel; d = c`), to a fixed point
        changed = False
        for node in ast.walk(tree):
            target, value = None, None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            if isinstance(target, ast.Name) and value is not None:
                symbol = scan.resolve(value)
                if symbol and _library(symbol) and aliases.get(target.id) != symbol:
                    aliases[target.id] = symbol
                    changed = True
    return aliases


def scan_source(src: str, path: str = "<snippet>", ours: set[str] | None = None) -> list[Finding]:
    tree = ast.parse(src)
    scan = _Scan(path, own_names([src]) if ours is None else ours, _aliases(tree))
    scan.visit(tree)
    return sorted(set(scan.findings))


def python_files(root: Path, packages: Iterable[str]) -> list[Path]:
    return sorted(p for pkg in packages for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def scan_tree(root: Path, packages: Iterable[str]) -> list[Finding]:
    files = python_files(root, packages)
    sources = {p: p.read_text() for p in files}
    ours = own_names(sources.values())
    out: list[Finding] = []
    for p, src in sources.items():
        out.extend(scan_source(src, str(p.relative_to(root)), ours))
    return sorted(out)


_SYMBOL = re.compile(r"`((?:celery|kombu)\.[A-Za-z0-9_.]+)`")


def allowed_symbols(compat_md: str, heading: str) -> set[str]:
    """The symbols in the first column of the table under `heading` in docs/compat.md."""
    section = compat_md.split(heading, 1)[1].split("\n## ", 1)[0]
    symbols: set[str] = set()
    for line in section.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            first = line.strip("|").split("|", 1)[0]
            symbols.update(_SYMBOL.findall(first))
    return symbols


def is_allowed(finding: Finding, allowed: set[str]) -> bool:
    if finding.symbol.startswith("*."):
        attr = finding.symbol[2:]
        return any(s.endswith(f".{attr}") for s in allowed)
    return finding.symbol in allowed
