"""ensembles.options: one declaration gives the command line, the defaults and the checks."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ecgtune.ensembles import EnsembleError
from ecgtune.ensembles.build.selection import EnsembleSelector
from ecgtune.ensembles.options import (
    EnsembleOptions,
    FitOptions,
    add_arguments,
    from_namespace,
)

REQUIRED = ["--data", "d", "--name", "n", "--output", "o"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, EnsembleOptions)
    return parser


def _cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("option", {}).get("cli")]


def test_parsed_defaults_are_the_dataclass_defaults():
    options = from_namespace(_parser().parse_args(REQUIRED), EnsembleOptions)
    assert options == EnsembleOptions(data="d", name="n", output="o")
    assert options.fit == FitOptions()


def test_every_declared_option_is_on_the_command_line_with_its_help():
    text = _parser().format_help()
    for cls in (EnsembleOptions, FitOptions):
        for f in _cli_fields(cls):
            flag = f.metadata["option"]["flag"] or "--" + f.name.replace("_", "-")
            assert flag in text, flag
            assert f.metadata["option"]["help"].split()[0] in text


def test_values_reach_the_nested_fit_options():
    args = _parser().parse_args([*REQUIRED, "--metric", "neg_brier", "--seed", "7", "--bags",
                                 "2", "--windows", "5", "--no-progress"])
    options = from_namespace(args, EnsembleOptions)
    assert options.fit == FitOptions(metric="neg_brier", seed=7, bags=2)
    assert options.n_windows == 5 and options.progress is False


@pytest.mark.parametrize("argv", [["--metric", "accuracy"], ["--windows", "x"]])
def test_unparsable_values_are_argparse_errors(argv):
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args([*REQUIRED, *argv])


@pytest.mark.parametrize(("argv", "message"), [(["--top-k", "0"], "--top-k must be >= 1"),
                                               (["--bags", "-1"], "--bags must be >= 0")])
def test_out_of_range_values_are_named_in_one_line(argv, message):
    args = _parser().parse_args([*REQUIRED, *argv])
    with pytest.raises(EnsembleError, match=message) as info:
        from_namespace(args, EnsembleOptions)
    assert info.value.exit_code == 2  # a usage error


def test_validation_in_python_names_every_bad_flag():
    with pytest.raises(EnsembleError) as info:
        EnsembleOptions.create(data="d", name="n", output="o", top_k=0, metric="accuracy",
                               n_boot=0)
    message = str(info.value)
    assert "--top-k must be >= 1" in message and "--n-boot must be >= 1" in message
    assert "unknown metric 'accuracy' (--metric)" in message
    with pytest.raises(ValueError, match="bag_fraction"):
        FitOptions(bag_fraction=0.0)


def test_create_and_replace_route_fit_fields():
    options = EnsembleOptions.create(data="d", name="n", output="o", seed=3, top_k=2)
    assert options.fit.seed == 3 and options.top_k == 2
    again = options.replace(metric="macro_auroc", n_boot=10)
    assert again.fit == dataclasses.replace(options.fit, metric="macro_auroc")
    assert again.n_boot == 10 and again.top_k == 2


def test_selector_takes_its_defaults_from_fit_options():
    assert EnsembleSelector().options == FitOptions()
    fit = FitOptions(metric="neg_log_loss", init_size=2)
    assert EnsembleSelector(fit).options is fit
    assert EnsembleSelector(fit, bags=3).options == dataclasses.replace(fit, bags=3)
    assert EnsembleSelector(metric="neg_brier").metric == "neg_brier"
