"""The text of ``python -m das_train --help``.

Hydra's own help knows neither our recipes nor what a key means, so this page is built from
the places that do: the recipes' opening comments, the config groups' files, and the typed
schema (type, default and docstring of every key). Building it reads files only; it never
composes a config unless a recipe was named, and never starts Hydra or a run.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Any

from das_train.training import schema

USAGE = """\
usage: python -m das_train [recipe=NAME|PATH.yaml] [key=value ...] [group=option ...]
       python -m das_train -m [recipe=NAME] key=a,b ...     (Hydra multirun: one job per value)
       python -m das_train [recipe=NAME] --help             (this page; with a recipe, its values)
       python -m das_train --hydra-help                     (Hydra's own flags)
"""

RUN_DIRECTORY = """\
Where a run writes
  One directory holds everything a run writes: config.yaml, run_info.json, results.csv,
  checkpoints/, interventions/, logs, table.csv, table.md, the heatmaps and Hydra's .hydra/.
  It is run_dir (default runs/<recipe>); hydra.run.dir=DIR is the same setting under Hydra's
  name and, given, wins over run_dir.
  Multirun (-m): jobs that differ only in sweep.shard share run_dir (that is how sharding
  works: each writes results.shard-<i>-of-<n>.csv, the last one the table); any other swept
  key gives each job its own run_dir/<key=value,...> (from Hydra's hydra.job.override_dirname),
  e.g. -m intervention=low_rank,boundless writes run_dir/intervention=low_rank and
  run_dir/intervention=boundless.

Resuming
  Run the same command again: finished (site, seed) rows in results.csv are kept and only the
  rest is trained; a fit cut off mid-way restarts from its last checkpoint. Ctrl-C (exit 130)
  or SIGTERM (exit 143) stops a run with one line naming its run directory; nothing finished
  is lost.

Exit status: 0 done; 2 bad recipe, key or value (every problem listed at once, before any
work); 130 interrupted (SIGINT); 143 terminated (SIGTERM); 1 any other error.
"""


def first_comment_line(path: Path) -> str:
    """The opening ``#`` line of a YAML file, which by convention says what it is ("" when
    the file opens with a key)."""
    opening = path.read_text().lstrip().split("\n", 1)[0]
    return opening.lstrip("#").strip() if opening.startswith("#") else ""


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (a string literal after the field, the
    convention of schema.py), read from its source since Python keeps no such attribute."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for statement, following in zip(body, body[1:]):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def schema_rows(values: dict[str, Any] | None = None) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, value, docstring) of every leaf key of the run config; the value is
    the schema's default, or the one in ``values`` (a composed recipe) where it has the key."""
    rows = []

    def visit(cls: type, prefix: str, composed: dict[str, Any] | None) -> None:
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            here = composed.get(f.name) if isinstance(composed, dict) else None
            if dataclasses.is_dataclass(hints[f.name]):
                visit(hints[f.name], f"{prefix}{f.name}.", here)
                continue
            value = here if isinstance(composed, dict) and f.name in composed else _default(f)
            rows.append((prefix + f.name, str(f.type), _show(value), docs.get(f.name, "")))

    visit(schema.RunConfig, "", values)
    return rows


def keys_section(values: dict[str, Any] | None) -> str:
    rows = schema_rows(values)
    width = max(len(key) for key, *_ in rows)
    lines = []
    for key, kind, value, doc in rows:
        lines.append(f"  {key:<{width}}  {kind} = {value}")
        lines += textwrap.wrap(doc, width=96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def recipes_section(recipes_dir: Path, default: str) -> str:
    paths = sorted(recipes_dir.glob("*.yaml"))
    width = max((len(p.stem) for p in paths), default=0)
    lines = [f"Recipes (recipe=NAME; in {recipes_dir}, or set DAS_TRAIN_RECIPES, or give a path)"]
    for path in paths:
        mark = "(default) " if path.stem == default else ""
        lines.append(f"  {path.stem:<{width}}  {mark}{first_comment_line(path)}")
    return "\n".join(lines)


def groups_section(conf_dir: Path, groups: tuple[str, ...]) -> str:
    lines = ["Config groups (group=option: swaps a whole section, e.g. intervention=boundless)"]
    for group in groups:
        lines.append(f"  {group}:")
        for path in sorted((conf_dir / group).glob("*.yaml")):
            lines.append(f"    {path.stem:<22}{first_comment_line(path)}")
    return "\n".join(lines)


def help_text(recipes_dir: Path, default_recipe: str, conf_dir: Path, groups: tuple[str, ...],
              recipe: str | None = None, values: dict[str, Any] | None = None) -> str:
    """The whole page; with ``recipe`` and its composed ``values``, the keys show those."""
    source = f"recipe {recipe}'s values" if recipe else "the schema's defaults; a recipe sets many of them"
    return "\n\n".join([
        USAGE.rstrip(),
        recipes_section(recipes_dir, default_recipe),
        groups_section(conf_dir, groups),
        f"Keys (key=value), each as: key  type = value ({source})\n" + keys_section(values),
        RUN_DIRECTORY.rstrip(),
    ]) + "\n"
