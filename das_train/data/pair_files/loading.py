"""A pair file read once: its records, the split each belongs to, and the position rules.

Everything that needs no tokenizer is checked here (the file exists and has rows, the columns
are there, the position rules parse, split names are known, answers are text where
``task.answer_score=sequence`` needs them), so a run refuses a bad file when
its task is loaded, before a model is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from das_train.data.pair_files.errors import PairFileError, Problems
from das_train.data.pair_files.formats import split_name, table_records
from das_train.data.pair_files.positions import Rule, parse_rules, slot_names
from das_train.data.pair_files.reading import read_tables
from das_train.data.pair_files.records import PairRecord
from das_train.data.pair_files.sequences import SEQUENCE, token_id_answers
from das_train.data.pair_files.settings import PairFileSettings


@dataclass(frozen=True)
class LoadedPairs:
    """A pair file's records, each one's split (None: the file names none) and the rules."""

    source: str
    records: tuple[PairRecord, ...]
    splits: tuple[str | None, ...]
    rules: dict[str, Rule]
    fingerprint: str


def load_pairs(settings: PairFileSettings) -> LoadedPairs:
    """Reads ``settings.path``; raises :class:`PairFileError` naming every problem found."""
    if not settings.path:
        raise PairFileError("(none)", ["task.path is not set; give the pair file, folder or Hub dataset id"])
    tables = read_tables(settings.path)
    problems = Problems(settings.path)
    rules, rule_problems = parse_rules(settings.positions)
    for line in rule_problems:
        problems.add(line)
    records: list[PairRecord] = []
    splits: list[str | None] = []
    for table_split, table in tables.tables.items():
        problems.table = table_split
        table_default = split_name(table_split, None, problems, None)
        for record in table_records(table, settings, slot_names(rules), problems):
            records.append(record)
            column_split = split_name(record.split, record.row, problems, settings.split)
            splits.append(column_split if record.split is not None else table_default)
    problems.table = None
    if not records and not problems.lines:
        problems.add("no pairs in the file")
    if settings.answer_score == SEQUENCE:
        token_id_answers(records, problems)
    named = {s is not None for s in splits}
    if len(named) > 1:
        problems.add(f"{splits.count(None)} of {len(splits)} pairs have no split; give every row one "
                     f"(column {settings.split!r}) or none")
    problems.raise_if_any()
    return LoadedPairs(settings.path, tuple(records), tuple(splits), rules, tables.fingerprint)
