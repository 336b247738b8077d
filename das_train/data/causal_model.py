"""A causal model over named variables: pyvene's ``CausalModel``, as DAS tutorials call it.

A causal model is the hypothesis an interchange intervention tests: variables with values,
parents and one function each. Running it forward gives every variable's value; an
interchange sets some variables to the values they take on other (source) inputs and runs
forward again, which is the counterfactual label a neural network is trained and scored
against. Tutorials written for pyvene 0.1.8 build one of these and call
``generate_factual_dataset`` / ``generate_counterfactual_dataset``; this class keeps their
signatures, their return shapes and their draws from Python's ``random`` (so a seeded script
generates the same examples), and fixes what pyvene gets wrong:

- the caller's ``variables`` list and ``pos`` dict are not modified (pyvene sorts the first in
  place and writes default positions into the second, a mutable default shared by every model);
- ``pos=None`` works;
- ``generate_counterfactual_dataset`` without a ``sampler`` works (pyvene's default sampler
  rejects the ``output_var`` arguments it is called with), and it honours ``input_function`` /
  ``output_function`` (pyvene ignores both there);
- ``add_variable`` really adds the variable (pyvene leaves it out of ``variables`` and of its
  parents' children).

Functions may be written for plain values or for tensors: ``lambda w, x: w == x`` run on
``(n,)`` tensors runs the model on ``n`` inputs at once, which our tasks use.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable
from typing import Any

import torch

Setting = dict[str, Any]


class CausalModel:
    """Variables, their values, parents and functions, in topological (timestep) order.

    Args:
        variables: variable names.
        values: ``{variable: list of values}``; inputs are sampled from these lists.
        parents: ``{variable: [parent, ...]}``; a variable with no parents is an input.
        functions: ``{variable: f(*parent_values)}``; an input's function takes no arguments.
        timesteps: ``{variable: int}``, each larger than its parents'; computed when omitted
            (inputs 0, outputs last).
        equiv_classes: ``{variable: {value: [parent setting, ...]}}`` for
            :meth:`sample_input_tree_balanced`; computed on first use when omitted.
        pos: ``{variable: (x, y)}`` drawing positions for :meth:`print_structure`.
    """

    def __init__(
        self,
        variables: list[str],
        values: dict[str, list],
        parents: dict[str, list[str]],
        functions: dict[str, Callable],
        timesteps: dict[str, int] | None = None,
        equiv_classes: dict | None = None,
        pos: dict[str, tuple] | None = None,
    ) -> None:
        self.variables = sorted(variables)
        self.values = values
        self.parents = parents
        self.functions = functions
        self.children = {var: [] for var in self.variables}
        for var in self.variables:
            for parent in parents[var]:
                self.children[parent].append(var)
        self._check(timesteps)
        self.inputs = [var for var in self.variables if not parents[var]]
        self.outputs = [var for var in self.variables if not self.children[var]]
        if timesteps is None:
            self.timesteps, self.end_time = self.generate_timesteps()
            for output in self.outputs:
                self.timesteps[output] = self.end_time
        else:
            self.timesteps = dict(timesteps)
        self.variables.sort(key=lambda var: self.timesteps[var])
        self.run_forward()  # fails now, not at the first sample, if a function is wrong
        self.pos = self._default_positions(dict(pos or {}))
        self.equiv_classes = equiv_classes if equiv_classes is not None else {}

    def _check(self, timesteps: dict[str, int] | None) -> None:
        problems = []
        for var in self.variables:
            for table, name in ((self.parents, "parents"), (self.values, "values"),
                                (self.functions, "functions")):
                if var not in table:
                    problems.append(f"{var!r} has no entry in {name}")
            for parent in self.parents.get(var, []):
                if parent not in self.children:
                    problems.append(f"{var!r} has parent {parent!r}, which is not a variable")
                elif timesteps is not None and not timesteps[parent] < timesteps[var]:
                    problems.append(f"timestep of {parent!r} must be below that of its child {var!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def _default_positions(self, pos: dict[str, tuple]) -> dict[str, tuple]:
        """Unplaced variables go on their timestep's row, left to right."""
        width: dict[int, int] = {}
        for var in self.variables:
            if var not in pos:
                step = self.timesteps[var]
                pos[var] = (width.get(step, 0), step)
                width[step] = width.get(step, 0) + 1
        return pos

    def generate_timesteps(self) -> tuple[dict[str, int], int]:
        """Inputs at 0, every other variable one after its latest parent; and the last step."""
        timesteps = {var: 0 for var in self.inputs}
        frontier, step = list(self.inputs), 0
        while frontier:
            step += 1
            frontier = sorted({child for parent in frontier for child in self.children[parent]})
            for child in frontier:
                timesteps[child] = step
        return timesteps, step - 1

    def generate_equiv_classes(self) -> None:
        """For each non-input variable and value, every parent setting that produces it."""
        for var in self.variables:
            if var in self.inputs or var in self.equiv_classes:
                continue
            classes: dict[Any, list[Setting]] = {value: [] for value in self.values[var]}
            for parent_values in itertools.product(*[self.values[p] for p in self.parents[var]]):
                value = self.functions[var](*parent_values)
                classes[value].append(dict(zip(self.parents[var], parent_values)))
            self.equiv_classes[var] = classes

    def print_structure(self, pos: dict | None = None, font: int = 12, node_size: int = 1000) -> None:
        """Draws the graph (needs networkx and matplotlib)."""
        self._draw({var: var for var in self.variables}, pos or self.pos, font, node_size)

    def print_setting(self, total_setting: Setting, font: int = 12, node_size: int = 1000) -> None:
        """Draws the graph with each variable's value in ``total_setting``."""
        labels = {var: f"{var}: {total_setting[var]}" for var in self.variables}
        self._draw(labels, self.pos, font, node_size)

    def _draw(self, labels: dict[str, str], pos: dict, font: int, node_size: int) -> None:
        import matplotlib.pyplot as plt
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(labels[var] for var in self.variables)
        graph.add_edges_from((labels[p], labels[c]) for c in self.variables for p in self.parents[c])
        plt.figure(figsize=(10, 10))
        nx.draw_networkx(graph, with_labels=True, node_color="green", font_size=font,
                         node_size=node_size, pos={labels[v]: xy for v, xy in pos.items()})
        plt.show()

    # -- running ---------------------------------------------------------------------------

    def run_forward(self, intervention: Setting | None = None) -> Setting:
        """Every variable's value; variables in ``intervention`` are set, not computed."""
        setting: Setting = {}
        for var in self.variables:  # timestep order: parents come first
            if intervention is not None and var in intervention:
                setting[var] = intervention[var]
            else:
                setting[var] = self.functions[var](*[setting[p] for p in self.parents[var]])
        return setting

    def run_interchange(self, input: Setting, source_interventions: dict[str, Setting]) -> Setting:
        """Runs ``input`` with each variable ``v`` of ``source_interventions`` set to the value
        it takes when the model runs on ``source_interventions[v]``."""
        interchanged = copy.deepcopy(input)
        for var, source in source_interventions.items():
            interchanged[var] = self.run_forward(source)[var]
        return self.run_forward(interchanged)

    def find_live_paths(self, intervention: Setting) -> dict[int, list[list[str]]]:
        """Paths ``[v0, ..., vk]`` (by length, from 2) along which every variable is an actual
        cause of the next: changing its value alone changes the next one's."""
        actual = self.run_forward(intervention)
        paths = {1: [[var] for var in self.variables]}
        step = 2
        while True:
            paths[step] = []
            for path in paths[step - 1]:
                for child in self.children[path[-1]]:
                    if self._is_actual_cause(intervention, actual, path[-1], child):
                        paths[step].append(path + [child])
            if not paths[step]:
                break
            step += 1
        del paths[1]
        return paths

    def _is_actual_cause(self, intervention: Setting, actual: Setting, var: str, child: str) -> bool:
        for value in self.values[var]:
            changed = copy.deepcopy(intervention)
            changed[var] = value
            if self.run_forward(changed)[child] != actual[child]:
                return True
        return False

    def add_variable(self, variable: str, values: list, parents: list[str], children: list[str],
                     function: Callable, timestep: int | None = None) -> None:
        """Adds ``variable`` between ``parents`` and ``children`` (which must exist)."""
        unknown = [v for v in list(parents) + list(children) if v not in self.children]
        if unknown:
            raise ValueError(f"add_variable({variable!r}): unknown variables {unknown}")
        self.values[variable], self.functions[variable] = values, function
        self.parents[variable], self.children[variable] = list(parents), list(children)
        for parent in parents:
            self.children[parent].append(variable)
        for child in children:
            self.parents[child].append(variable)
        if timestep is None:
            timestep = 1 + max((self.timesteps[p] for p in parents), default=-1)
        self.timesteps[variable] = timestep
        self._push_below(variable)
        self.variables.append(variable)
        self.variables.sort(key=lambda var: self.timesteps[var])
        self.inputs = sorted(var for var in self.variables if not self.parents[var])
        self.outputs = sorted(var for var in self.variables if not self.children[var])

    def _push_below(self, var: str) -> None:
        """Moves descendants that now sit at or above ``var``'s timestep one step below it."""
        for child in self.children[var]:
            if self.timesteps[child] <= self.timesteps[var]:
                self.timesteps[child] = self.timesteps[var] + 1
                self._push_below(child)

    # -- sampling (draws from Python's ``random``, in pyvene's order) --------------------------

    def sample_intervention(self, mandatory: Callable | None = None) -> Setting:
        """A random non-empty setting of some intermediate variables (each kept with p=1/2)."""
        intervention: Setting = {}
        while not intervention:
            for var in self.variables:
                if var in self.inputs or var in self.outputs:
                    continue
                if random.choice([0, 1]) == 0:
                    intervention[var] = random.choice(self.values[var])
        return intervention

    def sample_input(self, mandatory: Callable | None = None, output_var: str | None = None,
                     output_var_value: Any = None) -> Setting:
        """Uniform input values, redrawn until ``mandatory(full setting)`` holds and, when
        ``output_var`` is given, until that variable takes ``output_var_value``."""

        def accepted(setting: Setting) -> bool:
            if output_var is not None and setting[output_var] != output_var_value:
                return False
            return mandatory is None or bool(mandatory(setting))

        while True:
            input = {var: random.sample(self.values[var], 1)[0] for var in self.inputs}
            if accepted(self.run_forward(intervention=input)):
                return input

    def sample_input_tree_balanced(self, output_var: str | None = None,
                                   output_var_value: Any = None) -> Setting:
        """An input whose ``output_var`` (the only output by default) takes
        ``output_var_value`` (uniform over its values by default), drawn top-down: each
        variable's parent setting is chosen uniformly among those that produce its value, so
        every value of every intermediate variable is equally likely."""
        if output_var is None and len(self.outputs) != 1:
            raise ValueError(f"the model has outputs {self.outputs}; name an output_var")
        self.generate_equiv_classes()
        output_var = output_var if output_var is not None else self.outputs[0]
        if output_var_value is None:
            output_var_value = random.choice(self.values[output_var])
        input: Setting = {}
        self._fill_parents(output_var, output_var_value, input)
        for var in self.inputs:
            if var not in input:
                input[var] = random.choice(self.values[var])
        return input

    def _fill_parents(self, var: str, value: Any, input: Setting) -> None:
        for parent, parent_value in random.choice(self.equiv_classes[var][value]).items():
            if parent in self.inputs:
                input[parent] = parent_value
            else:
                self._fill_parents(parent, parent_value, input)

    # -- filters for the samplers ---------------------------------------------------------------

    def get_path_maxlen_filter(self, lengths) -> Callable[[Setting], bool]:
        """Keeps settings whose longest live path has a length in ``lengths``."""

        def check_path(total_setting: Setting) -> bool:
            paths = self.find_live_paths({var: total_setting[var] for var in self.inputs})
            return max(k for k, found in paths.items() if found) in lengths

        return check_path

    def get_partial_filter(self, partial_setting: Setting) -> Callable[[Setting], bool]:
        """Keeps settings that agree with ``partial_setting``."""

        def compare(total_setting: Setting) -> bool:
            return all(total_setting[var] == value for var, value in partial_setting.items())

        return compare

    def get_specific_path_filter(self, start: str, end: str) -> Callable[[Setting], bool]:
        """Keeps settings with a live path from ``start`` to ``end``."""

        def check_path(total_setting: Setting) -> bool:
            paths = self.find_live_paths({var: total_setting[var] for var in self.inputs})
            return any(p[0] == start and p[-1] == end for found in paths.values() for p in found)

        return check_path

    # -- datasets -------------------------------------------------------------------------------

    def input_to_tensor(self, setting: Setting) -> torch.Tensor:
        """The inputs' values side by side, as one float vector (inputs in name order)."""
        return torch.cat([torch.tensor(setting[var]).float().reshape(-1) for var in self.inputs])

    def output_to_tensor(self, setting: Setting) -> torch.Tensor:
        """The outputs' values as one float each (outputs in name order)."""
        return torch.cat([torch.tensor(float(setting[var])).reshape(1) for var in self.outputs])

    def generate_factual_dataset(self, size: int, sampler: Callable | None = None,
                                 filter: Callable | None = None, device: Any = "cpu",
                                 input_function: Callable | None = None,
                                 output_function: Callable | None = None,
                                 return_tensors: bool = True) -> list[dict]:
        """``size`` examples ``{"input_ids", "labels"}``: inputs from ``sampler`` (kept when
        ``filter(input)`` holds) and the model's outputs on them."""
        sampler = sampler or self.sample_input
        input_function = input_function or self.input_to_tensor
        output_function = output_function or self.output_to_tensor
        examples = []
        while len(examples) < size:
            input = sampler()
            if filter is not None and not filter(input):
                continue
            output = self.run_forward(input)
            if return_tensors:
                examples.append({"input_ids": input_function(input).to(device),
                                 "labels": output_function(output).to(device)})
            else:
                examples.append({"input_ids": input, "labels": output})
        return examples

    def generate_counterfactual_dataset(self, size: int, intervention_id: Callable,
                                        batch_size: int, sampler: Callable | None = None,
                                        intervention_sampler: Callable | None = None,
                                        filter: Callable | None = None, device: Any = "cpu",
                                        input_function: Callable | None = None,
                                        output_function: Callable | None = None,
                                        return_tensors: bool = True) -> list[dict]:
        """Interchange examples, ``batch_size`` per sampled intervention, until ``size``.

        Each example: ``input_ids`` (the base), ``source_input_ids`` (one source per
        intermediate variable, in timestep order; a source is drawn so that its variable takes
        the intervention's value; unused slots are zeros), ``labels`` (outputs after the
        interchange), ``base_labels`` (outputs on the base) and ``intervention_id``
        (``intervention_id(intervention)``, a 1-element tensor).
        """
        sampler = sampler or self.sample_input
        intervention_sampler = intervention_sampler or self.sample_intervention
        encode = _Encoder(input_function or self.input_to_tensor,
                          output_function or self.output_to_tensor, device, return_tensors)
        slots = len([v for v in self.variables if v not in self.inputs and v not in self.outputs])
        examples = []
        while len(examples) < size:
            intervention = intervention_sampler()
            if filter is not None and not filter(intervention):
                continue
            for _ in range(batch_size):
                base = sampler()
                source_of = {var: sampler(output_var=var, output_var_value=intervention[var])
                             for var in self.variables if var in intervention}
                examples.append(encode.example(
                    base, list(source_of.values()), slots, self.run_interchange(base, source_of),
                    self.run_forward(base), intervention_id(intervention)))
        return examples


class _Encoder:
    """Turns one counterfactual example into tensors (or leaves it as settings)."""

    def __init__(self, input_function: Callable, output_function: Callable, device: Any,
                 return_tensors: bool) -> None:
        self.input_function, self.output_function = input_function, output_function
        self.device, self.return_tensors = device, return_tensors

    def example(self, base: Setting, sources: list[Setting], slots: int, labels: Setting,
                base_labels: Setting, intervention_id: Any) -> dict:
        if not self.return_tensors:
            padded = sources + [{} for _ in range(slots - len(sources))]
            return {"labels": labels, "base_labels": base_labels, "input_ids": base,
                    "source_input_ids": padded, "intervention_id": [intervention_id]}
        base_tensor = self.input_function(base)
        encoded = [self.input_function(s) for s in sources]
        encoded += [torch.zeros(base_tensor.shape) for _ in range(slots - len(sources))]
        return {
            "labels": self.output_function(labels).to(self.device),
            "base_labels": self.output_function(base_labels).to(self.device),
            "input_ids": base_tensor.to(self.device),
            "source_input_ids": torch.stack(encoded).to(self.device),
            "intervention_id": torch.tensor([intervention_id]).to(self.device),
        }
