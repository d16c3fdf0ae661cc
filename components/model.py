"""The ResU-Dense trunk and the multi-branch model built from a `ModelConfig`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .blocks import (
    ConvBNAct,
    DenseBlock,
    GlobalMaxPool,
    ResUBlock,
    TemporalSelfAttention,
    Transition,
    from_channels_last,
    to_channels_last,
)
from .config import (
    LAYOUTS,
    NUM_LEADS,
    BranchConfig,
    ModelConfig,
    StemConfig,
    _check_int,  # the same messages as the config's own checks
    _fail,
    split_label_groups,
)
from .frontend import front_end
from .fusion import FUSIONS
from .ssm import StateSpaceTrunk

__all__ = [
    "TRUNKS",
    "MultiBranchModel",
    "ResUDenseTrunk",
    "Stem",
    "build_model",
    "build_trunk",
    "count_parameters",
    "set_layout",
    "validate",
]


class Stem(ConvBNAct):
    """Conv1d 12 -> channels (kernel, stride, padding kernel // 2, no bias) + BN + LeakyReLU."""

    def __init__(self, config: StemConfig, in_channels: int = NUM_LEADS) -> None:
        super().__init__(in_channels, config.channels, config.kernel, stride=config.stride)
        self.channels_last = False  # `set_layout`; not state: checkpoints are layout-free

    def forward(self, x: Tensor) -> Tensor:
        if not self.channels_last:
            return super().forward(x)
        # Out as a (B, C, L) view with channels-last strides: a ResU-Dense trunk takes it
        # back to 4-D without a copy, any other trunk reads it as an ordinary tensor.
        return from_channels_last(super().forward(to_channels_last(x)))


class ResUDenseTrunk(nn.Module):
    """(B, C_in, T) -> pooled embedding (B, out_channels).

    Residual U-blocks (each halving T), dense blocks joined by transitions, dropout,
    optional self-attention over time, global max pool.
    """

    def __init__(self, in_channels: int, config: BranchConfig) -> None:
        super().__init__()
        self.ublocks = nn.Sequential(
            *(
                ResUBlock(
                    in_channels if i == 0 else config.width,
                    config.width,
                    config.mid,
                    d,
                    config.kernel,
                )
                for i, d in enumerate(config.depths)
            )
        )
        channels = config.dense_channels()
        dense: list[nn.Module] = []
        for i, layers in enumerate(config.dense_layers):
            block = DenseBlock(channels[i], layers, config.growth, config.bottleneck)
            dense += [block, Transition(block.out_channels, channels[i + 1])]
        self.dense = nn.Sequential(*dense)
        self.dropout = nn.Dropout(config.dropout)
        self.attention = (
            TemporalSelfAttention(config.out_channels, config.heads) if config.attention else None
        )
        self.pool = GlobalMaxPool(time_dim=1 if config.attention else 2)
        self.out_channels = config.out_channels
        self.channels_last = False  # `set_layout`; not state: checkpoints are layout-free

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            # The convolutional part on (B, C, 1, T) channels-last tensors; what follows
            # reads an ordinary (B, C, T) tensor, so dropout draws the same mask in both
            # layouts (it draws in memory order) and the attention sees the same input.
            h = from_channels_last(self.dense(self.ublocks(to_channels_last(x)))).contiguous()
        else:
            h = self.dense(self.ublocks(x))
        h = self.dropout(h)
        if self.attention is not None:
            h = self.attention(h)  # (B, T, C)
        return self.pool(h)


# branch.kind -> trunk class; each maps (B, C_in, T) to a pooled (B, out_channels) embedding.
TRUNKS: dict[str, type[nn.Module]] = {"resu": ResUDenseTrunk, "ssm": StateSpaceTrunk}


def build_trunk(in_channels: int, config: BranchConfig) -> nn.Module:
    """The trunk `config.kind` names."""
    return TRUNKS[config.kind](in_channels, config)


class Branch(nn.Module):
    """A trunk with its own stem, or nn.Identity when the stem is shared."""

    def __init__(self, stem: nn.Module, trunk: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.trunk = trunk

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk(self.stem(x))


class MultiBranchModel(nn.Module):
    """(B, 12, L) -> logits (B, num_labels) in label order, for any L >= MIN_LENGTH.

    The input is the stored record (12 leads at SOURCE_FS, normalised); the front end makes
    the model's own input from it (`config.input`: its leads, at its rate)."""

    def __init__(
        self,
        config: ModelConfig,
        num_labels: int,
        label_groups: list[list[int]],
        group_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        n_branches = config.n_branches or len(label_groups)
        shared = config.stem.shared
        # Branch i serves group i when there is one branch per group (then it may have its
        # own architecture, `branches.<group>.*`); otherwise every branch is the shared one.
        names = [n.lower() for n in group_names] if len(group_names) == n_branches else []
        branch_configs = (
            [config.branch_for(n) for n in names] if names else [config.branch] * n_branches
        )
        leads = config.input.n_leads
        self.front = front_end(config.input)
        self.stem = Stem(config.stem, leads) if shared else nn.Identity()
        self.branches = nn.ModuleList(
            Branch(
                nn.Identity() if shared else Stem(config.stem, leads),
                build_trunk(config.stem.channels, branch),
            )
            for branch in branch_configs
        )
        self.fusion = FUSIONS[config.fusion](
            [b.out_channels for b in branch_configs], num_labels, label_groups, config
        )
        # plain attributes (not state): what a checkpoint needs to rebuild this model
        self.config = config
        self.num_labels = num_labels
        self.label_groups = [list(g) for g in label_groups]
        self.group_names = [n.lower() for n in group_names]
        self.pretrained_stem = False  # set by `pretrained.load_trunk_weights`

    def embed(self, x: Tensor) -> list[Tensor]:
        """Pooled embedding (B, D) of every branch."""
        h = self.stem(self.front(x))
        embeddings: list[Tensor] = []
        for branch in self.branches:
            embeddings.append(branch(h))
        return embeddings

    def forward(self, x: Tensor) -> Tensor:
        return self.fusion(self.embed(x))


def set_layout(model: nn.Module, layout: str) -> int:
    """Computes the stems and ResU-Dense trunks in `model` in `layout` (one of LAYOUTS) from
    now on; returns how many modules were switched. The parameters are not touched: the
    function, its weights and the checkpoints stay those of the `ncl` model (equal within
    float rounding: the kernels sum in other orders)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    switched = 0
    for module in model.modules():
        if isinstance(module, (Stem, ResUDenseTrunk)):
            module.channels_last = layout == "channels_last"
            switched += 1
    return switched


def validate(
    config: ModelConfig,
    num_labels: int,
    label_groups: Sequence[Sequence[int]] | None = None,
    group_names: Sequence[str] = (),
) -> list[list[int]]:
    """Check `config` against the label layout; return the groups the model will use.

    Call before a trial starts: every problem a build would hit raises a `ValueError` here.
    `label_groups` must partition range(num_labels); None means one group of all labels for
    a single-branch model and a near-even contiguous split into `n_branches` groups otherwise.
    The number of branches is `config.n_branches`, or the number of groups when it is 0.
    `independent` fusion needs one branch per group, except that a single branch predicts
    every label whatever the grouping (the plain seed network). `group_names` (the label
    map's, any case) name the groups for per-branch settings (`branches.<group>.*`).
    """
    if not isinstance(config, ModelConfig):
        raise ValueError(f"expected a ModelConfig, got {type(config).__name__}")
    _check_int("num_labels", num_labels, 1)
    if label_groups is None:
        n = config.n_branches or 1
        if n > num_labels:
            _fail("n_branches", f"{n} branches need at least {n} labels, got {num_labels}")
        groups = split_label_groups(num_labels, n)
    else:
        groups = [list(g) for g in label_groups]
        seen: list[int] = []
        for g in groups:
            if not g:
                _fail("label_groups", "every group must hold at least one label")
            for i in g:
                if isinstance(i, bool) or not isinstance(i, int):
                    _fail("label_groups", f"label indices must be ints, got {i!r}")
                seen.append(i)
        if sorted(seen) != list(range(num_labels)):
            _fail(
                "label_groups",
                f"must hold every label index 0..{num_labels - 1} exactly once, got {groups}",
            )
    n_branches = config.n_branches or len(groups)
    FUSIONS[config.fusion].check_layout(n_branches, num_labels, groups)
    _check_branch_groups(config, groups, n_branches, group_names)
    return groups


def _check_branch_groups(
    config: ModelConfig, groups: list[list[int]], n_branches: int, group_names: Sequence[str]
) -> None:
    """Per-branch overrides need named groups, one branch each, and known names."""
    if not config.branches:
        return
    key = f"branches.{config.branches[0][0]}"
    if not group_names:
        _fail(key, "per-branch settings need the label map's group names (group_names)")
    names = [n.lower() for n in group_names]
    if len(names) != len(groups):
        _fail("group_names", f"{len(names)} names for {len(groups)} label groups")
    if n_branches != len(groups):
        _fail(
            key,
            f"per-branch settings need one branch per label group (n_branches=0 or "
            f"{len(groups)}), got n_branches={config.n_branches}",
        )
    for group, _ in config.branches:
        if group not in names:
            _fail(f"branches.{group}", f"unknown label group {group!r}; valid: {', '.join(names)}")


def build_model(
    config: ModelConfig,
    num_labels: int = 20,
    label_groups: Sequence[Sequence[int]] | None = None,
    group_names: Sequence[str] = (),
) -> MultiBranchModel:
    """Build the model `config` describes; raises ValueError for an incompatible layout.

    `label_groups` lists label indices per group (from the label map), `group_names` their
    names (needed by per-branch settings); see `validate` for what None means and how the
    number of branches follows from it.
    """
    groups = validate(config, num_labels, label_groups, group_names)
    return MultiBranchModel(config, num_labels, groups, group_names)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
