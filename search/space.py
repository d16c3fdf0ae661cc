"""Search spaces as YAML: loading, validation, and sampling through Optuna's define-by-run API.

A space file names flat config keys (the same keys as `ModelConfig.to_flat()` plus `train.*`),
each with one distribution, optionally conditional on earlier keys:

    base: small                  # components preset giving every model key not sampled
    fixed: {train.epochs: 20}    # constants for every trial
    params:
      fusion: {choice: [independent, concat, attention, late]}
      fusion.hidden: {choice: [128, 256], when: {fusion: [concat, attention]}}
      train.lr: {loguniform: [1.0e-4, 3.0e-3]}
    points_to_evaluate: [{preset: seed-multi}, {train.lr: 0.001, fusion: concat}]
    scheduler: {grace_period: 2, reduction_factor: 3}
    searcher: {n_startup_trials: 5}

A sampled point becomes a trial's flat config: `base` preset, then `fixed`, then the sampled
values. Conditional keys that do not apply are simply absent (the base value holds).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ecgtune.components import get_preset, parse_branch_key
from ecgtune.search.config import INIT_KEYS, InitConfig, TrainConfig, TrialConfig
from ecgtune.search.errors import SpaceError

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "logint")
_TOP_KEYS = {
    "description", "base", "fixed", "params", "points_to_evaluate", "scheduler", "searcher"
}
# The settings a space may give ASHA and the searcher: (type, lowest value, lowest allowed).
# A misspelt key would otherwise be ignored and the default used without a word.
_SETTINGS: dict[str, dict[str, tuple[type, float, bool]]] = {
    "scheduler": {"grace_period": (int, 1, True), "reduction_factor": (float, 1, False)},
    "searcher": {"n_startup_trials": (int, 0, True)},
}


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    args: tuple[Any, ...]
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def applies(self, values: Mapping[str, Any]) -> bool:
        return all(values.get(key) in allowed for key, allowed in self.when)

    def suggest(self, trial: Any) -> Any:
        """Draw a value through an Optuna trial (or Ray's capturing proxy of one)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.args))
        low, high = self.args
        if self.kind in ("uniform", "loguniform"):
            return trial.suggest_float(self.name, low, high, log=self.kind == "loguniform")
        return trial.suggest_int(self.name, low, high, log=self.kind == "logint")

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.args
        low, high = self.args
        return low <= value <= high


@dataclass(frozen=True)
class DefineByRun:
    """Samples the conditional space through an Optuna trial and returns the rest of a
    complete flat config (base preset + fixed) as constants."""

    params: tuple[Param, ...]
    constants: Mapping[str, Any]

    def __call__(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for param in self.params:
            if param.applies(values):
                values[param.name] = param.suggest(trial)
        # Returned constants override sampled values in Ray's OptunaSearch, so only the keys
        # not sampled go back: every trial config is then complete on its own.
        return {k: v for k, v in self.constants.items() if k not in values}


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search space; `source` is the YAML text, logged with every search."""

    name: str
    base: str
    fixed: Mapping[str, Any]
    params: tuple[Param, ...]
    points_to_evaluate: tuple[Mapping[str, Any], ...] = ()
    scheduler: Mapping[str, Any] = field(default_factory=dict)
    searcher: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def base_flat(self) -> dict[str, Any]:
        """Every key a trial config has before sampling: the base preset's model keys, the
        training defaults, then the space's fixed values."""
        return {**get_preset(self.base).to_flat(), **_train_defaults(), **self.fixed}

    def trial_flat(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """The complete flat config of a trial: base preset, then fixed values, then `sampled`."""
        return {**self.base_flat(), **sampled}

    def define_by_run(self) -> DefineByRun:
        """Optuna define-by-run function over this space (picklable: Ray saves the searcher)."""
        return DefineByRun(self.params, self.base_flat())

    def sample(self, seed: int) -> dict[str, Any]:
        """One random point (the sampled keys only), for tests and validation."""
        import optuna

        # A throw-away study per point; Optuna's INFO line about each would flood a terminal.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        trial = study.ask()
        self.define_by_run()(trial)
        return dict(trial.params)

    def trial_config(self, sampled: Mapping[str, Any]) -> TrialConfig:
        return TrialConfig.from_flat(self.trial_flat(sampled))


def _parse_param(name: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{where}: params.{name} must be a mapping like {{choice: [...]}}")
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    extra = set(spec) - set(DISTRIBUTIONS) - {"when"}
    if len(kinds) != 1 or extra:
        raise SpaceError(
            f"{where}: params.{name} needs exactly one of {', '.join(DISTRIBUTIONS)} "
            f"(and optionally 'when'); got keys {sorted(spec)}"
        )
    kind = kinds[0]
    args = spec[kind]
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: params.{name}.choice must be a non-empty list")
        for value in args:
            if not isinstance(value, (str, int, float, bool)) or value is None:
                raise SpaceError(
                    f"{where}: params.{name}.choice values must be strings or numbers "
                    f"(write tuples as '6-5-4-3'); got {value!r}"
                )
    else:
        if not (isinstance(args, list) and len(args) == 2):
            raise SpaceError(f"{where}: params.{name}.{kind} must be [low, high]")
        low, high = (float(a) for a in args) if "uniform" in kind else (int(a) for a in args)
        if not low < high or (kind in ("loguniform", "logint") and low <= 0):
            raise SpaceError(f"{where}: params.{name}.{kind} has an empty or invalid range")
        args = [low, high]
    when = spec.get("when", {})
    if not isinstance(when, Mapping):
        raise SpaceError(f"{where}: params.{name}.when must map keys to lists of values")
    when_t = tuple(
        (key, tuple(v if isinstance(v, list) else [v])) for key, v in when.items()
    )
    return Param(name=name, kind=kind, args=tuple(args), when=when_t)


def parse_space(text: str, name: str = "<string>") -> SearchSpace:
    """Parse and validate a space from YAML text; errors name the space and the key."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(f"{name}: not valid YAML: {exc}") from None
    if not isinstance(doc, Mapping) or "params" not in doc:
        raise SpaceError(f"{name}: a search space is a mapping with at least a 'params' key")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise SpaceError(
            f"{name}: unknown top-level keys {sorted(unknown)}; valid: {sorted(_TOP_KEYS)}"
        )
    base = str(doc.get("base", "small"))
    try:
        get_preset(base)
    except (KeyError, ValueError) as exc:
        raise SpaceError(f"{name}: base: {exc}") from None
    params_doc = doc["params"] or {}
    params = tuple(_parse_param(str(k), v, name) for k, v in params_doc.items())
    seen: set[str] = set()
    for param in params:
        for key, _ in param.when:
            if key not in seen:
                raise SpaceError(
                    f"{name}: params.{param.name} is conditional on {key!r}, which must be a "
                    "param listed before it"
                )
        seen.add(param.name)
    space = SearchSpace(
        name=name,
        base=base,
        fixed=dict(doc.get("fixed") or {}),
        params=params,
        scheduler=_settings(doc, "scheduler", name),
        searcher=_settings(doc, "searcher", name),
        description=str(doc.get("description", "")),
        source=text,
    )
    points = tuple(_resolve_point(space, p, name) for p in doc.get("points_to_evaluate") or [])
    space = SearchSpace(**{**space.__dict__, "points_to_evaluate": points})
    _check_keys(space)
    return space


def _settings(doc: Mapping[str, Any], section: str, where: str) -> dict[str, Any]:
    """The `scheduler:` or `searcher:` mapping, every key known and every value in range."""
    values = doc.get(section) or {}
    if not isinstance(values, Mapping):
        raise SpaceError(f"{where}: {section} must be a mapping, e.g. "
                         f"{{{next(iter(_SETTINGS[section]))}: 2}}")
    rules = _SETTINGS[section]
    unknown = sorted(set(values) - set(rules))
    if unknown:
        raise SpaceError(f"{where}: unknown {section} keys {unknown}; valid: {sorted(rules)}")
    for key, value in values.items():
        kind, low, inclusive = rules[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if (not number or (kind is int and value != int(value))
                or not (value >= low if inclusive else value > low)):
            what = "an integer" if kind is int else "a number"
            bound = f">= {low}" if inclusive else f"> {low}"
            raise SpaceError(f"{where}: {section}.{key} must be {what} {bound}, got {value!r}")
    return {key: rules[key][0](value) for key, value in values.items()}


def _resolve_point(space: SearchSpace, point: Any, where: str) -> dict[str, Any]:
    """A warm-start point in the space's own terms; `{preset: NAME}` expands a model preset."""
    if not isinstance(point, Mapping):
        raise SpaceError(f"{where}: each of points_to_evaluate must be a mapping")
    point = dict(point)
    preset = point.pop("preset", None)
    resolved: dict[str, Any] = {}
    if preset is not None:
        preset_flat = _normalise(get_preset(str(preset)).to_flat())
        base = _normalise(space.base_flat())
        params = {p.name: p for p in space.params}
        for key, value in preset_flat.items():
            if key in params:
                resolved[key] = value
            elif base.get(key) != value:
                raise SpaceError(
                    f"{where}: preset {preset!r} sets {key}={value!r}, which this space neither "
                    f"samples nor fixes to that value (base {space.base!r} has {base.get(key)!r})"
                )
    resolved.update(point)
    for param in space.params:
        if param.name in resolved and not param.contains(resolved[param.name]):
            raise SpaceError(
                f"{where}: warm-start value {param.name}={resolved[param.name]!r} is outside "
                f"its distribution {param.kind} {list(param.args)}"
            )
    return resolved


def _normalise(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Tuples as the '6-5-4-3' strings a categorical space uses."""
    return {
        k: "-".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v
        for k, v in flat.items()
    }


def _check_keys(space: SearchSpace) -> None:
    valid = set(space.base_flat())
    for key in [*space.fixed, *space.param_names]:
        try:  # per-branch keys name label groups, which the data's label map checks later
            if parse_branch_key(key) is not None:
                continue
        except ValueError as exc:
            raise SpaceError(f"{space.name}: {exc}") from None
        if key not in valid:
            raise SpaceError(
                f"{space.name}: unknown config key {key!r}; valid keys: {', '.join(sorted(valid))}"
            )


def _train_defaults() -> dict[str, Any]:
    init = InitConfig()
    return {**{key: getattr(init, name) for key, name in INIT_KEYS.items()},
            **{f"train.{k}": v for k, v in asdict(TrainConfig()).items()}}


def builtin_spaces() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files(__package__).joinpath("spaces").iterdir()
        if p.name.endswith(".yaml")
    )


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A shipped space by name (`default`, `tiny`, ...) or a YAML file by path."""
    path = Path(name_or_path)
    # A folder of that name (`demo/`, a workdir) is not a space: only a file or a .yaml path is.
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SpaceError(f"search space file not found: {path}")
        return parse_space(path.read_text(), name=str(path))
    shipped = resources.files(__package__).joinpath("spaces").joinpath(f"{name_or_path}.yaml")
    if not shipped.is_file():
        raise SpaceError(
            f"unknown search space {str(name_or_path)!r}: not a file, and not one of the shipped "
            f"spaces ({', '.join(builtin_spaces())})"
        )
    return parse_space(shipped.read_text(), name=str(name_or_path))


def validate_point(space: SearchSpace, sampled: Mapping[str, Any], num_labels: int,
                   label_groups: list[list[int]],
                   group_names: Sequence[str] = ()) -> TrialConfig:
    """Build and check a trial's config; raises ValueError naming what is wrong."""
    from ecgtune.components import validate

    trial = space.trial_config(sampled)
    validate(trial.model, num_labels, label_groups, group_names)
    if not math.isfinite(trial.train.lr):
        raise ValueError("train.lr must be finite")
    return trial


__all__ = [
    "Param",
    "SearchSpace",
    "SpaceError",
    "builtin_spaces",
    "load_space",
    "parse_space",
    "validate_point",
]
