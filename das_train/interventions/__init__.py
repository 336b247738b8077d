"""Interventions: tensor-in, tensor-out modules, one file per family."""
