"""Where a technique's initial weights come from: a finished run's task checkpoint, read only when needed."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open

from runners.errors import UserError

TRAINABLE = "trainable.safetensors"


def read_task_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of `<run_dir>/trainable.safetensors` and its metadata (method, label, config hash, plan)."""
    path = Path(run_dir).expanduser() / TRAINABLE
    if not path.is_file():
        raise UserError(f"{path.parent} is not a finished run (no {TRAINABLE}); pass a run folder that has "
                        f"metrics.json")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # a damaged file: name it
        raise UserError(f"{path} cannot be read ({type(e).__name__}); rerun that run with force=true") from e


class FinishedRun:
    """The task checkpoint of the run in `run_dir` (`init=run init.source.run_dir=...`; E2VPT's search run)."""

    def __init__(self, run_dir: str | None):
        self.run_dir = Path(run_dir).expanduser() if run_dir else None

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        if self.run_dir is None:
            raise UserError("no source run is set; pass its folder (…run_dir=runs/<benchmark>/<task>/…/seed42)")
        tensors, meta = read_task_checkpoint(self.run_dir)
        return tensors, {**meta, "where": str(self.run_dir)}

    def plan(self) -> tuple[dict | None, dict[str, str]]:
        """The source run's plan and its metadata (method, label, config hash, where)."""
        _, meta = self.load()
        return plan_of(meta), meta


class UpstreamRun:
    """PVP's stage U: this run's method (and memory/quant techniques) trained on an upstream task with the same
    backbone; its task checkpoint, after the run (done once, then reused as any finished run).

    Args:
        dataset: the upstream task, a `dataset=` option (the paper: ImageNet-1k; here any dataset the runner reads).
        epochs: stage U's epochs.
        overrides: anything else stage U changes (`optimizer.lr=…`).
        method, backbone, memory, quant, seed, runs: this run's, by interpolation (conf/init/pvp.yaml).
    """

    def __init__(self, dataset: str, epochs: int, overrides: list[str], method, backbone, memory, quant, seed: int,
                 runs: str):
        self.dataset, self.epochs, self.overrides = dataset, epochs, list(overrides or [])
        self.nodes = {"method": method, "backbone": backbone, "memory": memory, "quant": quant}
        self.seed, self.runs = seed, runs

    def config(self) -> DictConfig:
        from runners.config import compose

        cfg = compose([f"dataset={self.dataset}", f"epochs={self.epochs}", "init=none", "logger=none",
                       f"seed={self.seed}", f"paths.runs={self.runs}", *self.overrides])
        for key, node in self.nodes.items():
            OmegaConf.update(cfg, key, OmegaConf.to_container(node, resolve=True) if node else {}, merge=False)
        OmegaConf.update(cfg, "run_name", f"{cfg.run_name}-upstream")  # never the folder of a plain run of that task
        return cfg

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        from runners.job import run

        cfg = self.config()
        metrics = run(cfg)
        if not metrics:
            raise UserError(f"PVP's upstream run {cfg.paths.run_dir} is being run by another process; rerun later")
        return FinishedRun(cfg.paths.run_dir).load()


def plan_of(meta: dict[str, str]) -> dict | None:
    """The plan stored in a task checkpoint's metadata."""
    return json.loads(meta["plan"]) if meta.get("plan") else None
