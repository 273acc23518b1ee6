"""Shell completion of nested group options: `dataset=vtab/c<Tab>` → vtab/caltech101, vtab/cifar, …

Hydra's bash completion lists only the options at a group's own level (`dataset=digits`, …), not those in its
sub-folders (`vtab/cifar`, `fgvc/cub`), which are most of the datasets; and it offers the shared `_` bases. Hydra
refuses a second completion plugin for bash, so `train.py -sc query=bash` runs with this query in place of its own:
Hydra's answer for everything else, a group's options from `group_options` for `group=…`.
"""

from __future__ import annotations

from hydra.plugins.completion_plugin import CompletionPlugin

from runners.overrides import group_options, is_group

_hydra_query = CompletionPlugin._query_config_groups


def _query_config_groups(self, word: str, config_name: str | None, words: list[str]) -> tuple[list[str], bool]:
    matched, exact = _hydra_query(self, word, config_name, words)
    sign = word[:1] if word[:1] in "+~" else ""
    group, eq, prefix = word[len(sign):].partition("=")
    if not eq or not is_group(group) or group.startswith("hydra"):
        return matched, exact
    options = [f"{sign}{group}={o}" for o in group_options(group) if o.startswith(prefix)]
    return options, exact or bool(options)


def install() -> None:
    CompletionPlugin._query_config_groups = _query_config_groups
