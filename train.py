"""Train and evaluate one PEFT run: python train.py method=ssf dataset=vtab/cifar [key=value ...]."""

import sys

import hydra
from omegaconf import DictConfig

from runners import completion, sweep
from runners.errors import guard, user_errors
from runners.sweep import RunResult, run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from runners.job import run  # here, so that --help and shell completion do not import torch

    def job() -> RunResult:
        outcome = run(cfg)
        return RunResult(outcome.get("top1", float("nan")), outcome.status)

    with user_errors():  # raised inside the job, so that Hydra adds no report of its own
        return run_job(job)


if __name__ == "__main__":
    if "-sc" in sys.argv or "--shell-completion" in sys.argv:
        completion.install()
    guard(main)
    sys.exit(1 if sweep.failed_runs else 0)
