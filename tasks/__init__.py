"""Counterfactual-pair tasks: each a causal model that generates seeded pairs."""
