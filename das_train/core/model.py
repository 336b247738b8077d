"""``IntervenableModel``: runs a wrapped model with interventions at configured sites.

A thin facade over the hook core. Construction resolves the config into a
:class:`~das_train.core.wiring.Wiring` (each intervention's site and source group); a call is
planned and checked before any forward (:mod:`das_train.core.planning`), then run
(:mod:`das_train.core.running`): each *distinct* source input once with getter hooks that gather
only the selected units, then the base once with setter hooks (:mod:`das_train.core.patching`)
that hand those units to the interventions and scatter the results back. In serial mode,
source ``g`` is run with the interventions of group ``g - 1`` applied, and the last group
patches the base.

The wrapped model is held but not registered as a submodule, so ``state_dict()`` holds only
the interventions; ``train()``/``eval()`` still reach the model.

The core does not publish. ``save_pretrained``, ``push_to_hub`` and ``from_pretrained`` are
thin methods over :mod:`das_train.hub`, which sits above the core and imports it; they import
the hub when called, the one import inside a function that the layering rule
(``tests/test_layering.py``) allows in the core, so that a user of the hook core alone never
loads the publishing layer and the hub can build on ``IntervenableModel`` without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from das_train.core.config import IntervenableConfig, RepresentationConfig, as_config
from das_train.core.devices import input_device, is_dispatched
from das_train.core.generation import generate
from das_train.core.planning import plan_call
from das_train.core.pyvene_methods import PyveneTrainingMethods
from das_train.core.running import call_model, gather_sources, run_hooks
from das_train.core.serialization import read_saved, save_intervenable
from das_train.core.sites import table_for
from das_train.core.wiring import InterventionDict, build_wiring
from das_train.interventions.calling import InterventionOutput
from das_train.interventions.static import CollectIntervention


@dataclass
class IntervenableOutput:
    """Returned by ``forward(..., return_dict=True)``."""

    original_outputs: Any
    intervened_outputs: Any
    collected_activations: list[torch.Tensor] | None


class IntervenableModel(PyveneTrainingMethods, nn.Module):
    """Wraps ``model`` with the interventions described by ``config``.

    Args:
        config: an :class:`IntervenableConfig`, a dict, a list of dicts or a
            :class:`RepresentationConfig`.
        model: any ``nn.Module``; Hugging Face models of a known family get named
            components, any module gets module-path components.
        use_fast: pyvene's switch to assume every example of a batch shares one location.
            Locations ignore it: per-example locations here already take one vectorized
            gather, so there is nothing to speed up and no shortcut that could go wrong. It is
            kept (``self.use_fast``) and handed to interventions built from the config, as
            pyvene does; there, as in pyvene, it keeps only the first ``subspaces`` list.
        as_adaptor: pyvene's switch to hand every intervention the hooked module's input too,
            as the keyword ``args`` (its units at the same locations), so an intervention can
            act as an adaptor (``base + f(args)``, a LoRA written by hand). Each intervention's
            ``forward`` must accept ``args`` (or ``**kwargs``); this is checked here.
    """

    def __init__(self, config: Any, model: nn.Module, use_fast: bool = False,
                 as_adaptor: bool = False) -> None:
        super().__init__()
        self.config: IntervenableConfig = as_config(config)
        self.mode = self.config.mode
        self.use_fast = bool(use_fast)
        self.as_adaptor = bool(as_adaptor)
        # pyvene's place for the InterventionOutput objects (autoencoder latents) of the last call
        self.full_intervention_outputs: list[InterventionOutput] = []
        object.__setattr__(self, "model", model)  # not a submodule: keeps state_dict small
        self.wiring = build_wiring(self.config, model, self.use_fast, self.as_adaptor)
        self.interventions = InterventionDict()
        for entry in self.wiring.entries:
            self.interventions[entry.key] = entry.intervention
        self.config.sorted_keys = self.sorted_keys
        self._freeze_model()
        device = self._model_device()
        if device is not None:
            self.interventions.to(device)

    # -- model state ----------------------------------------------------------------------------
    def _model_device(self) -> torch.device | None:
        # Not simply the first parameter's: accelerate leaves offloaded weights on `meta`.
        return input_device(self.model, default=None)

    def get_device(self) -> torch.device:
        """Where the model takes its inputs (for a model spread by accelerate, the embedding's
        execution device)."""
        return self._model_device() or torch.device("cpu")

    def set_device(self, device: Any, set_model: bool = True) -> IntervenableModel:
        """Moves the interventions (and the model, unless ``set_model=False``).

        A model placed by accelerate (``device_map``, ``cpu_offload``) stays where it is:
        moving it would fail on offloaded weights or undo the dispatch; the hooks carry units
        between its devices and the interventions'.
        """
        self.interventions.to(device)
        if set_model and not is_dispatched(self.model):
            self.model.to(device)
        return self

    def disable_model_gradients(self) -> None:
        """Freezes the wrapped model and puts it back in eval mode, undoing
        :meth:`enable_model_gradients` (pyvene 0.1.8 does the same). Construction freezes the
        model too, but leaves its train/eval mode as the caller set it."""
        self.model.eval()
        self._freeze_model()

    def _freeze_model(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)

    def enable_model_gradients(self) -> None:
        """Unfreezes the wrapped model and puts it in train mode, for interchange intervention
        training (IIT).

        Train mode turns the model's dropout on, as pyvene 0.1.8 does here (it calls
        ``model.train()``), so an IIT loop written for pyvene trains the same way. Call
        ``eval()`` afterwards for a deterministic forward with gradients.
        """
        self.model.train()
        for p in self.model.parameters():
            p.requires_grad_(True)

    def disable_intervention_gradients(self) -> None:
        for p in self.interventions.parameters():
            p.requires_grad_(False)

    def get_trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trainable interventions (shared ones once), plus the model's
        parameters when its gradients are enabled. Buffers (temperatures, constants) never."""
        seen: set[int] = set()
        params: list[nn.Parameter] = []
        for entry in self.wiring.entries:
            if not entry.intervention.trainable:
                continue
            for p in entry.intervention.parameters():
                if id(p) not in seen and p.requires_grad:
                    seen.add(id(p))
                    params.append(p)
        params.extend(p for p in self.model.parameters() if p.requires_grad and id(p) not in seen)
        return params

    def count_parameters(self, include_model: bool = False) -> int:
        seen: set[int] = set()
        total = 0
        for p in self.interventions.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        if include_model:
            total += sum(p.numel() for p in self.model.parameters())
        return total

    def train(self, mode: bool = True) -> IntervenableModel:
        super().train(mode)
        self.model.train(mode)
        return self

    def eval(self) -> IntervenableModel:
        return self.train(False)

    @property
    def representations(self) -> dict[str, RepresentationConfig]:
        return {e.key: e.representation for e in self.wiring.entries}

    @property
    def sorted_keys(self) -> list[str]:
        return [e.key for e in self.wiring.entries]

    def __repr__(self) -> str:
        table = table_for(self.model)
        lines = [
            f"IntervenableModel(model={type(self.model).__name__}"
            f"{f' [{table.name}]' if table else ''}, mode={self.mode!r}, "
            f"trainable parameters={self.count_parameters()}"
        ]
        for e in self.wiring.entries:
            lines.append(f"  {e.key} (group {e.group}): {e.intervention!r}")
        return "\n".join(lines) + "\n)"

    # -- running ------------------------------------------------------------------------------
    def forward(
        self,
        base: Any,
        sources: Any = None,
        unit_locations: dict[str, Any] | None = None,
        source_representations: Any = None,
        subspaces: Any = None,
        labels: torch.Tensor | None = None,
        output_original_output: bool = False,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | None = None,
    ):
        """Runs the base with every configured intervention applied.

        Returns ``(original_outputs, intervened_outputs)``; ``original_outputs`` is ``None``
        unless ``output_original_output``. With collect interventions, the first element is
        ``(original_outputs, [collected activations, ...])``. ``return_dict=True`` returns an
        :class:`IntervenableOutput` instead. ``use_cache`` and ``logits_to_keep`` are passed to
        a Hugging Face model's forward as given (``logits_to_keep=1``: the last position's
        logits only).
        """
        plan = plan_call(self.wiring, self.mode, base, sources, unit_locations, source_representations, subspaces)
        self.full_intervention_outputs = plan.intervention_outputs
        given = {"labels": labels, "use_cache": use_cache, "logits_to_keep": logits_to_keep}
        extra = {name: value for name, value in given.items() if value is not None}
        original = call_model(self.model, base, extra) if output_original_output else None
        collected: dict[int, torch.Tensor] = {}
        store, setters = gather_sources(self.wiring, self.mode, plan, collected, extra)
        outputs, _ = run_hooks(self.wiring, base, setters, [], plan, store, collected, extra)
        collects = [
            i for i, e in enumerate(self.wiring.entries) if isinstance(e.intervention, CollectIntervention)
        ]
        activations = [collected[i] for i in collects if i in collected]
        if return_dict:
            return IntervenableOutput(original, outputs, activations if collects else None)
        first = (original, activations) if collects else original
        return first, outputs

    def generate(
        self,
        base: Any,
        sources: Any = None,
        unit_locations: dict[str, Any] | None = None,
        source_representations: Any = None,
        intervene_on_prompt: bool = False,
        timestep_selector: Any = None,
        output_original_output: bool = False,
        subspaces: Any = None,
        **generate_kwargs: Any,
    ):
        """Runs the wrapped model's ``generate`` with the interventions applied.

        ``intervene_on_prompt``: apply the interventions at the base locations of the prompt
        pass, as :meth:`forward` does. Decoding steps are intervened (at the newest position)
        when ``intervene_on_prompt=False`` (every step) or ``timestep_selector`` is given (a
        list of step indices, a callable ``step -> bool``, or a dict of those by intervention
        key; step 0 is the first call after the prompt pass). ``generate_kwargs`` go to the
        model's ``generate`` (Hugging Face's own keyword set). Returns ``(original_sequences or None, sequences)``. Positions in
        ``unit_locations`` index the base as passed, left pads included. Semantics in
        :mod:`das_train.core.generation`.
        """
        return generate(self.wiring, self.mode, base, sources, unit_locations, source_representations,
                        intervene_on_prompt, timestep_selector, output_original_output, subspaces,
                        generate_kwargs)

    # -- saving ---------------------------------------------------------------------------------
    def save(self, save_directory: str, save_to_hf_hub: bool = False, hf_repo_name: str | None = None) -> None:
        """Writes ``config.json`` and ``interventions.safetensors`` (see ``das_train.core.serialization``)."""
        save_intervenable(self, save_directory, save_to_hf_hub=save_to_hf_hub, hf_repo_name=hf_repo_name)

    def save_pretrained(self, save_directory: str, card=None):
        """Saves the interventions with a model card (see :mod:`das_train.hub`)."""
        from das_train.hub import save_pretrained  # the publishing layer, above the core

        return save_pretrained(self, save_directory, card=card)

    def push_to_hub(self, repo_id: str, card=None, token: str | None = None, private: bool = False) -> str:
        """Uploads the interventions and their card to the Hugging Face Hub."""
        from das_train.hub import push_to_hub  # the publishing layer, above the core

        return push_to_hub(self, repo_id, card=card, token=token, private=private)

    @staticmethod
    def from_pretrained(repo_or_dir: str, model: nn.Module, revision: str | None = None,
                        subfolder: str | None = None) -> IntervenableModel:
        """Loads interventions from a directory or a Hub repo, onto the CPU first."""
        from das_train.hub import from_pretrained  # the publishing layer, above the core

        return from_pretrained(repo_or_dir, model, revision=revision, subfolder=subfolder)

    def save_intervention(self, save_directory: str, include_model: bool = False) -> None:
        """pyvene's name for saving the interventions alone; the same files as :meth:`save`."""
        if include_model:
            raise ValueError("saving the wrapped model is not supported; save it with its own save_pretrained")
        self.save(save_directory)

    @staticmethod
    def load(load_directory: str, model: nn.Module, local_directory: str | None = None,
             from_huggingface_hub: bool = False) -> IntervenableModel:
        """Rebuilds a saved IntervenableModel around ``model`` (on CPU, whatever it was saved on).

        ``load_directory`` is a directory, or a Hub repo id when no such directory exists (or
        with ``from_huggingface_hub=True``); ``local_directory`` is where a download goes.
        """
        saved = read_saved(load_directory, model, local_directory=local_directory,
                           from_huggingface_hub=from_huggingface_hub)
        intervenable = IntervenableModel(saved.config, model)
        saved.check_site_widths(intervenable.wiring)
        return intervenable
