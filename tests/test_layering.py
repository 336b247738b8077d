"""The layering rule, enforced: one dependency direction, no cycle dodged inside a function.

Every module of ``das_train/`` and ``tasks/`` (installed as ``das_train.tasks``) is parsed with
``ast``, and every import in it (module level, under ``if TYPE_CHECKING``, and inside functions)
is checked against the layer it may reach:

    interventions -> core -> hub, data -> task plugins -> package root -> training -> cli

A layer imports only the layers listed for it in :data:`MAY_IMPORT`. An import inside a
function is allowed only for an optional or heavy package (:data:`CALL_TIME_PACKAGES`), never
for a ``das_train`` module: that would be a cycle dodged instead of removed. Files stay under
400 lines and functions under 60, so each reads in one sitting.

There is no list of tolerated exceptions: every module of ``das_train/`` and ``tasks/`` follows
the rule, and the one call-time import it allows (the hub, from ``IntervenableModel``'s thin
publishing methods) is named in :data:`CALL_TIME_DAS_TRAIN`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"das_train": ROOT / "das_train", "das_train.tasks": ROOT / "tasks"}

LAYERS = (  # (module prefix, layer); the longest matching prefix wins
    ("das_train.interventions", "interventions"),
    ("das_train.core", "core"),
    ("das_train.hub", "hub"),
    ("das_train.data", "data"),
    ("das_train.tasks", "tasks"),
    ("das_train.training", "training"),
    ("das_train.cli", "cli"),
    ("das_train.usage", "cli"),
    ("das_train.__main__", "cli"),
    ("das_train.conf", "cli"),
    ("das_train", "root"),
)
MAY_IMPORT = {
    "interventions": {"interventions"},
    "core": {"interventions", "core"},
    "hub": {"interventions", "core", "hub"},  # publishing sits above the core
    "data": {"interventions", "core", "data"},
    "tasks": {"core", "data"},  # a task plugin: the pair contract and tokenizer helpers only
    "root": {"interventions", "core", "hub", "data", "tasks"},  # re-exports below training
    "training": {"interventions", "core", "hub", "data", "tasks", "root", "training"},
    "cli": {"interventions", "core", "hub", "data", "tasks", "root", "training", "cli"},
}

CALL_TIME_PACKAGES = {
    "wandb": "an optional extra ([wandb]), imported only when that logger is chosen",
    "tensorboard": "an optional extra ([tensorboard])",
    "accelerate": "an optional extra ([big]), for models spread over devices",
    "hydra": "the CLI's config system: slow to import, needed only to compose a recipe",
    "omegaconf": "Hydra's config objects, as for hydra",
    "huggingface_hub": "network helpers, imported when a download or an upload starts",
    "matplotlib": "plotting only, slow to import",
    "nnsight": "an optional backend",
    "pyvene": "the second oracle of tests and benchmarks, never a dependency",
    "networkx": "optional, for drawing a causal model's graph",
    "transformers": (
        "its submodules (activations, tokenizers, model classes) cost seconds to import; they "
        "load when a model or tokenizer is built, so `import das_train` stays fast"
    ),
}

CALL_TIME_DAS_TRAIN = {
    ("das_train/core/model.py", "das_train.hub"): (
        "IntervenableModel.save_pretrained/push_to_hub/from_pretrained are thin methods over the "
        "publishing layer, which imports the core (DESIGN.md section 7 lets the rule test allow it)"
    ),
}
"""The one import of a ``das_train`` module inside a function that the rule allows."""

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    module: str  # the das_train module (or outside package) imported
    in_function: bool


def _module_name(package: str, root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


MODULES = {
    _module_name(package, root, path): path
    for package, root in SOURCES.items()
    for path in sorted(root.rglob("*.py"))
}


def layer_of(module: str) -> str | None:
    """The layer of a ``das_train`` module, ``None`` for any other package."""
    if module != "das_train" and not module.startswith("das_train."):
        return None
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"no layer for {module}")


def _target(importer: str, node: ast.ImportFrom, name: str) -> str:
    """What ``from X import name`` imports: the submodule ``X.name`` when there is one."""
    base = node.module or ""
    if node.level:
        package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    candidate = f"{base}.{name}"
    return candidate if candidate in MODULES else base


def _shown(module: str) -> str:
    """How a violation names the module: the package root is ``das_train.root``."""
    return "das_train.root" if module == "das_train" else module


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, file: str) -> None:
        self.module, self.file = module, file
        self.depth = 0
        self.found: list[Import] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(Import(self.file, node.lineno, alias.name, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            target = _target(self.module, node, alias.name)
            self.found.append(Import(self.file, node.lineno, target, self.depth > 0))

    def visit_Call(self, node: ast.Call) -> None:
        """``importlib.import_module("das_train...")`` is an import too."""
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self.found.append(Import(self.file, node.lineno, first.value, self.depth > 0))
        self.generic_visit(node)


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def all_imports() -> list[Import]:
    """Every import of every module, once per (file, line, module)."""
    found: dict[Import, None] = {}
    for module, path in MODULES.items():
        collector = _Collector(module, _relative(path))
        collector.visit(ast.parse(path.read_text(), str(path)))
        found.update(dict.fromkeys(collector.found))
    return list(found)


def problems(imports: list[Import], module_of_file: dict[str, str]) -> list[tuple[Import, str]]:
    """Each import against the rule, with why it breaks it."""
    out: list[tuple[Import, str]] = []
    for imp in imports:
        importer_layer = layer_of(module_of_file[imp.file])
        target_layer = layer_of(imp.module)
        top = imp.module.split(".")[0]
        if target_layer is None:
            if imp.in_function and top not in CALL_TIME_PACKAGES:
                out.append((imp, f"{top} is imported inside a function but is neither optional nor "
                                 f"heavy ({sorted(CALL_TIME_PACKAGES)}); import it at the top"))
            continue
        if imp.in_function and (imp.file, imp.module) in CALL_TIME_DAS_TRAIN:
            continue
        if target_layer not in MAY_IMPORT[importer_layer]:
            out.append((imp, f"the {importer_layer} layer may import only {sorted(MAY_IMPORT[importer_layer])}, "
                             f"not the {target_layer} layer"))
        elif imp.in_function:
            out.append((imp, "a das_train module imported inside a function dodges a cycle; "
                             "import it at the top, or move the code to the layer it belongs to"))
    return out


def _report(found: list[tuple[Import, str]]) -> str:
    return "\n".join(f"  {imp.file}:{imp.line} imports {_shown(imp.module)}: {why}" for imp, why in found)


MODULE_OF_FILE = {_relative(path): module for module, path in MODULES.items()}
IMPORTS = all_imports()
PROBLEMS = problems(IMPORTS, MODULE_OF_FILE)


def test_every_import_follows_the_layering_rule():
    assert not PROBLEMS, "imports against the layering rule:\n" + _report(PROBLEMS)


def test_files_and_functions_stay_short():
    long_files = {
        _relative(path) for path in MODULES.values()
        if path.is_relative_to(SOURCES["das_train"]) and len(path.read_text().splitlines()) > MAX_FILE_LINES
    }
    long_functions: dict[tuple[str, str], int] = {}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions[(_relative(path), node.name)] = length
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {sorted(long_files)}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {sorted(long_functions.items())}"


# -- the checker checks: each rule fails on code that breaks it ------------------------------------


def _problems_in(file: str, module: str, source: str) -> list[str]:
    collector = _Collector(module, file)
    collector.visit(ast.parse(source))
    return [why for _, why in problems(collector.found, {file: module})]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from das_train.training.run import run\n", "the core layer may import only"),
        ("import das_train.hub\n", "the core layer may import only"),
        ("from das_train import hub\n", "the core layer may import only"),
        ("def f():\n    from das_train.core.sites import Site\n", "dodges a cycle"),
        ("def f():\n    import json\n", "json is imported inside a function"),
        ("import importlib\nX = importlib.import_module('das_train.training')\n", "the core layer may import only"),
    ],
)
def test_the_checker_reports_what_breaks_the_rule(source, expected):
    found = _problems_in("das_train/core/example.py", "das_train.core.example", source)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    "source",
    [
        "import torch\nfrom das_train.interventions.base import Intervention\n",
        "from das_train.core.sites import Site\n",
        "def f():\n    import wandb\n    from huggingface_hub import HfApi\n",
    ],
)
def test_the_checker_accepts_what_the_rule_allows(source):
    assert _problems_in("das_train/core/example.py", "das_train.core.example", source) == []


def test_a_task_plugin_may_import_only_the_pair_contract_and_core():
    assert _problems_in("tasks/example.py", "das_train.tasks.example", "from das_train.core.files import atomic_write\n") == []
    found = _problems_in("tasks/example.py", "das_train.tasks.example", "from das_train.training.das_loop import fit\n")
    assert len(found) == 1 and "the tasks layer may import only" in found[0]


def test_the_one_call_time_import_of_the_hub_is_allowed_only_where_named():
    source = "def save_pretrained(self):\n    from das_train.hub import save_pretrained\n"
    assert _problems_in("das_train/core/model.py", "das_train.core.model", source) == []
    found = _problems_in("das_train/core/serialization.py", "das_train.core.serialization", source)
    assert len(found) == 1 and "may import only" in found[0]
