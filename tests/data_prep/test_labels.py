from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest

from ecgtune.data_prep import LABEL_MAPS, LabelMap, LabelMapError, get_label_map

ORDER = (
    "AFIB CAVB GSVT SB SR 1AVB APB CLBBB CRBBB VPB LAD LAFB LQV LVH RAD RVH PACE QWA STTA WPW"
).split()
GROUPS = {"Rhythm": ORDER[:5], "Duration": ORDER[5:10], "Amplitude": ORDER[10:16],
          "Morphology": ORDER[16:]}


@pytest.mark.parametrize("name", sorted(LABEL_MAPS))
def test_every_registered_map_loads(name: str) -> None:
    lm = get_label_map(name)
    assert lm.name == name
    assert lm.names == tuple(ORDER)
    assert lm.group_names == tuple(GROUPS)
    assert lm.group_indices() == [[ORDER.index(n) for n in names] for names in GROUPS.values()]
    for label in lm.labels:
        assert label.name in GROUPS[label.group]
    assert LabelMap.from_manifest(lm.to_manifest(), name=name) == lm


def test_seed20_has_the_41_codes_of_the_reference_table(reference_csv) -> None:
    rows = [r for r in csv.DictReader(reference_csv.open()) if r["Group"] != "Unlabeled"]
    assert len(rows) == 41
    lm = get_label_map("seed20")
    expected = {r["Snomed Code"]: (r["Integration Name"], r["Group"]) for r in rows}
    got = {c: (label.name, label.group) for label in lm.labels for c in label.codes}
    assert got == expected


def test_rbbb_variant_maps_nonspecific_bbb_to_crbbb() -> None:
    base, rbbb = get_label_map("seed20"), get_label_map("seed20-rbbb")
    crbbb = ORDER.index("CRBBB")
    assert base.encode(["59118001"]).sum() == 0
    assert rbbb.encode(["59118001"])[crbbb] == 1
    assert set(rbbb.labels[crbbb].codes) == set(base.labels[crbbb].codes) | {"59118001"}


def test_encode_known_codes() -> None:
    lm = get_label_map("seed20")
    # JS20000's header: APB, sinus tachycardia (GSVT), IDC (unlabeled), ST changes (STTA)
    y = lm.encode(["284470004", "427084000", "698252002", "55930002"])
    assert y.dtype == np.uint8
    assert [ORDER[i] for i in np.flatnonzero(y)] == ["GSVT", "APB", "STTA"]
    assert lm.encode(["164890007"])[ORDER.index("AFIB")] == 1  # flutter -> AFIB
    assert lm.encode([" 164873001 "])[ORDER.index("LVH")] == 1
    assert lm.encode([]).sum() == 0
    assert lm.encode_many([["426177001"], [], ["10370003", "74390002"]]).tolist() == [
        lm.encode(["426177001"]).tolist(), [0] * 20, lm.encode(["10370003", "74390002"]).tolist()
    ]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(LabelMapError) as err:
        get_label_map("seed21")
    message = str(err.value)
    assert "seed21" in message and "seed20" in message and "seed20-rbbb" in message
    assert isinstance(err.value, KeyError)


def test_malformed_maps_are_rejected() -> None:
    with pytest.raises(LabelMapError, match="maps to both"):
        LabelMap.from_manifest([
            {"name": "A", "codes": ["1"], "group": "g"}, {"name": "B", "codes": ["1"], "group": "g"}
        ])
    with pytest.raises(LabelMapError, match="malformed"):
        LabelMap.from_manifest([{"name": "A"}])


def test_label_map_pickles() -> None:
    lm = get_label_map("seed20")
    again = pickle.loads(pickle.dumps(lm))
    assert again == lm and again.encode(["426177001"]).tolist() == lm.encode(["426177001"]).tolist()
