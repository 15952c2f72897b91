"""Loaders on small files in each published format, written here, with malformed records mixed in."""

import json
import pickle

import numpy as np
import pytest

from sparsedm.data.strokes import StrokeDataConfig
from sparsedm.data.strokes.kanjivg import builtin_kanji_dir, load_kanjivg, parse_kanji_svg
from sparsedm.data.strokes.quickdraw import find_quickdraw_files, load_quickdraw
from sparsedm.data.strokes.vmnist import load_vmnist
from sparsedm.errors import UserError

SIMPLIFIED = [  # QuickDraw simplified: [[xs], [ys]] per stroke
    [[[0, 50, 100], [0, 20, 0]], [[10, 90], [80, 80]]],
    [[[5, 200], [5, 250]]],
    [[[30, 40, 60, 30], [30, 60, 30, 30]]],
]
RAW = [  # QuickDraw raw: [[xs], [ys], [ms]] per stroke
    [[[100.5, 120.0, 150.0], [300.0, 310.0, 305.0], [0, 16, 33]], [[90.0, 95.0], [400.0, 420.0], [500, 520]]],
]


def _object_array(items):
    """A 1-D object array of arrays, as sketch-rnn stores them (np.array would stack equal shapes)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _write_ndjson(path, drawings, extra_lines=()):
    lines = [
        json.dumps({"word": "cat", "countrycode": "DE", "recognized": True, "key_id": str(i), "drawing": d})
        for i, d in enumerate(drawings)
    ]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")


def test_ndjson_simplified_and_raw_with_malformed_records(tmp_path):
    bad = [
        "{not json",
        json.dumps({"word": "cat"}),  # no drawing
        json.dumps({"drawing": []}),  # empty drawing
        json.dumps({"drawing": [[[1, 2, 3], [1, 2]]]}),  # xs and ys differ in length
        json.dumps([1, 2, 3]),  # not an object
    ]
    _write_ndjson(tmp_path / "full_simplified_cat.ndjson", SIMPLIFIED, bad)
    _write_ndjson(tmp_path / "full_raw_The Eiffel Tower.ndjson", RAW)

    result = load_quickdraw(str(tmp_path), ["cat", "the_eiffel_tower"])
    assert len(result.sketches) == 4
    assert sum(result.skipped.values()) == 5
    assert result.skipped["bad JSON line"] == 1 and result.skipped["record without a drawing list"] == 2
    first, raw = result.sketches[0], result.sketches[3]
    np.testing.assert_array_equal(first.points[:, :2], [[0, 0], [50, 20], [100, 0], [10, 80], [90, 80]])
    assert first.points[:, 2].tolist() == [0, 0, 1, 0, 1]
    # raw strokes: the time row is dropped, coordinates kept as floats
    np.testing.assert_allclose(raw.points[:3, :2], [[100.5, 300], [120, 310], [150, 305]])
    assert raw.num_strokes == 2


def test_quickdraw_category_and_format_resolution(tmp_path):
    _write_ndjson(tmp_path / "cat.ndjson", SIMPLIFIED)
    _write_ndjson(tmp_path / "dog.ndjson", SIMPLIFIED[:1])
    np.savez(tmp_path / "dog.npz", train=_object_array([np.array([[0, 0, 0], [5, 5, 1]])]))
    assert [f.name for f in find_quickdraw_files(str(tmp_path), ["cat"])] == ["cat.ndjson"]
    assert [f.name for f in find_quickdraw_files(str(tmp_path), ["dog"], "npz")] == ["dog.npz"]
    with pytest.raises(
        UserError, match=r"'dog' has 2 files .*: dog.ndjson \(simplified\), dog.npz \(npz\); set data.format=npz or"
    ):
        find_quickdraw_files(str(tmp_path), ["dog"])
    with pytest.raises(UserError, match=r"no file for categories \['bus'\].*cat, dog"):
        find_quickdraw_files(str(tmp_path), ["bus"])
    with pytest.raises(UserError, match="does not exist"):
        load_quickdraw(str(tmp_path / "missing"), ["cat"])
    with pytest.raises(UserError, match="none of data.categories"):
        find_quickdraw_files(str(tmp_path / "cat.ndjson"), ["dog"])
    # no categories: every file of the chosen format
    assert len(load_quickdraw(str(tmp_path), [], "ndjson").sketches) == 4


def test_sketch_rnn_npz_stroke3(tmp_path):
    turtle = np.array([[10, 20, 0], [5, 0, 0], [0, 5, 1], [-20, 3, 0], [4, 4, 0]], dtype=np.int16)
    line = np.array([[1, 1, 0], [3, 0, 1]], dtype=np.int16)
    wrong_shape = np.zeros((4, 2), dtype=np.int16)
    splits = {
        "train": _object_array([turtle, wrong_shape]),
        "valid": _object_array([line, line[:1]]),
        "test": _object_array([line]),
    }
    np.savez(tmp_path / "sketchrnn_turtle.npz", **splits)
    result = load_quickdraw(str(tmp_path / "sketchrnn_turtle.npz"), [])
    assert len(result.sketches) == 4 and sum(result.skipped.values()) == 1
    sketch = result.sketches[0]
    np.testing.assert_array_equal(sketch.points[:, :2], np.cumsum(turtle[:, :2], axis=0))
    # pen_lift = 1 ends a stroke, and the last point always ends one
    assert sketch.points[:, 2].tolist() == [0, 0, 1, 0, 1]
    assert sketch.num_strokes == 2


def test_quickdraw_subset_is_seeded_and_all_bad_raises(tmp_path):
    drawings = [[[[0, i + 1], [0, 2 * i + 1]]] for i in range(50)]
    _write_ndjson(tmp_path / "cat.ndjson", drawings)
    a = load_quickdraw(str(tmp_path), ["cat"], max_items=10, seed=3).sketches
    b = load_quickdraw(str(tmp_path), ["cat"], max_items=10, seed=3).sketches
    c = load_quickdraw(str(tmp_path), ["cat"], max_items=10, seed=4).sketches
    ends = lambda sketches: [float(s.points[-1, 0]) for s in sketches]  # noqa: E731
    assert len(a) == 10 and ends(a) == ends(b) and ends(a) != ends(c)

    (tmp_path / "bad.ndjson").write_text("nope\n{}\n")
    with pytest.raises(UserError, match="no usable drawings.*2 records skipped"):
        load_quickdraw(str(tmp_path), ["bad"])


def _kanji_svg(code, paths):
    body = "\n".join(f'<path id="kvg:{code}-s{n}" d="{d}"/>' for n, d in paths)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.0//EN" "http://www.w3.org/TR/2001/REC-SVG-20010904/DTD/svg10.dtd" [
<!ATTLIST g xmlns:kvg CDATA #FIXED "http://kanjivg.tagaini.net" kvg:element CDATA #IMPLIED >
]>
<svg xmlns="http://www.w3.org/2000/svg" width="109" height="109" viewBox="0 0 109 109">
<g id="kvg:StrokePaths_{code}" style="fill:none;stroke:#000000;stroke-width:3;">
<g id="kvg:{code}" kvg:element="x">
{body}
</g></g>
<g id="kvg:StrokeNumbers_{code}"><text transform="matrix(1 0 0 1 4.25 54.13)">1</text></g>
</svg>"""


