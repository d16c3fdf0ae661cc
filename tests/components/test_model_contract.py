"""Contract tests over every small preset x every registered fusion."""

from __future__ import annotations

import torch

from ecgtune.components import (
    ModelConfig,
    build_model,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)

LENGTHS = (1024, 1537)  # a power of two and an odd length that exercises the crops


def _inputs(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 12, length, generator=torch.Generator().manual_seed(seed))


def _same_model_twice(model: torch.nn.Module, config: ModelConfig, groups) -> torch.nn.Module:
    rebuilt = build_model(config, 20, groups, model.group_names)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    return rebuilt.eval()


def test_shape_and_finite(matrix_case, model_factory):
    model = model_factory(*matrix_case).eval()
    with torch.no_grad():
        for length in LENGTHS:
            for batch in (1, 3):
                out = model(_inputs(batch, length))
                assert out.shape == (batch, 20)
                assert out.dtype == torch.float32
                assert torch.isfinite(out).all()


def test_backward_reaches_every_parameter(matrix_case, model_factory):
    model = model_factory(*matrix_case).train()
    model(_inputs(2, 1024)).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"


def test_eval_is_deterministic(matrix_case, model_factory):
    model = model_factory(*matrix_case).eval()
    x = _inputs(2, 1300)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    twin = model_factory(*matrix_case).eval()  # same seed -> same initial weights
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))


def test_config_round_trips_rebuild_identical_model(matrix_case, model_factory, shuffled_groups):
    model = model_factory(*matrix_case).eval()
    config = model.config
    from_json = ModelConfig.from_json(config.to_json())
    from_flat = ModelConfig.from_flat(config.to_flat())
    # MLflow logs every param as str(value): "[6, 5]", "True", "0.5"
    from_strings = ModelConfig.from_flat({k: str(v) for k, v in config.to_flat().items()})
    assert from_json == from_flat == from_strings == config
    x = _inputs(2, 1024)
    with torch.no_grad():
        expected = model(x)
        for cfg in (from_json, from_strings):
            assert torch.equal(_same_model_twice(model, cfg, shuffled_groups)(x), expected)


def test_checkpoint_round_trip(matrix_case, model_factory, shuffled_groups, tmp_path):
    model = model_factory(*matrix_case)
    model.train()
    model(_inputs(4, 1024))  # move BN running stats off their initial values
    model.eval()
    path = tmp_path / "model.pt"
    save_checkpoint(
        path, model, model.config, num_labels=20, label_groups=shuffled_groups, extra={"epoch": 3}
    )
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["label_groups"] == shuffled_groups
    loaded, meta = load_checkpoint(path)
    assert meta.config == model.config and meta.num_labels == 20
    assert meta.label_groups == shuffled_groups and meta.extra == {"epoch": 3}
    assert not loaded.training
    x = _inputs(2, 1100)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_exported_program_matches_eager(export_case, model_factory, two_groups, export,
                                        tmp_path):
    preset, fusion, own_stems, dynamic_length = export_case
    model = model_factory(preset, fusion, own_stems, groups=two_groups).eval()
    program = export(model, example_length=1024, dynamic_length=dynamic_length)
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)  # pickle-free archive
    exported = torch.export.load(path).module()
    shapes = ((1, 1024), (3, 1537), (2, 2048)) if dynamic_length else ((1, 1024), (3, 1024))
    with torch.no_grad():
        for batch, length in shapes:
            x = _inputs(batch, length)
            torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=1e-5)


def test_bf16_autocast_close_to_fp32(small_preset, model_factory):
    model = model_factory(small_preset).eval()
    x = _inputs(2, 1024)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all()
    # bf16 keeps ~3 significant digits; the logits should agree to a few percent of their scale
    assert (low.float() - ref).abs().max() <= 0.1 * ref.abs().max() + 0.05


def test_outputs_land_on_group_labels(model_factory, shuffled_groups):
    """independent: perturbing one branch's head moves exactly that group's labels."""
    model = model_factory("tiny-multi", "independent").eval()
    x = _inputs(2, 1024)
    with torch.no_grad():
        before = model(x)
        model.fusion.heads[2].bias += 1.0
        changed = (model(x) - before).abs().amax(dim=0) > 0
    assert changed.nonzero().flatten().tolist() == sorted(shuffled_groups[2])


def test_one_branch_per_group_by_default(model_factory, seed20_groups):
    model = model_factory("tiny-multi", groups=seed20_groups)
    assert len(model.branches) == 4
    assert len(model_factory("tiny-multi", groups=None).branches) == 1
    assert count_parameters(model) > count_parameters(model_factory("tiny"))
