import os

import pytest

from vst.ntu import XSUB60_TRAIN, XSUB120_TRAIN, ClipName, DatasetError, scan, split, split_of


def test_parse_good_names():
    n = ClipName.parse("/data/nturgb+d_rgb/S017C003P020R002A060_rgb.avi")
    assert (n.setup, n.camera, n.performer, n.replication, n.action) == (17, 3, 20, 2, 60)
    assert n.stem == "S017C003P020R002A060"
    assert ClipName.parse("S001C001P001R001A001_rgb.mp4") == ClipName(1, 1, 1, 1, 1)
    assert ClipName.parse("S001C001P001R001A001.skeleton") == ClipName(1, 1, 1, 1, 1)


@pytest.mark.parametrize(
    "bad",
    [
        "S01C001P001R001A001_rgb.avi",
        "clip.avi",
        "S001C001P001R001A001_depth.avi",
        "s001c001p001r001a001_rgb.avi",
        "S001C001P001R001A0011_rgb.avi",
    ],
)
def test_parse_malformed_names_name_the_file(bad):
    with pytest.raises(DatasetError) as err:
        ClipName.parse(bad)
    assert bad in str(err.value) and "SsssCcccPpppRrrrAaaa" in str(err.value)


def test_protocol_rules_match_the_papers():
    assert len(XSUB60_TRAIN) == 20 and len(XSUB120_TRAIN) == 53
    assert split_of(ClipName(1, 1, 1, 1, 1), "xsub") == "train"
    assert split_of(ClipName(1, 1, 3, 1, 1), "xsub") == "test"
    assert split_of(ClipName(1, 1, 38, 1, 1), "xsub") == "train"
    assert split_of(ClipName(1, 1, 40, 1, 1), "xsub") == "test"
    assert split_of(ClipName(1, 1, 1, 1, 1), "xview") == "test"
    assert split_of(ClipName(1, 2, 1, 1, 1), "xview") == "train"
    assert split_of(ClipName(1, 3, 1, 1, 1), "xview") == "train"
    assert split_of(ClipName(20, 1, 45, 1, 100), "xsub120") == "train"
    assert split_of(ClipName(20, 1, 45, 1, 100), "xsub") == "test"
    assert split_of(ClipName(20, 1, 44, 1, 100), "xsub120") == "test"
    assert split_of(ClipName(2, 1, 1, 1, 1), "xset120") == "train"
    assert split_of(ClipName(3, 1, 1, 1, 1), "xset120") == "test"
    with pytest.raises(DatasetError, match="unknown protocol"):
        split_of(ClipName(1, 1, 1, 1, 1), "xfoo")


def test_every_protocol_splits_the_synthetic_set(tiny_dataset):
    records = scan(tiny_dataset)
    assert len(records) == 3 * 3 * 3 * 2 * 1  # classes x performers x cameras x setups x reps
    assert all(r.attributes is not None for r in records)
    expected = {
        "xsub": lambda r: r.name.performer in (1, 2),
        "xview": lambda r: r.name.camera in (2, 3),
        "xsub120": lambda r: r.name.performer in (1, 2),
        "xset120": lambda r: r.name.setup == 2,
    }
    for protocol, is_train in expected.items():
        parts = split(records, protocol)
        assert len(parts["train"]) + len(parts["test"]) == len(records)
        assert parts["train"] and parts["test"]
        assert all(is_train(r) for r in parts["train"]) and not any(is_train(r) for r in parts["test"])


def test_scan_names_a_malformed_file(tmp_path):
    (tmp_path / "S001C001P001R001A001_rgb.avi").write_bytes(b"x")
    (tmp_path / "holiday.avi").write_bytes(b"x")
    with pytest.raises(DatasetError, match="holiday.avi"):
        scan(str(tmp_path))
    assert [r.name.stem for r in scan(str(tmp_path), strict=False)] == ["S001C001P001R001A001"]


def test_scan_missing_or_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        scan(str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="no NTU RGB"):
        scan(str(tmp_path))
    assert os.path.isdir(tmp_path)


def test_held_out_performers_are_whole_and_stable():
    from vst.ntu import held_out_performers, performer_of

    names = [f"S001C00{c}P{p:03d}R001A001" for p in sorted(XSUB60_TRAIN) for c in (1, 2, 3)]
    held = held_out_performers(names, 0.15)
    assert held == {"P005", "P017", "P034"}  # the 4th, 11th and 18th of the 20 training performers
    assert held_out_performers(reversed(names), 0.15) == held and held_out_performers(names, 0.0) == set()
    assert performer_of("S001C002P003R002A013_rgb.avi") == "P003" and performer_of("door_cam") == "door_cam"
    assert held_out_performers(["door_cam"], 0.5) == set()  # the hash would pick it: never everyone
