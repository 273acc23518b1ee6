"""Every paper recipe composes for every task of its benchmark; a value the paper did not publish is said."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationToMissingValueError

from data.fgvc import FGVC_SETS
from data.vtab import VTAB_TASKS
from runners import compose
from runners.config import CONF_DIR
from runners.errors import _one_line

EXTRA = {"spt_vtab": ["method.budget=0.4"]}  # SPT's per-task budgets are not published (a test below)
RECIPES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if not p.name.startswith("_"))
TASKS = {"vtab": [f"vtab/{t.name}" for t in VTAB_TASKS], "fgvc": [f"fgvc/{s.name}" for s in FGVC_SETS]}
OPEN = {"vpt_vtab": {"dmlab", "eurosat", "sun397"}, "e2vpt_vtab": set()}  # the only tasks with published lr/wd


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_resolves_for_every_task_or_names_the_open_value(recipe):
    benchmark = recipe.rsplit("_", 1)[1]
    for dataset in TASKS[benchmark]:
        cfg = compose([f"experiment={recipe}", f"dataset={dataset}", *EXTRA.get(recipe, [])])
        task = dataset.split("/")[1]
        if recipe in OPEN and task not in OPEN[recipe]:
            with pytest.raises(InterpolationToMissingValueError) as e:
                OmegaConf.to_container(cfg, resolve=True)
            assert _one_line(e.value).startswith(f"optimizer.lr comes from recipe.{task}.lr")
            continue
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert resolved["optimizer"]["lr"] > 0, (recipe, dataset)


def test_ssf_vtab_is_the_papers_per_task_recipe():
    cfg = compose(["experiment=ssf_vtab", "dataset=vtab/clevr_dist"])
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.drop_path) == (5e-2, 5e-2, 0.1)
    assert cfg.backbone.model_name == "vit_base_patch16_224.augreg_in21k"
    assert cfg.pipeline.name == "vtab_ssf" and list(cfg.pipeline.mean) == [0.5] * 3
    assert cfg.pipeline.train.kind == "none"
    assert (cfg.epochs, cfg.scheduler.cooldown_epochs, cfg.batch_size) == (110, 10, 64)


@pytest.mark.parametrize("overrides, expected", [
    (["sweep=vtab"], [f"vtab/{t.name}" for t in VTAB_TASKS]),
    (["sweep=fgvc"], [f"fgvc/{s.name}" for s in FGVC_SETS]),
    (["experiment=ssf_vtab"], [f"vtab/{t.name}" for t in VTAB_TASKS]),
])
def test_sweeps_list_every_task_in_the_papers_order(overrides, expected):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.sweeper.params.dataset.split(",") == expected


def test_baseline_recipes_share_r_noah():
    for recipe, label in (("lora_vtab", "lora"), ("adapter_vtab", "adapter"), ("adaptformer_vtab", "adaptformer")):
        cfg = compose([f"experiment={recipe}", "dataset=vtab/dtd"])
        assert cfg.run_name == label and cfg.drop_path == 0.1 and cfg.optimizer.lr == 1e-3
        assert cfg.pipeline.name == "vtab_noah" and list(cfg.pipeline.mean) == [0.485, 0.456, 0.406]
    assert compose(["experiment=adaptformer_vtab"]).method.bottleneck == 8
    assert compose(["experiment=vpt_vtab", "dataset=vtab/sun397"]).method.prompt_length == 5


def test_recipe_values_the_papers_did_not_publish_stop_with_one_line():
    from methods import MethodError
    from runners.job import build_adaptation

    with pytest.raises(MethodError, match="method.budget is not set"):
        build_adaptation(compose(["experiment=spt_vtab", "dataset=vtab/dtd"]))
    cfg = compose(["experiment=sct_vtab", "dataset=vtab/clevr_dist"])
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.label_smoothing) == (0.0018, 0.005, 0.0)
    assert cfg.weight_decay_1d and cfg.drop_path == 0.1 and cfg.pipeline.normalisation == "imagenet"
    assert (cfg.pipeline.name, cfg.pipeline.train.kind) == ("vtab_noah_randaugment", "flip_randaugment")
    cfg = compose(["experiment=e2vpt_vtab", "dataset=vtab/caltech101"])
    assert (cfg.method.prompt_tokens, cfg.method.kv_tokens) == (32, 5)
