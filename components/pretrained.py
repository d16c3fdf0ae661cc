"""Pretrained trunk weights (`branch.init`): load one trunk's weights into every branch of a
model before training, and freeze them for the first epochs (`branch.freeze_epochs`).

The file is a safetensors file of one trunk's state dict: the keys `ResUDenseTrunk` or
`StateSpaceTrunk` (`branch.kind`) name, for the architecture the config describes, plus
optionally the stem's under `stem.`. Nothing is downloaded: a converted published backbone,
or a trunk saved from one of our own trials with `save_trunk_weights`, is a local path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor, nn

from .model import MultiBranchModel

__all__ = ["STEM_PREFIX", "frozen_parameters", "load_trunk_weights", "read_trunk_weights",
           "save_trunk_weights", "set_trunks_frozen"]

STEM_PREFIX = "stem."


def _part(module: nn.Module, name: str) -> nn.Module:
    part = getattr(module, name)
    if not isinstance(part, nn.Module):
        raise TypeError(f"{type(module).__name__}.{name} is not a module")
    return part


def _branches(model: MultiBranchModel) -> list[nn.Module]:
    return [branch for branch in model.branches if isinstance(branch, nn.Module)]


def save_trunk_weights(model: MultiBranchModel, path: str | os.PathLike[str],
                       branch: int = 0, stem: bool = True) -> None:
    """Write branch `branch`'s trunk (and, with `stem`, the stem that feeds it) in the format
    `load_trunk_weights` reads."""
    from safetensors.torch import save_file

    chosen = _branches(model)[branch]
    tensors = {k: v.detach().cpu().contiguous()
               for k, v in _part(chosen, "trunk").state_dict().items()}
    if stem:
        source = model.stem if not isinstance(model.stem, nn.Identity) \
            else _part(chosen, "stem")
        tensors.update({STEM_PREFIX + k: v.detach().cpu().contiguous()
                        for k, v in source.state_dict().items()})
    save_file(tensors, os.fspath(path))


def read_trunk_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a trunk weights file; ValueError naming the file when it is missing or
    not a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"branch.init: {file} does not exist or is not a file")
    try:
        return load_file(os.fspath(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"branch.init: {file} is not a safetensors weights file ({exc})") \
            from None


def _stems(model: MultiBranchModel) -> list[nn.Module]:
    if not isinstance(model.stem, nn.Identity):
        return [model.stem]
    return [_part(b, "stem") for b in _branches(model)]


def _load(module: nn.Module, tensors: dict[str, Tensor], what: str, file: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"]
                 if missing else [])
        parts += ([f"unexpected {', '.join(unexpected[:3])}"
                   f"{' ...' if len(unexpected) > 3 else ''}"] if unexpected else [])
        raise ValueError(f"branch.init: {file} does not fit the {what}: {'; '.join(parts)}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"branch.init: {file} does not fit the {what}: {key} has shape "
                f"{tuple(value.shape)}, the model's {tuple(own[key].shape)}")
    module.load_state_dict(tensors, strict=True)


def load_trunk_weights(model: MultiBranchModel, path: str | os.PathLike[str]) -> list[str]:
    """Load the file's trunk weights into every branch's trunk (and its `stem.` weights, when
    it has any, into the stem or stems); returns what was loaded, for the trial's log. A file
    that does not fit (another kind, width or depth) is a ValueError naming the file and the
    first keys that differ."""
    file = os.fspath(path)
    tensors = read_trunk_weights(file)
    stem = {k[len(STEM_PREFIX):]: v for k, v in tensors.items() if k.startswith(STEM_PREFIX)}
    trunk = {k: v for k, v in tensors.items() if not k.startswith(STEM_PREFIX)}
    loaded = []
    for i, branch in enumerate(_branches(model)):
        module = _part(branch, "trunk")
        _load(module, trunk, f"trunk of branch {i} ({type(module).__name__})", file)
        loaded.append(f"branch {i} trunk")
    if stem:
        for i, module in enumerate(_stems(model)):
            _load(module, stem, "stem", file)
            loaded.append("stem" if len(_stems(model)) == 1 else f"branch {i} stem")
    model.pretrained_stem = bool(stem)
    return loaded


def _frozen_modules(model: MultiBranchModel) -> Iterator[nn.Module]:
    for branch in _branches(model):
        yield _part(branch, "trunk")
    if getattr(model, "pretrained_stem", False):
        yield from _stems(model)


def set_trunks_frozen(model: MultiBranchModel, frozen: bool) -> None:
    """Freeze (or thaw) the pretrained parts: no gradients for their weights and, while
    frozen, eval mode (their normalisation statistics and dropout as pretrained). Call after
    `model.train()`, which would put them back in training mode."""
    for module in _frozen_modules(model):
        for param in module.parameters():
            param.requires_grad_(not frozen)
        if frozen:
            module.eval()


def frozen_parameters(model: MultiBranchModel) -> Iterator[Tensor]:
    """The parameters `set_trunks_frozen` freezes."""
    for module in _frozen_modules(model):
        yield from module.parameters()
