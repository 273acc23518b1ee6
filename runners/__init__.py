"""Run orchestration: `run(cfg)` trains, evaluates and reports one configuration.

`run` is imported on first use, so that `train.py --help` and shell completion (which import this package for the
config schema and resolvers) answer without importing torch.
"""

from runners.config import compose

__all__ = ["compose", "run"]


def __getattr__(name: str):
    if name == "run":
        from runners.job import run

        return run
    raise AttributeError(f"module 'runners' has no attribute {name!r}")
