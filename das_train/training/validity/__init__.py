"""The validity card (issue 19): every site's IIA beside cheaper featurizers and untrained
controls, on the same test pairs, with intervals.

A localization is only believed when DAS's IIA stands out from what cheaper featurizers and
untrained controls reach on the same pairs. The sweep uses these pieces as follows (README
"The validity card"): the probes keep the bases they can read off the activations,
``fit_group`` tests each job's trained intervention and fixed bases on every test pair, the
rows carry the figures and the per-pair outcomes are saved, and the table joins them with the
companion sweeps. Read in this order:

- ``directions.py``: orthonormal bases ``(d, k)`` read off a site's activations (difference of
  class means, PCA), off a fitted probe's weights, drawn at random, or the whole vector;
- ``job_bases.py``: the bases one (site, seed) job is tested with;
- ``interchange.py``: the fixed-subspace interchange ``b + (s - b) Q Q^T`` and the
  predictions it (or any swap, a trained intervention's too) gives when the model runs from a
  site's cached activations onward;
- ``outcomes.py``: each test pair's outcome under every featurizer of a fitted group's sites,
  the trained intervention and the fixed bases side by side;
- ``columns.py``, ``outcome_store.py``: what a results row holds, and the outcomes on disk;
- ``intervals.py``: IIA on all pairs and on the pairs whose label should change, a
  t-interval over seeds and a percentile bootstrap over test pairs;
- ``card.py``: the per-site table of every method with both intervals;
- ``companions.py``: the sweeps run beside the main one (Boundless DAS, the random-init model).
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
