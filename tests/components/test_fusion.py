"""Fusion registry and the behaviour of each strategy."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ecgtune.components import (
    FUSION_NAMES,
    FUSIONS,
    Fusion,
    ModelConfig,
    build_model,
    get_preset,
    register_fusion,
)


def test_registry_names():
    assert list(FUSIONS) == ["independent", "concat", "attention", "late"]
    # configs check fusion names against plain data (no torch): the same names, in order
    assert FUSION_NAMES == list(FUSIONS)
    assert all(issubclass(cls, Fusion) and FUSIONS[cls.name] is cls for cls in FUSIONS.values())


def test_a_new_strategy_plugs_in_by_registering(seed20_groups):
    @register_fusion("test-mean")
    class MeanFusion(Fusion):
        def __init__(self, embed_dims, num_labels, label_groups, config):
            super().__init__(embed_dims, num_labels, label_groups, config)
            self.head = torch.nn.Linear(embed_dims[0], num_labels)

        def forward(self, embeddings: list[Tensor]) -> Tensor:
            return self.head(torch.stack(embeddings).mean(0))

    try:
        assert FUSION_NAMES[-1] == "test-mean"  # configs may name it now
        config = ModelConfig.from_flat({"fusion": "test-mean"}, base=get_preset("tiny-multi"))
        assert ModelConfig.from_flat(config.to_flat()) == config
        model = build_model(config, 20, seed20_groups).eval()
        assert model(torch.randn(2, 12, 1024)).shape == (2, 20)
        with pytest.raises(ValueError, match="already registered"):
            register_fusion("test-mean")(MeanFusion)
    finally:
        del FUSIONS["test-mean"]
        FUSION_NAMES.remove("test-mean")


def test_registering_a_non_fusion_fails():
    with pytest.raises(TypeError, match="not a Fusion subclass"):
        register_fusion("bad")(torch.nn.Linear)  # type: ignore[arg-type]
    assert "bad" not in FUSIONS


def _fusion(name: str, n: int, groups, hidden: int = 8):
    config = ModelConfig(fusion=name, fusion_hidden=hidden, fusion_dropout=0.0)
    return FUSIONS[name]([6] * n, 20, groups, config).eval()


def test_attention_weights_are_a_distribution_over_branches(seed20_groups):
    fusion = _fusion("attention", 4, seed20_groups)
    embeddings = [torch.randn(3, 6) for _ in range(4)]
    _, weights = fusion.branch_weights(embeddings)
    assert weights.shape == (3, 20, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 20))
    assert fusion(embeddings).shape == (3, 20)


def test_late_fusion_starts_as_the_mean_of_branch_logits(seed20_groups):
    fusion = _fusion("late", 4, seed20_groups)
    embeddings = [torch.randn(3, 6) for _ in range(4)]
    mean = torch.stack([h(e) for h, e in zip(fusion.heads, embeddings, strict=True)]).mean(0)
    torch.testing.assert_close(fusion(embeddings), mean)


def test_concat_sees_every_branch(seed20_groups):
    fusion = _fusion("concat", 4, seed20_groups)
    assert fusion.mlp[0].in_features == 24 and fusion.mlp[-1].out_features == 20


def test_independent_scatters_groups_to_label_indices():
    groups = [[4, 0], [1, 3], [2]]
    fusion = FUSIONS["independent"]([2, 2, 2], 5, groups, ModelConfig())
    with torch.no_grad():
        for head, g in zip(fusion.heads, groups, strict=True):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(g, dtype=torch.float))
    out = fusion([torch.zeros(1, 2)] * 3)
    assert out.tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0]]
