"""The shipped recipes: one YAML file per recipe, found by name (python -m das_train recipe=NAME)."""
