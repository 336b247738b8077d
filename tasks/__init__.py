"""Task plugins: each module defines one CounterfactualTask (a causal model that generates
seeded pairs), found by its file name (``task.name=gender``). Their framework lives in
``das_train.data``."""
