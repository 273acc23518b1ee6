"""Plan a table without weights or data: trainable parameters and compute of a configured model.

    python scripts/count_params.py method=ssf backbone=vit_b16_in21k dataset=vtab/cifar

Takes any override `train.py` takes; builds the model on the meta device and prints one `name: value`
per line: trainable_without_head, trainable_with_head, total (exact integers) and gmacs_per_image
(the papers' GFLOPs: one multiply-add = one FLOP) of one blank image, merged where the method merges; then the
method's own figures (`method_report`: E2VPT's count before pruning, SPT's budget). A method that picks its
trainable set from the data is built with the plan its arguments fix in size (SCT's K channels per layer); SPT's
allocation needs the data (`allocated_from_data: true`: its budget is the planned count).
"""

from __future__ import annotations

import sys

import torch

from runners import compose
from runners.backbone import build_backbone
from runners.errors import guard
from runners.job import build_adaptation
from runners.report import count_params, gmacs_at_size


def main() -> None:
    cfg = compose(sys.argv[1:])
    adaptation = build_adaptation(cfg)
    method = adaptation.method
    with torch.device("meta"):
        model = build_backbone(cfg.backbone, int(cfg.dataset.num_classes), load_weights=False)
        plan = method.nominal_plan(model)
        model, _ = adaptation.build(model, plan)
    for name, value in count_params(model).as_dict().items():
        print(f"{name}: {value}")
    report = method.report(model)
    if adaptation.mergeable(model):
        model = adaptation.merge(model)
    try:
        print(f"gmacs_per_image: {gmacs_at_size(model, cfg.backbone.image_size, 'meta'):.4f}")
    except (NotImplementedError, RuntimeError):  # compute that depends on the image cannot run on the meta device
        print("gmacs_per_image: depends on the image (see the method's expected value below)")
    if method.allocates_from_data:
        print("allocated_from_data: true")
    for name, value in report.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    guard(main)
