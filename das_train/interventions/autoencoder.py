"""Interchange in the latent space of a (sparse) autoencoder over one site.

A learned dictionary of features (an SAE, or an autoencoder trained for the purpose, as in RAVEL)
is another basis in which to look for a causal variable: encode base and source, take chosen
latents from the source, decode. An autoencoder reconstructs imperfectly, though, and decoding
the mixed latent alone would change the activation even when nothing is interchanged, mixing the
reconstruction error into the intervention's effect. So the base's reconstruction error is added
back (the "error term" of sparse feature circuits, Marks et al. 2024)::

    z_b = encode(b),  z_s = encode(s),  z = where(mask, z_s, z_b)
    output = decode(z) + (b - decode(z_b))
           = b + (z - z_b) @ W_dec^T          (the decoder is affine, so its bias cancels)

The second form is what is computed: with nothing interchanged (or ``s == b``) the output is the
base, bit for bit. pyvene's ``AutoencoderIntervention`` returns ``decode(z)`` instead.

The module layout (``autoencoder.encoder.0``, ``autoencoder.decoder.0``) and the encoder's
convention of subtracting the decoder bias first are pyvene's, so its saved weights load here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from das_train.interventions.base import Intervention, TrainableIntervention
from das_train.interventions.checks import require_dim, require_source
from das_train.interventions.subspaces import Subspaces, first_dims_mask, zero_outside


class _Autoencoder(nn.Module):
    """One ReLU encoder layer and one affine decoder layer."""

    def __init__(self, input_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(input_dim, latent_dim), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(latent_dim, input_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # (..., d) -> (..., latent); centring on the decoder bias is the usual SAE convention.
        return self.encoder(x - self.decoder[0].bias)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        # (..., latent) -> (..., d)
        return self.decoder(latent)


class AutoencoderIntervention(TrainableIntervention):
    """Interchanges latents of an autoencoder, keeping the base's reconstruction error.

    ``subspaces`` name latent dimensions; without them every latent is interchanged (the
    output is then ``b + decode(z_s) - decode(z_b)``).

    Args:
        embed_dim: width ``d`` of one unit; required.
        latent_dim: number of latent features; required.
        subspace_partition: ``[[start, end), ...]`` ranges of the latent dimensions.
        source_representation: a constant source used in place of a source run.
        **pyvene_keywords: pyvene's other keywords (``keep_last_dim``, ``use_fast``
            honoured; ``dtype`` changes nothing: parameters are float32, inputs are cast).
    """

    needs_embed_dim = True
    config_fields: ClassVar[tuple[str, ...]] = (*Intervention.config_fields, "latent_dim")

    def __init__(
        self,
        embed_dim: int | None = None,
        latent_dim: int | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        source_representation: torch.Tensor | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        super().__init__(embed_dim, subspace_partition, source_representation, **pyvene_keywords)
        self.latent_dim = require_dim(
            latent_dim, "latent_dim", type(self).__name__, "the number of latent features"
        )
        self.autoencoder = _Autoencoder(self.embed_dim, self.latent_dim)

    def subspace_size(self) -> int:
        return self.latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent features of ``x`` (any leading dims), in the parameters' dtype."""
        return self.autoencoder.encode(x.to(self.autoencoder.decoder[0].weight.dtype))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latent)

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error, for fitting the autoencoder to activations."""
        x = x.to(self.autoencoder.decoder[0].weight.dtype)
        return torch.mean((self.decode(self.encode(x)) - x) ** 2)

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        source = require_source(type(self).__name__, source)
        decoder_weight = self.autoencoder.decoder[0].weight  # (d, latent)
        base_w = base.to(decoder_weight.dtype)  # (batch, units, d)
        latent_base = self.encode(base_w)  # (batch, units, latent)
        latent_source = self.encode(source)  # (batch, units, latent)
        delta = latent_source - latent_base  # (batch, units, latent)
        delta = zero_outside(delta, self.subspace_mask(subspaces, delta))
        # decode(z) - decode(z_b) = (z - z_b) @ W_dec^T: the decoder bias cancels exactly.
        return (base_w + delta @ decoder_weight.T).to(base.dtype)  # (batch, units, d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, latent_dim={self.latent_dim}"


class JumpReLUAutoencoderIntervention(TrainableIntervention):
    """Interchange in the latent space of a JumpReLU sparse autoencoder (Gemma Scope's kind).

    A JumpReLU SAE zeroes every pre-activation at or below a learned per-feature threshold::

        pre    = x @ W_enc + b_enc                         # (..., m)
        encode = (pre > threshold) * relu(pre)
        decode = z @ W_dec + b_dec                         # (..., d)
        output = decode(where(mask, encode(s), encode(b)))

    ``mask`` holds the latents named by ``subspaces`` (through ``subspace_partition``), else the
    first ``interchange_dim`` of them, else all of them. The output is the decoded mixed latent,
    as in pyvene (so, unlike :class:`AutoencoderIntervention`, the base's reconstruction error
    is not added back: a pre-trained SAE is used as it was published). Parameter names and
    shapes are pyvene's, which are Gemma Scope's, so a state dict of either loads with
    ``load_state_dict``. The parameters start at zero: the weights are meant to be loaded.

    Differences from pyvene 0.1.8, where it is wrong: without ``subspaces`` pyvene interchanges
    the first ``embed_dim`` latents (its ``interchange_dim`` starts as ``embed_dim``, a width of
    the wrong space); here all latents, or the first ``interchange_dim``. Inputs are cast to the
    parameters' dtype and the output back to the input's.

    Args:
        embed_dim: width ``d`` of one unit; required.
        low_rank_dimension: number ``m`` of latent features (pyvene's name); required.
        interchange_dim: latents interchanged when a call gives no ``subspaces``.
        subspace_partition: ``[[start, end), ...]`` ranges of the latents.
        source_representation: a constant source used in place of a source run.
        keep_last_dim: always ``True`` (each unit is encoded alone, as pyvene forces);
            ``False`` is refused.
        **pyvene_keywords: pyvene's other keywords (``use_fast`` honoured; ``dtype``: no effect).
    """

    needs_embed_dim = True
    config_fields: ClassVar[tuple[str, ...]] = (
        *Intervention.config_fields,
        "low_rank_dimension",
        "interchange_dim",
    )

    def __init__(
        self,
        embed_dim: int | None = None,
        low_rank_dimension: int | None = None,
        interchange_dim: int | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        source_representation: torch.Tensor | None = None,
        keep_last_dim: bool | None = True,
        **pyvene_keywords: Any,
    ) -> None:
        owner = type(self).__name__
        width = require_dim(low_rank_dimension, "low_rank_dimension", owner, "the number of latents")
        if keep_last_dim is False:
            raise ValueError(
                f"{owner} encodes each unit alone (pyvene forces keep_last_dim=True); "
                "keep_last_dim=False is not allowed"
            )
        if interchange_dim is not None and not 0 <= int(interchange_dim) <= width:
            raise ValueError(
                f"{owner}: interchange_dim must be in 0..{width} (low_rank_dimension), "
                f"got {interchange_dim}"
            )
        super().__init__(embed_dim, subspace_partition, source_representation, True, **pyvene_keywords)
        dim = self.embed_dim
        self.low_rank_dimension = width
        self.interchange_dim = None if interchange_dim is None else int(interchange_dim)
        self.W_enc = nn.Parameter(torch.zeros(dim, width))  # (d, m)
        self.W_dec = nn.Parameter(torch.zeros(width, dim))  # (m, d)
        self.threshold = nn.Parameter(torch.zeros(width))  # (m,)
        self.b_enc = nn.Parameter(torch.zeros(width))  # (m,)
        self.b_dec = nn.Parameter(torch.zeros(dim))  # (d,)

    def subspace_size(self) -> int:
        return self.low_rank_dimension

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent features of ``x`` (any leading dims), in the parameters' dtype."""
        pre = x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc  # (..., m)
        return (pre > self.threshold) * torch.relu(pre)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return latent @ self.W_dec + self.b_dec  # (..., d)

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        source = require_source(type(self).__name__, source)
        latent_base = self.encode(base)  # (batch, units, m)
        latent_source = self.encode(source)  # (batch, units, m)
        mask = self.subspace_mask(subspaces, latent_base)
        if mask is None:
            mask = first_dims_mask(self.interchange_dim, self.low_rank_dimension, base.device)
        if mask is None:
            mixed = latent_source.expand_as(latent_base)
        else:
            mixed = torch.where(mask, latent_source, latent_base)  # (batch, units, m)
        return self.decode(mixed).to(base.dtype)  # (batch, units, d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, low_rank_dimension={self.low_rank_dimension}"


__all__ = ["AutoencoderIntervention", "JumpReLUAutoencoderIntervention"]
