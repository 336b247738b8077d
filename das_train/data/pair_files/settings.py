"""What the pair-file reader needs to know, as plain data the data layer owns.

The run config's ``task`` section (``training/schema.py``'s TaskConfig, where the defaults and
their documentation live) is handed to the pairs plugin as a mapping; this dataclass keeps the
keys the reader uses, so the data layer never imports the training layer's schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from das_train.data.pair_files.errors import PairFileError


@dataclass(frozen=True)
class PairFileSettings:
    """The reader's settings; ``TaskConfig`` holds their defaults and says what each does."""

    path: str | None
    format: str
    base: str
    sources: tuple[str, ...]
    base_label: str
    source_label: str | None
    counterfactual_label: str | tuple[str, ...]
    base_value: str | None
    source_value: str | None
    split: str | None
    template: str | None
    positions: Mapping[str, Any]
    span_token: str
    answer_prefix: str
    answer_score: str
    counterfactual: str | None
    where: Mapping[str, Any]
    variable: str
    filter_pairs: bool

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> PairFileSettings:
        """The settings among ``config``'s keys, a run's ``task`` section with its defaults
        filled in (other task keys, e.g. ``n_train``, are not the reader's); lists become
        tuples so the settings hash and compare by value."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(config))
        if missing:
            raise PairFileError("(task config)", [f"the task config lacks {missing}; build it from TaskConfig's defaults"])
        values = {k: _plain(v) for k, v in dict(config).items() if k in names}
        for key in ("sources", "counterfactual_label"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        if isinstance(values.get("sources"), str):
            values["sources"] = (values["sources"],)
        return cls(**values)

    def counterfactual_columns(self) -> tuple[str, ...]:
        """The counterfactual-label column of each source column (one name serves them all)."""
        if isinstance(self.counterfactual_label, str):
            return (self.counterfactual_label,) * len(self.sources)
        return tuple(self.counterfactual_label)


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts and lists (they arrive from a composed config)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value
