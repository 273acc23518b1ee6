"""The config tree: its schema (types of the top-level keys), resolvers and `compose` for tools and tests.

The values live in `conf/`; this file holds types only, so Hydra rejects a bad override such as
`epochs=ten` when composing, before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf

from data.fewshot import fewshot_set
from data.fgvc import fgvc_set
from data.task import normalisation
from data.vtab import vtab_task
from methods import create_method

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"

# Keys that do not change what a run computes: a rerun that differs only in these is the same run.
_NOT_IN_HASH = ("force", "paths", "logger", "device", "data.cache_dir", "data.decode_workers", "data.augment_workers")


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


def _method_label(method: DictConfig, *techniques: DictConfig | None) -> str:
    """The label of the configured method and techniques (vpt_deep, lora_qv, adaptformer+1bit, …): a run
    directory's method level. Techniques are not built here (one may read another run); their yaml has `label`."""
    labels = [create_method(**OmegaConf.to_container(method, resolve=True)).label]
    return "+".join(labels + [t.label for t in techniques if t])


def register() -> None:
    ConfigStore.instance().store(name="schema", node=RunSchema)
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("run_leaf", _run_leaf, replace=True)
    OmegaConf.register_new_resolver("method_label", _method_label, replace=True)
    # benchmark facts (group, class count) live once, in data/: ${vtab:cifar,num_classes}
    OmegaConf.register_new_resolver("vtab", lambda name, key: getattr(vtab_task(name), key), replace=True)
    OmegaConf.register_new_resolver("fgvc", lambda name, key: getattr(fgvc_set(name), key), replace=True)
    OmegaConf.register_new_resolver("fewshot", lambda name, key: getattr(fewshot_set(name), key), replace=True)
    # named input normalisations (imagenet, inception, none), one channel at a time: ${normalisation:imagenet,mean,0}
    # (scalars, so that configs holding them resolve in place)
    OmegaConf.register_new_resolver("normalisation", lambda name, key, c: getattr(normalisation(name), key)[int(c)],
                                    replace=True)


register()


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `train.py` would run with these command-line overrides (also from inside a running Hydra app,
    e.g. for a run that another run needs first)."""
    if GlobalHydra.instance().is_initialized():
        return hydra_compose("train", overrides=list(overrides))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def config_hash(cfg: DictConfig) -> str:
    """A short hash of everything that changes what a run computes."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_IN_HASH:
        *parents, leaf = key.split(".")
        node = data
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
