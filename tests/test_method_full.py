"""Full fine-tuning: every backbone tensor trains; nothing is inserted."""

from tests.method_table import MLP, TOKENS, Case, D, L

BLOCK_LINEAR = (D * 3 * D + 3 * D) + (D * D + D) + (D * MLP + MLP) + (MLP * D + D)  # qkv, proj, fc1, fc2
BLOCK_NORMS = 2 * 2 * D
PATCH = 3 * 8 * 8 * D + D
BACKBONE = L * (BLOCK_LINEAR + BLOCK_NORMS) + PATCH + D + TOKENS * D + 2 * D  # + cls, pos_embed, final norm

CASES = [
    Case(("method=full",), vit_b16=85_798_656, tiny=BACKBONE, merges=True, identity_at_init=True, disables=False,
         backbones={"swin": "", "convnext": ""}),
]
