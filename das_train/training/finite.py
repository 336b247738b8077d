"""Stopping a fit whose loss or trained weights stop being finite numbers.

A NaN or infinite loss (``intervention.lr=inf``, an overflowing half-precision model) trains
weights into NaN without any error: IIA then reads 0.0 as if it were a finding, and the NaN
weights are saved as an artifact. The training modules check, after every optimizer step, that
each site's loss and trainable weights are finite, with one host sync for all sites, and raise
:class:`NonFiniteTrainingError` before any checkpoint, row or artifact of that step is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch


class NonFiniteTrainingError(RuntimeError):
    """A fit stopped because a site's loss or weights went NaN or infinite.

    Attributes:
        step: the optimizer steps taken when it was found (counting from 1).
        problems: the index of each bad site in its fit, to ``"loss"`` or ``"weights"``.
    """

    def __init__(self, step: int, problems: Mapping[int, str], names: Sequence[str] | None = None) -> None:
        self.step = step
        self.problems = dict(problems)
        verb = {"loss": "loss is", "weights": "weights are"}
        where = "; ".join(f"{names[k] if names else f'site {k}'}: the {verb[what]} not finite"
                          for k, what in self.problems.items())
        super().__init__(f"training stopped at step {step}: {where}. Nothing was saved for it; a smaller "
                         "intervention.lr or a wider trainer.precision may keep the values finite.")

    def naming(self, names: Sequence[str]) -> NonFiniteTrainingError:
        """The same error, naming the sites by ``names`` (e.g. ``block_output-L1-last seed 0``)."""
        return NonFiniteTrainingError(self.step, self.problems, names)


def check_finite(step: int, losses: Mapping[int, torch.Tensor],
                 parameters: Mapping[int, Iterable[torch.Tensor]]) -> None:
    """Raises :class:`NonFiniteTrainingError` if any site's loss or parameters are not finite.

    ``losses`` and ``parameters`` map a site's index to its loss (a scalar) and its trainable
    parameters.
    """
    sites = list(losses)
    loss_ok = torch.stack([torch.isfinite(losses[k]).all() for k in sites])  # (sites,)
    weights_ok = torch.stack([torch.stack([torch.isfinite(p).all() for p in parameters[k]]).all() for k in sites])
    flags = torch.stack([loss_ok, weights_ok]).tolist()  # one sync: [[loss ok per site], [weights ok]]
    problems = {k: "loss" if not loss else "weights" for k, loss, weights in zip(sites, *flags)
                if not (loss and weights)}
    if problems:
        raise NonFiniteTrainingError(step, problems)


__all__ = ["NonFiniteTrainingError", "check_finite"]
