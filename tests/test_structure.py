"""The package's shape: imports flow one way (no circles), and no private helper crosses a package boundary."""

import ast
import pathlib

from _runs import REPO

PACKAGE = pathlib.Path(REPO, "hf_pretrain")


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: pathlib.Path):
    """(imported module, imported names) for every import in the file, function-level ones included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base) if node.level else node.module
            yield module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_no_import_circles():
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names in _imports(name, path):
            for target in (module, *(f"{module}.{n}" for n in names)):
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)  # a package's __init__ importing its parts is not a circle

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in reachable(b)})
    assert not circles, circles


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])  # hf_pretrain.collators (the package or one of its modules), ...


def test_no_private_helper_is_imported_across_packages():
    offenders = []
    for name, path in _modules().items():
        for module, names in _imports(name, path):
            if not (module or "").startswith("hf_pretrain"):
                continue
            private = [n for n in names if n.startswith("_")] or (
                [module] if any(part.startswith("_") and part != "__init__" for part in module.split(".")) else []
            )
            if private and _subpackage(module) != _subpackage(name):
                offenders.append(f"{name}: from {module} import {private}")
    assert not offenders, offenders
