"""search.run.load_search_data: the folds a search trains and validates on come from the
manifest's fold roles, not from numbers in the search code."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ecgtune.data_prep import PrepError
from ecgtune.search.errors import SearchError
from ecgtune.search.run import load_search_data


@pytest.fixture
def data_copy(prepared_data, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(prepared_data, out)
    return out


def _set_roles(data_dir, roles):
    manifest = json.loads((data_dir / "manifest.json").read_text())
    manifest["folds"]["roles"] = roles
    (data_dir / "manifest.json").write_text(json.dumps(manifest))


def test_default_roles_train_on_0_to_6_and_validate_on_7(prepared_data):
    data, dataset = load_search_data(prepared_data)
    assert data.train_folds == (0, 1, 2, 3, 4, 5, 6) and data.val_folds == (7,)
    assert set(np.unique(dataset.folds)) == set(range(8))
    assert len(data.label_names) == sum(len(g) for g in data.label_groups)


def test_roles_recorded_in_the_manifest_decide(data_copy):
    _set_roles(data_copy, {"train": [0, 1, 2, 3, 4, 5], "val": [6, 9], "ensemble": [7],
                           "test": [8]})
    data, dataset = load_search_data(data_copy)
    assert data.train_folds == (0, 1, 2, 3, 4, 5) and data.val_folds == (6, 9)
    assert data.folds == (0, 1, 2, 3, 4, 5, 6, 9)
    assert set(np.unique(dataset.folds)) == {0, 1, 2, 3, 4, 5, 6, 9}


def test_a_role_outside_the_data_is_refused(data_copy):
    _set_roles(data_copy, {"train": [0, 1, 2, 3, 4, 5, 6], "val": [7, 10], "ensemble": [8],
                           "test": [9]})
    with pytest.raises(PrepError, match="'val' names fold 10"):
        load_search_data(data_copy)


def test_not_a_data_directory(tmp_path):
    with pytest.raises(SearchError, match=r"no manifest\.json"):
        load_search_data(tmp_path)
