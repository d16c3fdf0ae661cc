"""The installed distribution: one `ecgtune` namespace, no top-level package names of ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["data_prep", "components", "search", "ensembles"])
def test_only_the_ecgtune_namespace_is_importable(name, tmp_path):
    # Run outside the repo: `python -m pytest` puts the repo root on sys.path, which would
    # find the folders themselves. An unrelated PyPI package of that name may exist; ours not.
    code = (
        "import importlib, importlib.util\n"
        f"print(importlib.import_module('ecgtune.{name}').__file__)\n"
        f"spec = importlib.util.find_spec('{name}')\n"
        "print(spec.origin if spec else None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    namespaced, top_level = out.stdout.split()
    assert Path(namespaced).is_relative_to(REPO / name)
    assert top_level == "None" or not Path(top_level).is_relative_to(REPO)


def test_console_script_is_namespaced():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "ecgtune"]
    assert ep.value == "ecgtune.ensembles.cli:main"


def test_package_data_is_found_outside_the_repo(tmp_path):
    # The shipped label maps and search spaces are looked up through the installed package
    # names (`ecgtune.*`), which a run from the repo root would not notice.
    code = (
        "from ecgtune.data_prep import get_label_map\n"
        "from ecgtune.search.space import builtin_spaces, load_space\n"
        "assert len(get_label_map('seed20')) == 20\n"
        "assert {'default', 'demo', 'tiny'} <= set(builtin_spaces())\n"
        "load_space('tiny')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                   check=True)


def test_demo_looks_for_the_sample_records_beside_the_repository() -> None:
    from ecgtune.ensembles.cli.demo import SAMPLE_DIR

    repo = Path(__file__).resolve().parents[1]
    assert SAMPLE_DIR == repo.parent / "shared" / "data" / "ecg-arrhythmia-sample"
