"""Counterfactual pairs read from a researcher's file (``task=pairs task.path=...``): plain
columns or the field's formats (CausalGym, MIB, RAVEL, pyvene-style tensors), turned into the
pair contract's columns with positions, answers and padding resolved by the model's tokenizer.

Modules: ``reading`` (files, folders, Hub ids), ``formats``/``plain``/``field_formats`` (rows
to records), ``positions``, ``answers``, ``building`` (records to columns), ``splitting``,
``sequences`` (whole answers and candidates for ``task.answer_score=sequence``), ``loading``
(the whole file, checked) and ``errors``.
"""

from das_train.data.pair_files.building import BuiltPairs, build_pairs
from das_train.data.pair_files.errors import PairFileError
from das_train.data.pair_files.loading import LoadedPairs, load_pairs
from das_train.data.pair_files.settings import PairFileSettings
from das_train.data.pair_files.splitting import split_rows
