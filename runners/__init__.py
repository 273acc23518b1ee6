"""Run orchestration: `run(cfg)` trains, evaluates and reports one configuration."""

from runners.config import compose
from runners.run import run

__all__ = ["compose", "run"]
