"""The hierarchical equality task of Geiger et al. (2023), the DAS paper's first case study.

An input is four objects ``(w, x, y, z)``, each a random vector from a fixed vocabulary of
object embeddings; the label is ``(w == x) == (y == z)``. The causal model has two
intermediate variables, ``WX = (w == x)`` and ``YZ = (y == z)``. A counterfactual pair takes
one variable's value from a source input: intervening on ``WX`` gives the label
``WX(source) == YZ(base)``.

Everything is generated from a seed with torch alone, so the task runs anywhere, offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VARIABLES = ("WX", "YZ")


@dataclass(frozen=True)
class EqualityTask:
    """Object vocabulary and sampling for the task.

    Args:
        embedding_dim: width of one object's vector; an input is ``4 * embedding_dim`` wide.
        n_objects: size of the object vocabulary.
        seed: seed of the vocabulary.
    """

    embedding_dim: int = 4
    n_objects: int = 100
    seed: int = 0

    def vocabulary(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(self.n_objects, self.embedding_dim, generator=gen) * 2 - 1  # (objects, dim)

    def _sample_objects(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, 4) object ids with each of WX and YZ equal half of the time."""
        ids = torch.randint(0, self.n_objects, (n, 4), generator=gen)
        for first, second in ((0, 1), (2, 3)):
            same = torch.rand(n, generator=gen) < 0.5
            ids[same, second] = ids[same, first]
            # resample accidental equalities among the pairs meant to differ
            clash = ~same & (ids[:, second] == ids[:, first])
            while bool(clash.any()):
                ids[clash, second] = torch.randint(0, self.n_objects, (int(clash.sum()),), generator=gen)
                clash = ~same & (ids[:, second] == ids[:, first])
        return ids

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vocabulary()[ids].reshape(ids.shape[0], -1)  # (n, 4 * dim)

    @staticmethod
    def variables(ids: torch.Tensor) -> torch.Tensor:
        """(n, 2) values of WX and YZ."""
        return torch.stack([ids[:, 0] == ids[:, 1], ids[:, 2] == ids[:, 3]], dim=1).long()

    def factual(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels for training the model itself."""
        gen = torch.Generator().manual_seed(seed)
        ids = self._sample_objects(n, gen)
        v = self.variables(ids)
        return self.embed(ids), (v[:, 0] == v[:, 1]).long()

    def counterfactual_pairs(self, n: int, seed: int, variable: str | None = None) -> dict[str, torch.Tensor]:
        """Pairs for interchange interventions on ``variable`` (or a random one per pair).

        Returns ``base``, ``source`` (inputs), ``variable`` (0 for WX, 1 for YZ), ``base_label``
        and ``counterfactual_label``.
        """
        gen = torch.Generator().manual_seed(seed)
        base_ids, source_ids = self._sample_objects(n, gen), self._sample_objects(n, gen)
        if variable is None:
            which = torch.randint(0, 2, (n,), generator=gen)
        else:
            which = torch.full((n,), VARIABLES.index(variable))
        vb, vs = self.variables(base_ids), self.variables(source_ids)
        mixed = vb.clone()
        rows = torch.arange(n)
        mixed[rows, which] = vs[rows, which]
        return {
            "base": self.embed(base_ids),
            "source": self.embed(source_ids),
            "variable": which,
            "base_label": (vb[:, 0] == vb[:, 1]).long(),
            "counterfactual_label": (mixed[:, 0] == mixed[:, 1]).long(),
        }
