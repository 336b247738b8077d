"""The DAS sweep: every (site, seed) of a config trained, tested and probed, one row each.

Read in this order:

- ``das_sweep.py``: the job (pairs, sites, resume, groups, table);
- ``sites.py``, ``groups.py``: the swept sites and how their jobs are grouped into fits;
- ``group_fit.py``: the one scaffold that fits a group, one job through the per-site module
  or a layer's jobs together on cached activations;
- ``probes.py``: every job's probe and control, fitted together;
- the fast path's pieces: ``site_cache.py`` (what the frozen model computes, once),
  ``cached_pairs.py`` (a split next to its cache), ``prefix_skip.py`` (running from a layer
  upward), ``multi_site.py`` (many sites' interventions in one module), ``pass_memory.py``
  (how many sites share a pass), ``shared_prefix.py`` (sites that need no training).
"""
