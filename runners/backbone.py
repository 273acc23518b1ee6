"""timm backbones from the hub or a local checkpoint file, with a new task head."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from huggingface_hub import HfApi, try_to_load_from_cache
from huggingface_hub import constants as hub_constants
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runners.errors import UserError, first_line

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".bin", ".tar")
HUB_PROBE_TIMEOUT = 5  # seconds for the one request that tells whether the hub answers at all
HUB_LOGGERS = ("huggingface_hub", "httpx", "httpx2", "urllib3")  # their retry warnings and request lines


def weights_tag(backbone: DictConfig) -> str:
    """What the backbone's weights are, for the results: a local file, a hub tag, or random init."""
    if backbone.checkpoint:
        return f"file:{Path(backbone.checkpoint).expanduser().resolve()}"
    return f"timm:{backbone.model_name}" if backbone.pretrained else "random-init"


def build_backbone(backbone: DictConfig, num_classes: int, drop_path: float = 0.0,
                   load_weights: bool = True) -> nn.Module:
    """Create `backbone.model_name` with a `num_classes` head (timm's init) and load its weights.

    Weights come from `backbone.checkpoint` when set (Google's `.npz` through timm's own loader, or a
    state dict in `.safetensors`/`.pth`; a pretrained head of another size is dropped), else from the
    hub when `backbone.pretrained`. `load_weights=False` builds the architecture only (e.g. on the meta
    device, to count parameters and FLOPs without weights).
    """
    name = backbone.model_name
    if not timm.is_model(name):
        raise UserError(f"timm has no model '{name}'; set backbone.model_name to a name from timm.list_models()")
    kwargs = OmegaConf.to_container(backbone.kwargs, resolve=True) if backbone.kwargs else {}
    kwargs.update(num_classes=num_classes, drop_path_rate=drop_path)

    checkpoint = Path(backbone.checkpoint).expanduser() if backbone.checkpoint else None
    if load_weights and checkpoint is None and backbone.get("requires_checkpoint"):
        raise UserError(f"backbone {backbone.name} has no hub weights; pass backbone.checkpoint=/path/to/weights "
                        f"(see conf/backbone/{backbone.name}.yaml)")
    if not load_weights or (checkpoint is None and not backbone.pretrained):
        return timm.create_model(name, pretrained=False, **kwargs)

    if checkpoint is not None:
        if not checkpoint.is_file():
            raise UserError(f"backbone checkpoint {checkpoint} does not exist; fix backbone.checkpoint=/path/to/"
                            f"weights ({', '.join(CHECKPOINT_SUFFIXES)}) or drop it to load from the hub")
        if checkpoint.suffix == ".npz":  # Google's JAX layout: timm's own converter, head kept only if it fits
            overlay = {"file": str(checkpoint), "custom_load": True}
            try:
                return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
            except Exception as e:  # any failure to read or map the file is the user's to fix
                raise UserError(f"could not load backbone.checkpoint={checkpoint} into {name}: {_first_line(e)}") from e
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_state_dict_file(model, checkpoint, backbone.get("checkpoint_prefix"))
        return model
    return _load_from_hub(name, kwargs)


def _load_from_hub(name: str, kwargs: dict) -> nn.Module:
    """timm's pretrained `name`: from the local Hugging Face cache if there, else downloaded if the hub answers.

    huggingface_hub alone retries an unreachable hub for ~50 s of warnings before failing; here a missing
    cache fails at once under HF_HUB_OFFLINE, else after one short probe, and the hub's loggers stay quiet.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:  # what timm fetches: its file override, else the safetensors
        repo, _, revision = cfg.hf_hub_id.partition("@")
        filename = cfg.hf_hub_filename or hub_constants.SAFETENSORS_SINGLE_FILE
        if not isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
            if hub_constants.HF_HUB_OFFLINE:
                raise _hub_error(name, "HF_HUB_OFFLINE is set and they are not in the local cache")
            with _quiet(HUB_LOGGERS):
                try:
                    HfApi().model_info(repo, revision=revision or None, timeout=HUB_PROBE_TIMEOUT)
                except Exception as e:  # unreachable, timed out, or the repo is gone
                    raise _hub_error(name, _first_line(e)) from e
    with _quiet(HUB_LOGGERS):
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # the hub went away mid-download, or the cache is incomplete
            raise _hub_error(name, _first_line(e)) from e


def _hub_error(name: str, why: str) -> UserError:
    return UserError(f"could not load the pretrained weights of {name} from the Hugging Face hub ({why}); "
                     f"run once with network access or pass backbone.checkpoint=/path/to/weights"
                     f"{' (e.g. ViT-B_16.npz)' if 'vit_base_patch16' in name else ''}")


@contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Only errors from these loggers while inside."""
    levels = {lg: lg.level for lg in map(logging.getLogger, names)}
    for lg in levels:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in levels.items():
            lg.setLevel(level)


def load_state_dict_file(model: nn.Module, path: Path, prefix: str | None = None) -> None:
    """Load a `.safetensors`/`.pth` state dict into `model`, checking that every backbone weight arrives.

    timm unwraps `state_dict`/`model` entries and DDP prefixes; `prefix` then selects and strips one
    sub-model (MoCo v3's `base_encoder.`); the architecture's own filter converts other layouts; a head
    of another size is dropped. Missing backbone weights are an error, never a silent random init.
    """
    try:
        state = timm.models.load_state_dict(str(path), use_ema=False)
    except Exception as e:
        raise UserError(f"could not read backbone.checkpoint={path}: {_first_line(e)}") from e
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        state = convert(state, model)
    own, classifier = model.state_dict(), model.get_classifier()
    head = {f"{n}.{p}" for n, m in model.named_modules() if m is classifier for p, _ in m.named_parameters()}
    state = {k: v for k, v in state.items() if not (k in head and v.shape != own[k].shape)}
    missing = [k for k in own if k not in state and k not in head]
    if missing:
        roots = Counter(k.split(".", 1)[0] for k in state if k not in own)
        root = roots.most_common(1)[0][0] if roots else None
        hint = f"; its keys start with '{root}.' — set backbone.checkpoint_prefix={root}." if root else ""
        raise UserError(f"backbone.checkpoint={path} lacks {len(missing)} of {len(own)} weights of "
                        f"{type(model).__name__} (first: {missing[0]}){hint}")
    try:
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    except RuntimeError as e:
        raise UserError(f"backbone.checkpoint={path} does not fit {type(model).__name__}: {_first_line(e)}") from e
    if unexpected:
        log.info("ignored %d tensors of %s not in the model (e.g. %s)", len(unexpected), path, unexpected[0])


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but no CUDA device is available; use device=cpu or device=auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
