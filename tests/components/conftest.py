"""Shared fixtures: the seed20 label layout, the preset x fusion matrix, small CPU models.

Test modules get these through fixtures (the suite runs with --import-mode=importlib, so
conftest is not importable as a module).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from ecgtune.components import (
    FUSIONS,
    MIN_LENGTH,
    NUM_LEADS,
    PRESETS,
    ModelConfig,
    MultiBranchModel,
    build_model,
    get_preset,
)

# seed20's four groups (5, 5, 6, 4 labels), as the label map passes them in
SEED20_GROUPS = [list(range(0, 5)), list(range(5, 10)), list(range(10, 16)), list(range(16, 20))]
# a non-contiguous partition, to check that outputs land on their label indices
SHUFFLED_GROUPS = [[3, 17, 0, 9, 12], [1, 4, 19, 7], [2, 5, 8, 11, 14, 15], [6, 10, 13, 16, 18]]
# two branches keep export (symbolic tracing, ~2 s per branch) affordable
TWO_GROUPS = [[3, 17, 0, 9, 12, 1, 4, 19, 7, 2], [5, 8, 11, 14, 15, 6, 10, 13, 16, 18]]

SMALL_PRESETS = ["tiny", "tiny-multi", "small", "ssm-tiny"]
BIG_PRESETS = ["seed", "seed-multi", "ssm-small"]
assert set(SMALL_PRESETS) | set(BIG_PRESETS) == set(PRESETS), "a preset is left out of the tests"
# Not a preset: tiny-multi whose first group's branch is a state-space trunk (per-branch
# `kind`), reading 6 limb leads at 100 Hz: the mixed model every contract covers too.
MIXED = "tiny-mixed"
GROUP_NAMES = ["g0", "g1", "g2", "g3"]
_MIXED_FLAT = {"branches.g0.kind": "ssm", "branches.g0.ssm_state": 8,
               "branches.g0.ssm_layers": 2, "input.fs": 100, "input.leads": "limb6"}

# (preset, fusion, own stems): every small preset x every fusion, plus per-branch stems
MATRIX = [(p, f, False) for p in [*SMALL_PRESETS, MIXED] for f in FUSIONS] + [
    ("tiny-multi", f, True) for f in FUSIONS
]
# Export is the slow part (a symbolic length costs ~2 s per tiny branch, ~10 s for the
# seed): the seed (test_presets), tiny and tiny-multi as shipped export with a symbolic
# length; small and every other fusion export at a fixed length (fusion heads never see
# the length). (preset, fusion, own stems, dynamic length)
# The state-space trunk's FFT length follows the input length, so it exports at a fixed
# length (the ONNX graph's members all do).
EXPORT_CASES = [
    ("tiny", "independent", False, True),
    ("tiny-multi", "attention", False, True),
    ("small", "independent", False, False),
    ("ssm-tiny", "independent", False, False),
    (MIXED, "attention", False, False),
] + [("tiny-multi", f, f == "late", False) for f in FUSIONS if f != "attention"]
assert {(p, PRESETS[p].fusion) for p in SMALL_PRESETS} <= {c[:2] for c in EXPORT_CASES}
assert set(FUSIONS) <= {c[1] for c in EXPORT_CASES}


def _case_id(case: tuple) -> str:
    preset, fusion, own, *dynamic = case
    fixed = dynamic and not dynamic[0]
    return f"{preset}-{fusion}" + ("-own-stems" if own else "") + ("-fixed-length" if fixed else "")


def make_model(
    preset: str,
    fusion: str | None = None,
    own_stems: bool = False,
    groups: list[list[int]] | None = SHUFFLED_GROUPS,
    seed: int = 0,
) -> MultiBranchModel:
    mixed = preset == MIXED
    config = get_preset("tiny-multi" if mixed else preset)
    if mixed:
        config = ModelConfig.from_flat(_MIXED_FLAT, base=config)
    if fusion is not None:
        config = ModelConfig.from_flat({"fusion": fusion}, base=config)
    if own_stems:
        config = ModelConfig.from_flat({"stem.shared": False}, base=config)
    torch.manual_seed(seed)
    names = GROUP_NAMES[: len(groups)] if mixed and groups is not None else []
    return build_model(config, num_labels=20, label_groups=groups, group_names=names)


@pytest.fixture
def model_factory() -> Callable[..., MultiBranchModel]:
    return make_model


def export_program(
    model: nn.Module, example_length: int = 1024, dynamic_length: bool = True
) -> torch.export.ExportedProgram:
    """`torch.export` with a symbolic batch and, optionally, length: what an exporter built on
    it (ONNX's dynamo path) needs of every preset and fusion."""
    model.eval()
    example = torch.randn(2, NUM_LEADS, example_length)  # batch 2: 1 would specialise it
    dims = {0: torch.export.Dim("batch", min=1)}
    if dynamic_length:
        dims[2] = torch.export.Dim("length", min=MIN_LENGTH)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=(dims,))


@pytest.fixture
def export() -> Callable[..., torch.export.ExportedProgram]:
    return export_program


@pytest.fixture
def seed20_groups() -> list[list[int]]:
    return [list(g) for g in SEED20_GROUPS]


@pytest.fixture
def two_groups() -> list[list[int]]:
    return [list(g) for g in TWO_GROUPS]


@pytest.fixture
def shuffled_groups() -> list[list[int]]:
    return [list(g) for g in SHUFFLED_GROUPS]


@pytest.fixture(params=MATRIX, ids=_case_id)
def matrix_case(request: pytest.FixtureRequest) -> tuple[str, str, bool]:
    return request.param


@pytest.fixture(params=EXPORT_CASES, ids=_case_id)
def export_case(request: pytest.FixtureRequest) -> tuple[str, str, bool, bool]:
    return request.param


@pytest.fixture(params=SMALL_PRESETS)
def small_preset(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # As the whole session (tests/conftest.py): on a shared 2-core machine two intra-op
    # threads spin-wait against the other suites; one ran these tests 10-50x faster here.
    torch.set_num_threads(1)
