"""What pyproject.toml promises about dependencies holds: private internals of a library are
touched only in its compat module, the floor check pins every floor, constraints.txt stays
inside the ranges, and this environment (the dev one, or the floor check's) is inside them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("data_prep", "components", "search", "ensembles")
# One per library whose internals we use; see each module's docstring.
COMPAT_MODULES = {REPO / "search" / "_ray_compat.py", REPO / "components" / "_torch_compat.py"}
LIBRARIES = ("ray", "mlflow", "optuna", "torch", "onnx", "onnxruntime", "onnxscript",
             "pyarrow", "pandas", "numpy", "sklearn", "scipy", "wfdb", "safetensors")
_LIB = "|".join(LIBRARIES)
PRIVATE_PATTERNS = {
    # a private module or attribute on a library's dotted path: imports, logger names, strings
    "private path": re.compile(rf"\b(?:{_LIB})(?:\.\w+)*\._[A-Za-z]\w*"),
    # a private name imported from a library
    "private import": re.compile(rf"^\s*from\s+(?:{_LIB})(?:\.\w+)*\s+import\s+.*\b_[A-Za-z]",
                                 re.MULTILINE),
    # Private modules and attributes of libraries that we reached into before they were
    # gathered in the compat modules; spelled alone (an object's attribute), they are found
    # by name.
    "known internal": re.compile(
        r"\b(?:_private|_internal|_tracking_service|_orig_mod|_checkpoint_results|"
        r"_latest_checkpoint_result|_get_checkpoint_score|_TrainingResult|ENABLE_RAY_CLUSTER|"
        r"print_worker_logs|handle_error|should_recover)\b"),
}


def _load(relative: str) -> object:
    spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _runtime_requirements() -> list[Requirement]:
    return [Requirement(r) for r in _pyproject()["project"]["dependencies"]]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_library_internals_are_touched_only_in_the_compat_modules():
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path in COMPAT_MODULES:
                continue
            text = path.read_text()
            for kind, pattern in PRIVATE_PATTERNS.items():
                for match in pattern.finditer(text):
                    line = text.count("\n", 0, match.start()) + 1
                    found.append(f"{path.relative_to(REPO)}:{line}: {kind} {match.group(0)!r}")
    assert not found, "move these into the library's compat module:\n" + "\n".join(found)


def test_the_grep_finds_what_it_is_for():
    """The patterns above match the forms that internals take in code."""
    samples = [
        "from ray._private import worker",
        'logging.getLogger("ray.train._internal.storage")',
        "from mlflow.tracking._tracking_service.utils import is_tracking_uri_set",
        "from optuna.samplers import _tpe",
        "x = torch._dynamo.config",
        'getattr(model, "_orig_mod", model)',
        "manager._checkpoint_results = []",
    ]
    for sample in samples:
        assert any(p.search(sample) for p in PRIVATE_PATTERNS.values()), sample
    for sample in ["torch.__version__", "from ecgtune.search import _ray_compat",
                   "loader._gain", "os._exit(1)", "mlflow.is_tracking_uri_set()"]:
        assert not any(p.search(sample) for p in PRIVATE_PATTERNS.values()), sample


def test_compat_modules_import_without_their_library_started():
    for path in COMPAT_MODULES:
        package = path.parent.name
        module = importlib.import_module(f"ecgtune.{package}.{path.stem}")
        assert module.__all__, path


def test_floor_check_pins_every_floor():
    floors = _load(".ci/deps.py").floor_constraints(REPO / "pyproject.toml")  # type: ignore[attr-defined]
    pinned = {_canonical(line.split("==")[0]): line.split("==")[1] for line in floors}
    for req in _runtime_requirements():
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert pinned.get(_canonical(req.name)) == (lower[0] if lower else None), req


@pytest.mark.parametrize("name", ["ray", "mlflow"])
def test_ray_and_mlflow_stop_at_a_tested_minor(name):
    """We use their internals: a new minor may move them, so it is let in only once tested."""
    (req,) = [r for r in _runtime_requirements() if r.name == name]
    (upper,) = [Version(s.version) for s in req.specifier if s.operator == "<"]
    assert len(upper.release) == 2 and upper.minor > 0, f"{req}: cap below an untested minor"
    extras = [Requirement(r) for reqs in _pyproject()["project"]["optional-dependencies"].values()
              for r in reqs]
    for other in (r for r in extras if r.name == name):
        assert other.specifier == req.specifier, f"{other} differs from {req}"


def _constraints() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    assert all(len(pin) == 2 for pin in pins), "constraints.txt: one name==version a line"
    return {_canonical(name): version for name, version in pins}


def test_constraints_pin_every_dependency_inside_its_range():
    pins = _constraints()
    assert "torch" not in pins, "torch comes from TORCH_SPEC (a CPU or a CUDA build)"
    assert "ecgtune" not in pins
    assert not [v for v in pins.values() if "+" in v], "a local version breaks other builds"
    everything = _runtime_requirements() + [
        Requirement(r) for reqs in _pyproject()["project"]["optional-dependencies"].values()
        for r in reqs]
    for req in everything:
        if req.name == "torch":
            continue
        version = pins.get(_canonical(req.name))
        assert version is not None, f"constraints.txt has no {req.name}: run `make constraints`"
        assert req.specifier.contains(version, prereleases=True), (
            f"constraints.txt: {req.name}=={version} is outside {req}: run `make constraints`")


def test_this_environment_is_inside_the_declared_ranges():
    for req in _runtime_requirements():
        installed = importlib.metadata.version(req.name)
        assert req.specifier.contains(Version(installed).public, prereleases=True), (
            f"{req.name} {installed} is outside {req}")
