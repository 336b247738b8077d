"""``run(cfg)``: the main job. Builds the model and the pairs, then sweeps DAS and probes.

For every site of the sweep ((layer, position), plus the embedding row) and every seed it
trains one intervention with a Lightning Trainer, measures IIA on held-out pairs, fits a
linear probe and its control task on activations collected at the same site, and appends a
row to ``results.csv``. By default (``sweep.batched``) the sites of one layer train together on
cached activations (:mod:`das_train.training.batched_sweep`), with the same results as
:func:`fit_site`'s one site at a time. Re-running the same run directory skips finished rows and resumes a
cut-off fit from its last checkpoint. At the end it writes the table and the heatmaps.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from das_train.core.fault_points import fault_point
from das_train.core.sites import table_for
from das_train.data.pair_contract import CounterfactualTask, TaskSpec
from das_train.data.samplers import EpochShuffleSampler, ResumableOrder
from das_train.training import preflight, reports
from das_train.training import run_dir as run_dir_state
from das_train.training.batched_sweep import (
    SplitReader,
    fallback_reason,
    fit_site_group,
    group_jobs,
    one_site_costs,
    sweep_probes,
)
from das_train.training.checkpoints import ResumeTrainingOrder, checkpoint_callback, fit_resuming
from das_train.training.schema import ConfigError, validate
from das_train.training.shared_prefix import can_skip, shared_prefix, untrained_reason
from das_train.training.task_loading import load_task

log = logging.getLogger("das_train")

OFFLINE_RECIPES = ("gender_tiny", "hierarchical_equality", "causal_tracing", "steering_tiny")


@dataclass(frozen=True)
class Site:
    layer: int
    component: str
    position: int
    position_name: str

    @property
    def key(self) -> str:
        return f"{self.component}-L{self.layer}-{self.position_name}"


# -- building blocks ------------------------------------------------------------------------------


def _hub_model(cfg: DictConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from das_train.core.loaders import HubUnavailableError, hub_unreachable_reason

    dtype = getattr(torch, cfg.model.dtype)
    offline_hint = (f"Recipes that work offline: {', '.join(OFFLINE_RECIPES)}; or add model=tiny to "
                    "train a small model on this task.")
    reason = hub_unreachable_reason(cfg.model.name, cfg.model.revision)
    if reason is not None:
        raise HubUnavailableError(f"recipe {cfg.recipe!r} needs {cfg.model.name!r}: {reason}. {offline_hint}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.name, revision=cfg.model.revision)
        model = AutoModelForCausalLM.from_pretrained(cfg.model.name, revision=cfg.model.revision, dtype=dtype,
                                                     device_map=cfg.model.device_map)
    except OSError as err:
        raise HubUnavailableError(
            f"recipe {cfg.recipe!r} needs {cfg.model.name!r} from the Hugging Face Hub, which cannot be "
            f"reached or is not cached ({type(err).__name__}: {err}). {offline_hint}"
        ) from err
    model.eval()
    device = frozen_model_device(cfg)
    if device is not None:
        model.to(device)
    return model, tokenizer


def frozen_model_device(cfg: DictConfig) -> torch.device | None:
    """Where a Hub model goes right after loading: the GPU this process will train on.

    Loading leaves it on the CPU. Moved here, before the pair filter runs its forwards, it is
    placed once for the whole run, and every site's fit finds it in place
    (:meth:`DASModule.place_frozen_model`). ``None`` when accelerate places it
    (``model.device_map``), when training runs on the CPU, or when there is no GPU. Under DDP
    each process takes the GPU of its local rank, as Lightning will.
    """
    if cfg.model.device_map is not None or cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available():
        return None
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def build_model(cfg: DictConfig, task: CounterfactualTask):
    """(model, tokenizer) for the configured model kind; tokenizer is None for vector tasks."""
    cache = str(Path(cfg.cache_dir) / "models")
    if cfg.model.kind == "hub":
        return _hub_model(cfg)
    if cfg.model.kind == "tiny" and hasattr(task, "build_tokenizer"):
        from das_train.data.tiny_lm import train_tiny_lm

        tokenizer = task.build_tokenizer()
        model = train_tiny_lm(task, tokenizer, n_layer=cfg.model.n_layer, hidden=cfg.model.hidden,
                              heads=cfg.model.heads, max_steps=cfg.model.max_steps, seed=cfg.seed,
                              cache_dir=cache)
        return model.eval(), tokenizer
    from das_train.tasks.hierarchical_equality import ExperimentSize, train_model

    # kind=mlp, or kind=tiny on a vector task: the task's own small model is the MLP.
    equality = getattr(task, "equality", None)
    if equality is None:
        raise ConfigError([f"model.kind=mlp needs a vector task such as hierarchical_equality, not {task.name}"])
    size = ExperimentSize(hidden=cfg.model.hidden)
    model, accuracy = train_model(equality, size, seed=cfg.seed)
    log.info("trained the %d-layer MLP: held-out accuracy %.3f", model.config.n_layer, accuracy)
    return model, None


def number_of_layers(model: torch.nn.Module) -> int:
    table = table_for(model)
    if table is None:
        raise ConfigError([f"{type(model).__name__} has no architecture table; sweeps need one"])
    return table.num_layers(model.config)


def build_sites(cfg: DictConfig, spec: TaskSpec, n_layers: int) -> list[Site]:
    problems = []
    layers = list(cfg.sweep.layers) if cfg.sweep.layers is not None else list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        problems.append(f"sweep.layers {bad} out of range; the model has layers 0..{n_layers - 1}")
    names = list(cfg.sweep.positions) if cfg.sweep.positions is not None else list(spec.positions)
    unknown = [n for n in names if n not in spec.positions]
    if unknown:
        problems.append(f"sweep.positions {unknown} unknown; the task's positions: {list(spec.positions)}")
    if problems:
        raise ConfigError(problems)
    sites = []
    if cfg.sweep.include_embeddings and spec.is_language_model_task:
        sites += [Site(0, "block_input", spec.positions[n], n) for n in names]
    sites += [Site(layer, cfg.sweep.component, spec.positions[n], n) for layer in layers for n in names]
    return sites


class RankSliceSampler(ResumableOrder, torch.utils.data.DistributedSampler):
    """Rows ``rank, rank + world, ...`` in order, with the rank read when iterated.

    Two uses:

    - training with ``trainer.shuffle=false`` (``drop_remainder=True``): a DDP step then sees
      exactly the rows one process sees in a batch ``world`` times larger; the last
      ``size % world`` rows are dropped so that every rank takes the same number of steps.
    - evaluation (``drop_remainder=False``): every row exactly once across ranks, the first
      ``size % world`` ranks holding one row more. Lightning's own DistributedSampler pads a
      split whose size is not a multiple of the world size by repeating rows, which would
      count those pairs twice in IIA.

    It subclasses DistributedSampler only so that Lightning, which replaces any other sampler
    of a distributed run when ``use_distributed_sampler=True``, leaves it alone; it does not
    call that class's constructor, which needs the process group. The rank and world size are
    read when iterated, once the process group exists. A training fit resumed mid-epoch
    continues at the batch it was cut off at (:class:`~das_train.data.samplers.ResumableOrder`).
    """

    def __init__(self, size: int, drop_remainder: bool = True, batch_size: int = 1) -> None:
        self.size = size
        self.drop_remainder = drop_remainder
        self.batch_size = batch_size
        self.epoch = 0

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    @property
    def rank(self) -> int:
        return self._world()[0]

    @property
    def num_replicas(self) -> int:
        return self._world()[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # the order never changes with the epoch; kept for Lightning's call

    def epoch_order(self, epoch: int) -> list[int]:
        rank, world = self._world()
        stop = self.size - self.size % world if self.drop_remainder else self.size
        return list(range(rank, stop, world))

    def __len__(self) -> int:
        rank, world = self._world()
        if self.drop_remainder:
            return self.size // world
        return len(range(rank, self.size, world))


class RankShuffleSampler(RankSliceSampler):
    """Training with ``trainer.shuffle=true`` on several processes: epoch ``e``'s shuffle of the
    whole split (the order one process's
    :class:`~das_train.data.samplers.EpochShuffleSampler` takes), dealt to the ranks in
    turn, the last ``size % world`` rows dropped.

    The order is a pure function of (seed, epoch), so a fit resumed mid-epoch continues at the
    batch it was cut off at, which Lightning's own shuffled DistributedSampler cannot (it
    restarts the epoch). Rank ``r``'s batch ``k`` of ``b`` rows holds the rows
    ``r, r + world, ...`` of the shuffle's ``k``-th run of ``world * b``: together the ranks
    train on one process's batch of ``world * b`` wherever the split divides into such
    batches.
    """

    def __init__(self, size: int, seed: int, batch_size: int) -> None:
        super().__init__(size, drop_remainder=True, batch_size=batch_size)
        self.shuffle = EpochShuffleSampler(range(size), seed, batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        rank, world = self._world()
        order = self.shuffle.epoch_order(epoch)
        return order[rank : len(order) - len(order) % world : world]


def _with_sampler(loader: torch.utils.data.DataLoader, sampler: torch.utils.data.Sampler) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                                       sampler=sampler, num_workers=loader.num_workers)


def distributed_train_loader(cfg: DictConfig, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """``loader``, or on several processes its rows dealt to the ranks: in order
    (:class:`RankSliceSampler`), or shuffled as ``loader``'s own
    :class:`~das_train.data.samplers.EpochShuffleSampler` shuffles (:class:`RankShuffleSampler`)."""
    if cfg.trainer.devices * cfg.trainer.num_nodes == 1:
        return loader
    size, batch = len(loader.dataset), loader.batch_size
    if isinstance(loader.sampler, EpochShuffleSampler):
        return _with_sampler(loader, RankShuffleSampler(size, loader.sampler.seed, batch))
    return _with_sampler(loader, RankSliceSampler(size, batch_size=batch))


def train_loader(cfg: DictConfig, datamodule) -> torch.utils.data.DataLoader:
    return distributed_train_loader(cfg, datamodule.train_dataloader())


def distributed_eval_loader(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """``loader``'s rows in order, each evaluated exactly once across ranks (RankSliceSampler).

    With one process it yields what ``loader`` yields (an unshuffled evaluation loader). Under
    DDP, with ``trainer.shuffle`` on or off alike, Lightning keeps this sampler instead of
    padding the split, so an IIA or accuracy counted over it is the single-process value.
    """
    return _with_sampler(loader, RankSliceSampler(len(loader.dataset), drop_remainder=False))


def make_logger(cfg: DictConfig, run_dir: Path, version: str):
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        return lightning.pytorch.loggers.CSVLogger(str(run_dir), name="logs", version=version)
    if kind == "tensorboard":
        return lightning.pytorch.loggers.TensorBoardLogger(str(run_dir), name="tensorboard", version=version)
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project=cfg.logger.project, name=f"{cfg.recipe}-{version}", save_dir=str(run_dir),
                       group=cfg.recipe, config=OmegaConf.to_container(cfg, resolve=True))


def make_trainer(cfg: DictConfig, run_dir: Path, version: str, ckpt_dir: Path) -> lightning.Trainer:
    """The Trainer of one site's (or one group of sites') fit: checkpoints in ``ckpt_dir`` for
    resuming exactly (:mod:`das_train.training.checkpoints`), temperature annealing for
    boundless interventions, the configured logger."""
    from das_train.training.callbacks import TemperatureAnnealing, fault_callbacks

    callbacks: list[lightning.Callback] = [
        checkpoint_callback(ckpt_dir, every_n_steps=max(cfg.trainer.max_steps // 4, 1)), ResumeTrainingOrder(),
    ]
    if "Boundless" in cfg.intervention.type:
        callbacks.append(TemperatureAnnealing(cfg.intervention.temperature_start, cfg.intervention.temperature_end))
    callbacks += fault_callbacks()
    return lightning.Trainer(
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy, precision=cfg.trainer.precision, max_steps=cfg.trainer.max_steps,
        logger=make_logger(cfg, run_dir, version), callbacks=callbacks, enable_progress_bar=cfg.progress,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=10,
        # Every loader of ours deals its rows to the ranks itself (RankSliceSampler, RankShuffleSampler).
        use_distributed_sampler=False,
    )


# -- one site ---------------------------------------------------------------------------------------


def fit_site(cfg: DictConfig, model, datamodule, spec: TaskSpec, site: Site, seed: int, run_dir: Path,
             untrained: str | None = None) -> dict[str, Any]:
    """Trains and evaluates DAS at one site, then the probe; returns the result row.
    ``untrained`` (why, :func:`~das_train.training.shared_prefix.untrained_reason`) tests the
    intervention as built instead of training it."""
    from das_train.training.das_module import DASModule
    from das_train.training.probe import collect_activations, probe_with_control

    start = time.perf_counter()
    version = f"{site.key}-s{seed}"
    ckpt_dir = run_dir / "checkpoints" / version
    lightning.seed_everything(seed, workers=True, verbose=False)
    # IIT trains the model itself: each site trains its own copy, so no site starts from the
    # model another site's training left (the probe below reads the shared, untouched model).
    trained_model = copy.deepcopy(model) if cfg.intervention.iit else model
    module = DASModule(
        trained_model, layer=site.layer, component=site.component, position=site.position,
        intervention=cfg.intervention.type, low_rank_dimension=cfg.intervention.low_rank_dimension,
        lr=cfg.intervention.lr, boundary_penalty=cfg.intervention.boundary_penalty,
        iit=cfg.intervention.iit, is_language_model_task=spec.is_language_model_task,
    )
    trainer = make_trainer(cfg, run_dir, version, ckpt_dir)
    if untrained:
        log.info("%s seed %d: %s", site.key, seed, untrained)
    else:
        fit_resuming(trainer, module, train_loader(cfg, datamodule), ckpt_dir, version, [f"{site.key} seed {seed}"])
    tested = trainer.test(module, dataloaders=distributed_eval_loader(datamodule.test_dataloader()), verbose=False)
    iia = float(tested[0]["test/iia"]) if tested else math.nan
    test_pairs = int(tested[0]["test/pairs"]) if tested else 0
    if trainer.is_global_zero:
        module.intervenable.save(str(run_dir / "interventions" / version))
    activations, variables, controls = collect_activations(
        model, site.layer, site.component, site.position, datamodule.ordered_dataloader("train"),
        spec.is_language_model_task,
    )
    probe = probe_with_control(
        activations, variables, controls, n_classes=spec.variable_values,
        lr=cfg.sweep.probe.lr, weight_decay=cfg.sweep.probe.weight_decay,
        max_epochs=cfg.sweep.probe.max_epochs, seed=seed,
    )
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the row is about to be written
    return result_row(site, seed, iia, probe, module.intervention, test_pairs,
                      round(time.perf_counter() - start, 2))


def result_row(site: Site, seed: int, iia: float, probe, intervention, test_pairs: int,
               seconds: float) -> dict[str, Any]:
    """One row of ``results.csv`` (the same for the per-site and the batched path)."""
    size = getattr(intervention, "intervention_size", None)  # boundless interventions only
    return {
        "layer": site.layer, "component": site.component, "position": site.position,
        "position_name": site.position_name, "seed": seed, "iia": iia,
        "probe_accuracy": probe.accuracy, "control_accuracy": probe.control_accuracy,
        "selectivity": probe.selectivity, "intervention_size": size() if callable(size) else "",
        "test_pairs": test_pairs, "train_seconds": seconds,
    }


def untrained_positions(cfg: DictConfig, model, splits: SplitReader, spec: TaskSpec,
                        sites: list[Site]) -> dict[Any, str]:
    """The swept positions tested untrained, with why (:mod:`das_train.training.shared_prefix`):
    those every training and test pair's base and source agree up to."""
    if not can_skip(cfg, model):
        return {}
    lm = spec.is_language_model_task
    prefix, seq = shared_prefix([splits.columns("train"), splits.columns("test")], lm)
    found = {}
    for site in sites:
        reason = untrained_reason(cfg, model, site.position, prefix, seq)
        if reason is not None:
            found[site.position] = reason
    return found


