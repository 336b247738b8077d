"""The validity card's pieces: featurizers that cost no training, and the IIA figures with
their intervals (issue 19).

A localization is only believed when DAS's IIA stands out from what cheaper featurizers and
untrained controls reach on the same pairs. Read in this order:

- ``directions.py``: orthonormal bases ``(d, k)`` read off a site's activations (difference of
  class means, PCA), off a fitted probe's weights, drawn at random, or the whole vector;
- ``interchange.py``: the fixed-subspace interchange ``b + (s - b) Q Q^T`` and the
  predictions it (or any swap, a trained intervention's too) gives when the model runs from a
  site's cached activations onward;
- ``outcomes.py``: each test pair's outcome under every featurizer of a fitted group's sites,
  the trained intervention and the fixed bases side by side;
- ``intervals.py``: IIA on all pairs and on the pairs whose label should change, a
  t-interval over seeds and a percentile bootstrap over test pairs.

Nothing here is wired into the sweep yet.
"""

from das_train.training.validity.directions import (
    diff_means_directions,
    full_vector_basis,
    pca_directions,
    probe_directions,
    probe_weight_directions,
    random_subspace,
)
from das_train.training.validity.interchange import (
    CachedSwap,
    basis_swap,
    check_basis,
    interchange,
    interchange_predictions,
    intervention_swap,
    swap_predictions,
)
from das_train.training.validity.intervals import (
    IIA,
    Interval,
    bootstrap_interval,
    interchange_accuracy,
    seed_interval,
    t_quantile,
)
from das_train.training.validity.outcomes import PairOutcomes, group_outcomes, pairs_changing

__all__ = [
    "IIA",
    "CachedSwap",
    "Interval",
    "PairOutcomes",
    "basis_swap",
    "bootstrap_interval",
    "check_basis",
    "diff_means_directions",
    "full_vector_basis",
    "group_outcomes",
    "interchange",
    "interchange_accuracy",
    "interchange_predictions",
    "intervention_swap",
    "pairs_changing",
    "pca_directions",
    "probe_directions",
    "probe_weight_directions",
    "random_subspace",
    "seed_interval",
    "swap_predictions",
    "t_quantile",
]
