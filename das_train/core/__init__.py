"""The hook core: config, architecture tables, locations, hooks and the IntervenableModel.

It imports torch and transformers only (no Lightning, Hydra, wandb or datasets), so it can be
used on its own.
"""