# -- the whole run -------------------------------------------------------------------------------


def as_run_config(cfg: Any) -> DictConfig:
    """A plain, validated copy of a composed config (Hydra's own settings dropped)."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    problems = validate(data)
    if problems:
        raise ConfigError(problems)
    return OmegaConf.create(data)


def is_global_zero() -> bool:
    """Rank 0 of a multi-process job (DDP, SLURM, torchrun): the one process that writes files.

    Read from the environment the launchers set, since files are written outside any Trainer.
    """
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID")
    if rank is not None:
        return int(rank) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def results_path(run_dir: Path, cfg: DictConfig) -> Path:
    if cfg.sweep.num_shards == 1:
        return run_dir / "results.csv"
    return run_dir / f"results.shard-{cfg.sweep.shard}-of-{cfg.sweep.num_shards}.csv"


def write_outputs(cfg: DictConfig, run_dir: Path, rows: list[dict[str, Any]], variable: str) -> None:
    sites_table = reports.write_tables(run_dir, rows)
    image = reports.write_heatmaps(run_dir, sites_table, f"{cfg.recipe}: {variable} (DAS vs probe)")
    print("\n" + reports.markdown_table(sites_table), flush=True)
    print(f"wrote {run_dir / 'table.csv'}, {run_dir / 'table.md'} and {image}", flush=True)


def _setup_output(cfg: DictConfig, run_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                  "lightning.fabric.utilities.seed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Validation is skipped on purpose (IIA is measured once, on the test split), and the
    # LeafSpec notice is Lightning's own deprecation under torch 2.13: neither helps a reader.
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # The batched sweep optimizes by hand; its checkpoint holds the state after the step, whose
    # count it records, which is what resuming needs.
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    # Our training samplers are positioned at the restored step (das_train.training.checkpoints),
    # so a mid-epoch resume is exact, whatever Lightning's check for a stateful loader says.
    warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch ended.*")
    if is_global_zero():
        text = OmegaConf.to_yaml(cfg)
        print(f"das_train: recipe {cfg.recipe}, run directory {run_dir}\n{text}", flush=True)
        name = "config.yaml" if cfg.sweep.num_shards == 1 else f"config.shard-{cfg.sweep.shard}.yaml"
        reports.atomic_write_text(run_dir / name, text)


def run(cfg: Any) -> Path:
    """Runs the sweep described by ``cfg`` (a composed recipe); returns the run directory.

    Only while the run directory is :func:`~das_train.training.run_dir.prepared`: locked
    against a second writer, holding nothing of another config, cleared of killed writers'
    temporary files.
    """
    cfg = as_run_config(cfg)
    if cfg.job == "das_sweep" and not cfg.sweep.merge:
        preflight.check_sweep(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_state.prepared(cfg, run_dir, results_path(run_dir, cfg), writer=is_global_zero()):
        return _run_prepared(cfg, run_dir)


def _run_prepared(cfg: DictConfig, run_dir: Path) -> Path:
    _setup_output(cfg, run_dir)
    if cfg.job == "causal_tracing":
        from das_train.training.tracing import run_tracing

        return run_tracing(cfg, run_dir)
    if cfg.job == "steering":
        from das_train.training.steering import run_steering

        return run_steering(cfg, run_dir)
    fingerprint = run_dir_state.config_fingerprint(cfg)
    if cfg.sweep.merge:
        rows = run_dir_state.finished_rows(run_dir, fingerprint)
        if not rows:
            raise ConfigError([f"sweep.merge=true but {run_dir} holds no results.csv or results.shard-*.csv"])
        problems = run_dir_state.merge_problems(run_dir, fingerprint, rows)
        if problems:
            raise ConfigError(problems)
        write_outputs(cfg, run_dir, rows, cfg.task.name)
        publish(cfg, run_dir)
        return run_dir

    lightning.seed_everything(cfg.seed, verbose=False)
    task = load_task(cfg.task.name)
    model, tokenizer = build_model(cfg, task)
    if cfg.model.kind == "hub":
        preflight.check_loaded_model(cfg, model, preflight.task_spec(task, tokenizer))
    from das_train.data.pair_datamodule import PairDataModule

    datamodule = PairDataModule(
        task, tokenizer, n_train=cfg.task.n_train, n_val=cfg.task.n_val, n_test=cfg.task.n_test,
        batch_size=cfg.trainer.batch_size, seed=cfg.seed, cache_dir=str(Path(cfg.cache_dir) / "pairs"),
        filter_pairs=cfg.task.filter_pairs, shuffle=cfg.trainer.shuffle,
    )
    datamodule.prepare_data()
    datamodule.setup()
    dropped = datamodule.filter_with(model)
    kept = {split: len(ds) for split, ds in datamodule.datasets.items()}
    print(f"pairs kept {kept}, dropped by the frozen-model filter {dropped}", flush=True)
    preflight.check_pairs_left(cfg, kept, dropped)
    if is_global_zero():
        from das_train import __version__

        reports.atomic_write_text(run_dir / "run_info.json", json.dumps({
            "das_train_version": __version__,
            "config_fingerprint": run_dir_state.config_fingerprint(cfg),
            "dataset": {"task": task.name, "seed": cfg.seed, "fingerprint": datamodule.fingerprint(),
                        "kept": kept, "dropped": dropped},
        }, indent=2))
    spec = datamodule.spec()
    sites = build_sites(cfg, spec, number_of_layers(model))

    # Every (site, seed) in a fixed order; shard i of n takes every n-th one from i.
    jobs = [(s, seed) for s in sites for seed in cfg.sweep.seeds][cfg.sweep.shard :: cfg.sweep.num_shards]
    path = results_path(run_dir, cfg)
    if is_global_zero():
        run_dir_state.write_plan(run_dir, fingerprint, [(s, seed) for s in sites for seed in cfg.sweep.seeds])
    rows, done = run_dir_state.resume_rows(run_dir, path, fingerprint)
    todo = [(s, seed) for s, seed in jobs if (s.layer, s.component, s.position, seed) not in done]
    if done:
        print(f"resuming: {len(done)} finished site runs found in {run_dir}, {len(todo)} to go", flush=True)
    costs = one_site_costs(cfg, model, datamodule, spec, jobs) if todo else None
    splits = SplitReader(datamodule, spec.is_language_model_task)
    untrained = untrained_positions(cfg, model, splits, spec, sites) if todo else {}
    probes = sweep_probes(cfg, model, datamodule, spec, todo, splits)
    fault_point("probes")
    bar = tqdm(total=len(todo), desc="sweep", unit="site", disable=not cfg.progress or not is_global_zero())
    for group in group_jobs(todo):
        site, count = group[0][0], len(group)
        reason = fallback_reason(cfg, model, site)
        if reason is None:
            group_seeds = sorted({seed for _, seed in group})
            bar.set_postfix_str(f"{site.component}-L{site.layer}: {count} sites in one fit, seeds {group_seeds}")
            new_rows = fit_site_group(cfg, model, datamodule, spec, group, run_dir, probes, costs, splits, untrained)
        else:
            if cfg.sweep.batched:
                log.info("%s-L%d one site at a time: %s", site.component, site.layer, reason)
            new_rows = []
            for site, seed in group:
                bar.set_postfix_str(f"{site.key} seed {seed}")
                new_rows.append(fit_site(cfg, model, datamodule, spec, site, seed, run_dir,
                                         untrained.get(site.position)))
        for row in new_rows:
            row["config_fingerprint"] = fingerprint
        rows += new_rows
        if is_global_zero():
            reports.write_rows(path, rows)
        fault_point("between_groups")
        for row in new_rows:
            log.info("%s-L%d-%s seed %d: IIA %.3f, probe %.3f (control %.3f)", row["component"], row["layer"],
                     row["position_name"], row["seed"], row["iia"], row["probe_accuracy"], row["control_accuracy"])
        bar.update(count)
    bar.close()
    if not is_global_zero():
        return run_dir
    everything = run_dir_state.finished_rows(run_dir, fingerprint)
    finished = {run_dir_state.site_key(r) for r in everything}
    missing = [(s, seed) for s in sites for seed in cfg.sweep.seeds if (s.layer, s.component, s.position, seed) not in finished]
    if missing:
        print(f"shard {cfg.sweep.shard} of {cfg.sweep.num_shards} is done; {len(missing)} site runs belong to "
              "shards still running. The last shard to finish writes the table, or run again with "
              "sweep.merge=true.", flush=True)
        return run_dir
    write_outputs(cfg, run_dir, everything, spec.variable)
    publish(cfg, run_dir)
    return run_dir


def publish(cfg: DictConfig, run_dir: Path) -> None:
    """Uploads the finished sweep when ``publish.repo_id`` is set (token from HF_TOKEN).

    A failed upload raises with the reason and where the local files are; the results are on
    disk already, so nothing is lost.
    """
    if not cfg.publish.repo_id or not is_global_zero():
        return
    from das_train.hub import publish_run

    url = publish_run(run_dir, cfg.publish.repo_id, private=cfg.publish.private)
    print(f"published {run_dir} to {url}", flush=True)
