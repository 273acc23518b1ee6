"""User errors through the real entry point: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import pytest

from methods import list_methods
from tests.conftest import run_cli

CASES = {
    "unknown method": (["method=sft"], f"unknown method 'sft'; choose one of: {', '.join(list_methods())}"),
    "unknown dataset": (["dataset=mnist"],
                        "unknown dataset 'mnist'; choose one of: digits, digits_rotation, digits_source, "
                        "digits_target, fewshot/fgvc_aircraft"),
    "unknown backbone": (["backbone=vit_huge"], "unknown backbone 'vit_huge'; choose one of:"),
    "bad value": (["epochs=ten"], "'ten' of type 'str' could not be converted to Integer"),
    "misspelt key": (["epoch=3"], "Key 'epoch' not in"),
    "unknown protocol": (["protocol=test"], "unknown protocol 'test'; choose one of: final, tune"),
    "missing checkpoint": (["backbone.checkpoint=/nowhere/ViT-B_16.npz"],
                           "backbone checkpoint /nowhere/ViT-B_16.npz does not exist; fix backbone.checkpoint="),
    "bad optimizer value": (["optimizer.lr=fast"], "bad optimizer setting"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_and_exit_2(case, tmp_path):
    overrides, message = CASES[case]
    out = run_cli("train.py", "backbone=vit_test", "logger=none", f"paths.runs={tmp_path}", *overrides, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not list(tmp_path.rglob("metrics.json"))


def test_hub_weights_unreachable_says_which_override_fixes_it(tmp_path):
    out = run_cli("train.py", "backbone=vit_b16_in21k", "logger=none", f"paths.runs={tmp_path}", cwd=tmp_path,
                  env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "backbone.checkpoint=" in lines[0] and "vit_base_patch16_224.orig_in21k" in lines[0]
