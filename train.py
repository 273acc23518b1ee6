"""Train and evaluate one PEFT run: python train.py method=ssf dataset=vtab/cifar [key=value ...]."""

import hydra
from omegaconf import DictConfig

from runners import run
from runners.errors import guard, user_errors
from runners.sweep import RunResult


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    with user_errors():  # raised inside the job, so that Hydra adds no report of its own
        outcome = run(cfg)
        return RunResult(outcome.get("top1", float("nan")), outcome.status)


if __name__ == "__main__":
    guard(main)