def test_kanjivg_folder_stroke_order_variants_and_malformed(tmp_path):
    folder = tmp_path / "kanji"
    folder.mkdir()
    # stroke 2 is written first: the -sN ids, not the document order, decide the drawing order
    (folder / "04e8c.svg").write_text(_kanji_svg("04e8c", [(2, "M10,80L100,80"), (1, "M20,30c10,0,50,0,70,0")]))
    (folder / "04e00.svg").write_text(_kanji_svg("04e00", [(1, "M11,54.25L96.88,50")]))
    (folder / "04e8c-Kaisho.svg").write_text(_kanji_svg("04e8c", [(1, "M1,1L50,50")]))
    (folder / "04e09.svg").write_text("<svg><path d=")  # broken XML
    (folder / "04e5d.svg").write_text(_kanji_svg("04e5d", []))  # no strokes
    (folder / "04e94.svg").write_text(_kanji_svg("04e94", [(1, "M10,10 Q")]))  # broken path data
    (folder / "README.txt").write_text("not an svg")

    base = load_kanjivg(str(tmp_path))  # the parent folder works too: its kanji/ subfolder is used
    assert len(base.sketches) == 2 and sum(base.skipped.values()) == 3
    assert base.skipped["invalid XML"] == 1
    one, two = base.sketches
    np.testing.assert_allclose(one.points[[0, -1], :2], [[11, 54.25], [96.88, 50]])
    assert two.num_strokes == 2
    first, second = two.strokes()
    np.testing.assert_allclose(first[[0, -1]], [[20, 30], [90, 30]])
    np.testing.assert_allclose(second[[0, -1]], [[10, 80], [100, 80]])

    assert len(load_kanjivg(str(folder), variants=True).sketches) == 3
    with pytest.raises(UserError, match="not a folder"):
        load_kanjivg(str(tmp_path / "nothing"))


