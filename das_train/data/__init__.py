"""The data side of das_train: counterfactual pairs and what produces them.

A task is a source of counterfactual pairs with named columns (``pair_contract``); everything
downstream (the DataModule and its resumable samplers, filtering, caching, sweeps, probes)
sees only those columns. Here too are the helpers text tasks share (``templates``,
``tokenization``, ``fingerprints``), pyvene's ``CausalModel``, and the one trainer of the tiny
language models tasks and steering train on the spot (``tiny_lm``, ``stories``). Pair files
and the field's formats (CausalGym, MIB, RAVEL) belong here as well, turned into the same
columns. This package imports ``das_train.core`` only; task plugins (``das_train.tasks``) and
training import it.
"""
