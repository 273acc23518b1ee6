"""The config tree: its schema (types of the top-level keys), resolvers and `compose` for tools and tests.

The values live in `conf/`; this file holds types only, so Hydra rejects a bad override such as
`epochs=ten` when composing, before anything runs. It imports neither torch nor the methods until a resolver needs
them, so that `train.py --help` and shell completion answer at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError

from runners.overrides import (
    CONF_DIR,
    NOT_IN_RESULT,
    ConfigError,
    all_keys,
    check,
    counted,
    folder_name,
    group_options,
    run_subdir,
)

PROJECT_ROOT = CONF_DIR.parent


@dataclass
class RunSchema:
    seed: int = MISSING
    protocol: str = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    eval_every: int = MISSING
    flops_images: int = MISSING
    label_smoothing: float = MISSING
    grad_clip: float | None = MISSING
    drop_path: float = MISSING
    weight_decay_1d: bool = MISSING
    amp: bool = MISSING
    deterministic: bool = MISSING
    compile: str = MISSING
    device: str = MISSING
    force: bool = MISSING
    run_name: str = MISSING
    paths: Any = MISSING
    data: Any = MISSING
    dataset: Any = MISSING
    pipeline: Any = MISSING  # how images are resized, augmented and normalised (conf/pipeline/; set by the dataset)
    backbone: Any = MISSING
    method: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    logger: Any = MISSING
    memory: Any = None  # techniques (methods/techniques/): an empty group option is none
    quant: Any = None
    init: Any = None
    recipe: Any = None  # per-task values of an experiment (conf/experiment/), read by interpolation


def _run_leaf(protocol: str, seed: int) -> str:
    """`seed42` for the reported protocol; tuning runs (protocol=tune) live beside it as `tune-seed42`."""
    return f"seed{seed}" if protocol == "final" else f"{protocol}-seed{seed}"


def _run_subdir(hparams: str, benchmark: str, task: str, run_name: str, backbone: str, protocol: str,
                seed: int) -> str:
    """`<benchmark>/<task>/<run_name>/<backbone>/[<hparams>/]<leaf>`, every piece checked to stay inside paths.runs.
    `hparams` comes first so that its checks of the overrides run before the other pieces are resolved."""
    return run_subdir(benchmark, task, run_name, backbone, hparams, _run_leaf(protocol, seed))


def _method_label(method: DictConfig, *techniques: DictConfig | None) -> str:
    """The label of the configured method and techniques (vpt_deep, lora_qv, adaptformer+1bit, …): a run
    directory's method level. Techniques are not built here (one may read another run); their yaml has `label`."""
    labels = [_label(OmegaConf.to_container(method, resolve=True))]
    return "+".join(labels + [t.label for t in techniques if t])


def _label(method: dict) -> str:
    from methods import create_method

    return create_method(**method).label


def _benchmark_fact(kind: str, name: str, key: str) -> object:
    """A fact of a benchmark's task (group, class count) from the table in data/."""
    from data.fewshot import fewshot_set
    from data.fgvc import fgvc_set
    from data.vtab import vtab_task

    return getattr({"vtab": vtab_task, "fgvc": fgvc_set, "fewshot": fewshot_set}[kind](name), key)


def _normalisation(name: str, key: str, channel: str) -> float:
    from data.task import normalisation

    return getattr(normalisation(name), key)[int(channel)]


def _in_range(test: Callable[[float], bool], rule: str) -> tuple[Callable[[object], bool], str]:
    return (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and test(v)), rule


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")  # `compile=`: none, or a torch.compile mode