def test_builtin_kanjivg_package():
    folder = builtin_kanji_dir()
    assert (folder / "04e00.svg").is_file()
    ichi = parse_kanji_svg((folder / "04e00.svg").read_bytes())  # 一: one horizontal stroke
    assert ichi.num_strokes == 1
    np.testing.assert_allclose(ichi.points[[0, -1], :2], [[11, 54.25], [96.88, 50]], atol=1e-4)
    assert parse_kanji_svg((folder / "04e09.svg").read_bytes()).num_strokes == 3  # 三
    result = load_kanjivg(max_items=5, seed=0)
    assert len(result.sketches) == 5 and not result.skipped
    assert all(
        np.isfinite(s.points).all() and 0 <= s.points[:, :2].min() and s.points[:, :2].max() <= 109
        for s in result.sketches
    )


class _NotData:
    pass


def test_vmnist_unpacked_layout(tmp_path):
    for digit in ("0", "1"):
        (tmp_path / digit / "train").mkdir(parents=True)
    with_time = {"word": "0", "drawing": [[[1, 5, 9], [2, 2, 8], [0, 10, 20]], [[0, 3], [9, 9], [30, 40]]]}
    no_time = {"drawing": [[[4, 4], [0, 20]]]}
    arrays = {"drawing": [np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 6.0]])]}
    (tmp_path / "0" / "train" / "sketch_0").write_bytes(pickle.dumps(with_time, protocol=2))
    (tmp_path / "0" / "train" / "sketch_1").write_bytes(pickle.dumps(arrays, protocol=2))
    (tmp_path / "0" / "train" / "sketch_2").write_bytes(pickle.dumps(arrays, protocol=5))
    (tmp_path / "1" / "train" / "sketch_0.pkl").write_bytes(pickle.dumps(no_time))
    (tmp_path / "1" / "train" / "sketch_1").write_bytes(pickle.dumps(no_time["drawing"]))  # bare drawing list
    (tmp_path / "1" / "train" / "sketch_2").write_bytes(b"garbage, not a pickle")
    (tmp_path / "1" / "train" / "sketch_3").write_bytes(pickle.dumps({"drawing": _NotData()}))  # needs a class
    (tmp_path / "1" / "train" / "sketch_4").write_bytes(pickle.dumps({"drawing": []}))

    result = load_vmnist(str(tmp_path))
    assert len(result.sketches) == 5
    assert result.skipped["not a readable pickle"] == 2 and sum(result.skipped.values()) == 3
    # VMNIST's y grows upwards: sparsedm's (y down) is its negation
    np.testing.assert_array_equal(result.sketches[0].points[:, :2], [[1, -2], [5, -2], [9, -8], [0, -9], [3, -9]])
    for from_arrays in result.sketches[1:3]:  # numpy arrays, pickled the old (protocol 2) and new (5) way
        np.testing.assert_array_equal(from_arrays.points[:, :2], [[0, -5], [1, -5], [2, -6]])
    with pytest.raises(UserError, match="not a folder"):
        load_vmnist(str(tmp_path / "missing"))


class _OpensAFile:
    """Unpickling it calls open(marker, "w"): code a downloaded file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_sketch_rnn_npz_carrying_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "marker"
    np.savez(tmp_path / "cat.npz", train=_object_array([np.zeros((2, 3), dtype=np.int16), _OpensAFile(marker)]))
    with pytest.raises(UserError, match="refusing to load .*open"):
        load_quickdraw(str(tmp_path / "cat.npz"), [])
    assert not marker.exists()
    np.load(tmp_path / "cat.npz", allow_pickle=True)["train"]  # the old way runs it
    assert marker.exists()


def _old_kanji_svg(paths):
    """A KanjiVG SVG of the releases before 2012: stroke paths in drawing order, without ids."""
    body = "\n".join(f'<path d="{d}"/>' for d in paths)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="109" height="109" viewBox="0 0 109 109">
<g id="HelperGrid"><line x1="0.5" y1="72.51" x2="108.5" y2="72.51"/></g>
<g id="StrokePaths" style="fill:none;stroke:#404040;stroke-width:3;">
{body}
</g>
</svg>"""


