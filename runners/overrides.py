"""Command-line overrides: checked before anything runs, and turned into the run folder's hyper-parameter level.

A run folder is `<runs>/<benchmark>/<task>/<run_name>/<backbone>/[<hparams>/]<leaf>`. The path pieces name what
the run is (task, method label, backbone, protocol and seed); `<hparams>` names how it deviates from its recipe:
every override that changes the result and is not already a path piece, as a readable short form and a hash of the
canonical values (like Hydra's `override_dirname` with excludes), e.g. `epochs@50+optimizer.lr@0.01-3f09a1c2`. So a
multirun over any key runs every point, and rerunning it finds exactly the finished points. Without such overrides
the level is left out. The name uses only characters that Hydra's override grammar takes unquoted, so a run folder
can be passed as a value (`init.source.run_dir=runs/…`) as it is.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import Container, DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Keys that do not change what a run computes: left out of the config hash and of the run folder's name.
NOT_IN_RESULT = ("force", "paths", "logger", "device", "compile", "data.cache_dir", "data.decode_workers",
                 "data.augment_workers", "eval_batch_size", "eval_every", "flops_images", "hydra")
# Keys and groups the run folder's path already names (a group counts as a path piece by its choice only).
PATH_PIECES = ("dataset", "backbone", "method", "memory", "quant", "init", "sweep", "seed", "protocol", "run_name",
               "dataset.shots", "dataset.fewshot_seed", "dataset.like")
_SHORT = 64  # characters of the readable part before the hash
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


class ConfigError(Exception):
    """An override or value the run cannot start with; the message is the one line shown to the user."""


def group_options(group: str) -> list[str]:
    """Every option of a config group, nested ones as `vtab/cifar`; `_`-prefixed bases left out."""
    folder = CONF_DIR / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml")
                  if not any(part.startswith("_") for part in p.relative_to(folder).parts))


def is_group(key: str) -> bool:
    return "/" in key or (CONF_DIR / key).is_dir()


def parse(overrides: Iterable[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides([o for o in overrides if o])


def _choices(override: Override) -> list[str]:
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    value = override.value()
    return [] if value is None else [str(value)]


def check(overrides: Sequence[str], keys: Callable[[], Iterable[str]] = tuple) -> None:
    """Refuse what Hydra would accept and the run would silently misuse: a private base chosen as a group option
    (`dataset=vtab/_vtab`) and a key added with `+` that the config does not have (`+epoch=5`: Hydra adds it and
    nothing reads it). `keys()` lists the config's keys, for a suggestion."""
    for o in parse(overrides):
        key = o.key_or_group
        if is_group(key) and not key.startswith("hydra"):
            for choice in _choices(o):
                if any(part.startswith("_") for part in choice.split("/")):
                    raise ConfigError(f"unknown {key} '{choice}' (a shared base, not an option); choose one of: "
                                      f"{', '.join(group_options(key))}")
        elif o.type in (OverrideType.ADD, OverrideType.FORCE_ADD) and not key.startswith("hydra"):
            raise ConfigError(f"{o.input_line}: '{key}' is not a key of this config{suggest(key, keys())}; "
                              f"'python train.py --cfg job' lists them")


def suggest(key: str, keys: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, [k for k in keys if k != key], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def all_keys(cfg: Container, prefix: str = "") -> list[str]:
    """Every dotted key of `cfg` (interpolations left unresolved)."""
    out = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            out.append(full)
            node = cfg._get_node(k)
            if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
                out += all_keys(node, f"{full}.")
    return out


def _covers(prefixes: Sequence[str], key: str) -> bool:
    return any(key == p or key.startswith(f"{p}.") or key.startswith(f"{p}/") for p in prefixes)


def _canonical(value: object) -> object:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def _text(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def counted(overrides: Sequence[str], cfg: DictConfig, label_of=None) -> dict[str, object]:
    """The overrides that change the result and are not path pieces, key → canonical value (sorted by key).

    A group counts by its choice (`optimizer=sgd`; a recipe as `experiment=…`); a key by its value in the composed
    config (so `1e-2` and `0.01` are the same point); a deletion as None under `~key`. `label_of(method_node)`, when
    given, leaves out a `method.*` key that the method's label already shows (`method.mode=deep` → `vpt_deep`).
    """
    out: dict[str, object] = {}
    for o in parse(overrides):
        key = o.key_or_group
        if _covers(NOT_IN_RESULT, key) or key in PATH_PIECES:
            continue
        if o.type == OverrideType.DEL:
            out[f"~{key}"] = None
        elif is_group(key):
            out[key] = str(o.value())
        else:
            if key.startswith("method.") and label_of is not None and _in_label(cfg, key, label_of):
                continue
            out[key] = _canonical(OmegaConf.select(cfg, key, throw_on_missing=False))
    return dict(sorted(out.items()))


def _in_label(cfg: DictConfig, key: str, label_of) -> bool:
    method = OmegaConf.to_container(cfg.method, resolve=True)
    without = dict(method)
    without.pop(key.split(".", 1)[1], None)
    try:
        return label_of(method) != label_of(without)
    except Exception:  # the method cannot be built without this key (a required argument): it is not a label's
        return False


def folder_name(values: dict[str, object]) -> str:
    """`key@value+…-<hash8>` (a recipe by its bare name; the readable part shortened, the hash over every canonical
    value); '' for none."""
    if not values:
        return ""
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = [_text(v) if k == "experiment" else (f"{k[1:]}@deleted" if k.startswith("~") else f"{k}@{_text(v)}")
             for k, v in values.items()]
    short = _UNSAFE.sub("_", "+".join(parts))
    if len(short) > _SHORT:
        short = short[:_SHORT - 1] + "_"
    return f"{short}-{digest}"


def run_subdir(*pieces: object) -> str:
    """The pieces joined as a relative path, each piece checked so that the folder stays inside `paths.runs`;
    empty pieces (no hyper-parameter level) are left out."""
    parts = []
    for piece in pieces:
        text = str(piece)
        if text == "":
            continue
        for part in text.split("/"):
            if part in ("", ".", "..") or "\\" in part or "\0" in part:
                raise ConfigError(f"run folder piece {text!r} would leave paths.runs or is empty; use a plain name "
                                  f"(letters, digits, - _ .), e.g. run_name=my_variant")
            parts.append(part)
    return "/".join(parts)
