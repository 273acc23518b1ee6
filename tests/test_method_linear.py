"""Linear probing: only the new head trains."""

from tests.method_table import Case

CASES = [
    Case(("method=linear",), vit_b16=0, tiny=0, merges=True, identity_at_init=True,
         backbones={"swin": "", "convnext": ""}),
]