def test_kanjivg_releases_before_2012_read_their_four_digit_base_characters(tmp_path):
    folder = tmp_path / "SVG"  # the old releases' folder
    folder.mkdir()
    (folder / "4e00.svg").write_text(_old_kanji_svg(["M11,54.25c3.19,0.62,6.25,0.75,9.73,0.5L96.88,50"]))
    (folder / "4e8c.svg").write_text(_old_kanji_svg(["M20,30L90,30", "M10,80L100,80"]))
    (folder / "2008a.svg").write_text(_old_kanji_svg(["M10,10L50,50"]))  # above U+FFFF: five digits
    (folder / "4e00-Kaisho.svg").write_text(_old_kanji_svg(["M10,50L90,50"]))
    result = load_kanjivg(str(folder))
    assert len(result.sketches) == 3 and not result.skipped
    assert result.sketches[1].num_strokes == 1  # sorted: 2008a, 4e00, 4e8c
    np.testing.assert_allclose(result.sketches[2].strokes()[0][[0, -1]], [[20, 30], [90, 30]])
    assert len(load_kanjivg(str(tmp_path), variants=True).sketches) == 4  # the parent of SVG/ works too


def test_kanjivg_folders_without_base_characters_or_with_two_releases_are_refused_saying_so(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("one.svg", "kanji_4e00.svg", "4e00_old.svg"):
        (other / name).write_text(_old_kanji_svg(["M1,1L5,5"]))
    with pytest.raises(UserError, match=r"holds 3 \.svg files but none named like a KanjiVG base character"):
        load_kanjivg(str(other))
    assert len(load_kanjivg(str(other), variants=True).sketches) == 3
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "4e00.svg").write_text(_old_kanji_svg(["M11,54L96,50"]))
    (mixed / "04e00.svg").write_text(_kanji_svg("04e00", [(1, "M11,54L96,50")]))
    with pytest.raises(UserError, match=r"1 character\(s\) under two names \(e\.g\. 04e00\.svg and 4e00\.svg\)"):
        load_kanjivg(str(mixed))


def test_quickdraw_raw_and_simplified_of_one_category_are_chosen_by_data_format(tmp_path):
    _write_ndjson(tmp_path / "full_raw_cat.ndjson", RAW)
    _write_ndjson(tmp_path / "full_simplified_cat.ndjson", SIMPLIFIED)
    with pytest.raises(
        UserError,
        match=r"'cat' has 2 files .*full_raw_cat\.ndjson \(raw\), full_simplified_cat\.ndjson \(simplified\); "
        r"set data\.format=raw or data\.format=simplified \(ChiroDiff trained on raw\)",
    ):
        find_quickdraw_files(str(tmp_path), ["cat"])
    assert [f.name for f in find_quickdraw_files(str(tmp_path), ["cat"], "raw")] == ["full_raw_cat.ndjson"]
    assert len(load_quickdraw(str(tmp_path), ["cat"], "simplified").sketches) == 3
    assert StrokeDataConfig(name="quickdraw", path=str(tmp_path), format="raw").format == "raw"
    (tmp_path / "full_raw_cat.ndjson").unlink()
    with pytest.raises(
        UserError, match=r"no raw QuickDraw files in .*, only full_simplified_cat.ndjson \(simplified\)"
    ):
        find_quickdraw_files(str(tmp_path), ["cat"], "raw")
    with pytest.raises(
        UserError, match="full_simplified_cat.ndjson, which holds simplified drawings, but data.format=raw"
    ):
        find_quickdraw_files(str(tmp_path / "full_simplified_cat.ndjson"), [], "raw")
    _write_ndjson(tmp_path / "cat.ndjson", SIMPLIFIED)  # the same kind twice: no data.format can choose
    with pytest.raises(UserError, match=r"\(simplified\), full_simplified_cat.ndjson \(simplified\); move all but one"):
        find_quickdraw_files(str(tmp_path), ["cat"], "simplified")
