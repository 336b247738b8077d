"""The hook core: config, architecture tables, locations, hooks and the IntervenableModel.

It imports torch and transformers only (no Lightning, Hydra, wandb or datasets), so it can be
used on its own; it imports only :mod:`das_train.interventions` below it and never the
publishing layer above it (``tests/test_layering.py`` holds it to that).
"""