# Values the schema's types allow but no run can use: key → (test, the rule said to the user). Absent keys pass.
RANGES = {
    "epochs": _in_range(lambda v: v >= 1, "≥ 1"),
    "batch_size": _in_range(lambda v: v >= 1, "≥ 1"),
    "eval_batch_size": _in_range(lambda v: v >= 1, "≥ 1"),
    "eval_every": _in_range(lambda v: v >= 0, "≥ 0 (0: only at the end)"),
    "flops_images": _in_range(lambda v: v >= 1, "≥ 1"),
    "seed": _in_range(lambda v: 0 <= v < 2**32, "in [0, 2³²)"),
    "label_smoothing": _in_range(lambda v: 0 <= v < 1, "in [0, 1)"),
    "drop_path": _in_range(lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.lr": _in_range(lambda v: v > 0, "a number > 0"),
    "optimizer.weight_decay": _in_range(lambda v: v >= 0, "a number ≥ 0"),
    "optimizer.momentum": _in_range(lambda v: 0 <= v < 1, "in [0, 1)"),
    "scheduler.warmup_epochs": _in_range(lambda v: v >= 0, "≥ 0"),
    "data.decode_workers": _in_range(lambda v: v >= 0, "≥ 0 (0: one per CPU)"),
    "data.augment_workers": _in_range(lambda v: v >= 0, "≥ 0 (0: in the training process)"),
}
CHOICES = {"compile": COMPILE_MODES}  # keys with a fixed set of values


def validate(cfg: DictConfig) -> None:
    """Every value in `RANGES` (and grad_clip, > 0 or null) within its range and every key of `CHOICES` one of its
    values, else a `ConfigError` naming the key."""
    checks = {**RANGES, "grad_clip": _in_range(lambda v: v > 0, "> 0, or null for none")}
    for key, (ok, rule) in checks.items():
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except InterpolationToMissingValueError:  # a recipe's open value: the run names it when it needs it
            continue
        if value is None or ok(value):
            continue
        raise ConfigError(f"{key}={value!r} is out of range: it must be {rule}")
    for key, allowed in CHOICES.items():
        if (value := cfg.get(key)) not in allowed:
            raise ConfigError(f"{key}={value} is not one of: {', '.join(allowed)}")


def _task_overrides(root: DictConfig) -> list[str]:
    """The command line's overrides of this job: from the config when it holds Hydra's node (compose with
    `return_hydra_config`), else from the running Hydra app."""
    saved = OmegaConf.select(root, "hydra.overrides.task", default=None)
    if saved is not None:
        return list(saved)
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    raise ConfigError("paths.hparams is set by train.py or runners.compose(); compose configs through them")


def hparams(overrides: Sequence[str], cfg: DictConfig) -> str:
    """The run folder's hyper-parameter level for `cfg` composed from `overrides`, after checking both."""
    check(overrides, lambda: all_keys(cfg))
    validate(cfg)
    return folder_name(counted(overrides, cfg, _label))


def _config_groups() -> str:
    """Each config group with its options (nested ones as `vtab/cifar`, the shared `_` bases left out), for --help."""
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    return "\n".join(textwrap.fill(", ".join(group_options(g)), 116, initial_indent=f"{g}: ",
                                    subsequent_indent="    ", break_on_hyphens=False) for g in groups)


def register() -> None:
    ConfigStore.instance().store(name="schema", node=RunSchema)
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("hparams", lambda *, _root_: hparams(_task_overrides(_root_), _root_),
                                    replace=True)
    OmegaConf.register_new_resolver("run_subdir", _run_subdir, replace=True)
    OmegaConf.register_new_resolver("config_groups", _config_groups, replace=True)
    OmegaConf.register_new_resolver("method_label", _method_label, replace=True)
    # benchmark facts (group, class count) live once, in data/: ${vtab:cifar,num_classes}
    for kind in ("vtab", "fgvc", "fewshot"):
        OmegaConf.register_new_resolver(kind, lambda name, key, _k=kind: _benchmark_fact(_k, name, key), replace=True)
    # named input normalisations (imagenet, inception, none), one channel at a time: ${normalisation:imagenet,mean,0}
    # (scalars, so that configs holding them resolve in place)
    OmegaConf.register_new_resolver("normalisation", _normalisation, replace=True)


register()


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `train.py` would run with these command-line overrides (also from inside a running Hydra app,
    e.g. for a run that another run needs first), checked, with its run folder's hyper-parameter level set."""
    overrides = list(overrides)
    if GlobalHydra.instance().is_initialized():
        cfg = hydra_compose("train", overrides=overrides)
    else:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("train", overrides=overrides)
    cfg.paths.hparams = hparams(overrides, cfg)
    return cfg


def config_hash(cfg: DictConfig) -> str:
    """A short hash of everything that changes what a run computes."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IN_RESULT:
        *parents, leaf = key.split(".")
        node = data
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
