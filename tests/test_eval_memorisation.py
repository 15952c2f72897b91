"""The memorisation figures: the near-copy ratio test on made-up points with known answers, the reference caches,
and the statistics of kept features against the streamed ones."""

import numpy as np
import pytest
import torch
from fid_stub import PooledPixels

from sparsedm.eval.fid import cached_array, compute_statistics, extract_features, fid_from_statistics, statistics_of
from sparsedm.eval.memorisation import near_copies, near_copy_share, nearest_two, pixels

TRAIN = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])


def test_the_ratio_test_counts_what_is_much_closer_to_one_item_than_to_the_next():
    samples = np.array(
        [
            [0.5, 0.0],  # d1 0.5, d2 9.5: a copy
            [2.0, 0.0],  # d1 2, d2 8: 2 < 8/3, a copy
            [3.0, 0.0],  # d1 3, d2 7: 3 > 7/3, new
            [5.0, 0.0],  # halfway: d1 = d2, new
        ]
    )
    np.testing.assert_allclose(nearest_two(samples, TRAIN), [[0.5, 9.5], [2, 8], [3, 7], [5, 5]])
    assert near_copies(samples, TRAIN).tolist() == [True, True, False, False]
    assert near_copy_share(samples, TRAIN) == 0.5
    # the threshold is the rule's: at 1/2 the third sample (3 < 3.5) counts too
    assert near_copy_share(samples, TRAIN, ratio=0.5) == 0.75


def test_an_exact_copy_of_a_duplicated_training_item_ties_and_is_not_counted():
    train = np.vstack([TRAIN, TRAIN[:1]])
    assert near_copies(np.array([[0.0, 0.0], [10.0, 0.1]]), train).tolist() == [False, True]


def test_with_groups_the_second_nearest_is_taken_outside_the_nearest_items_group():
    # a drawing and its recolouring (group a), and another drawing (group b)
    train, groups = np.array([[0.0, 0.0], [0.2, 0.0], [10.0, 0.0]]), ["a", "a", "b"]
    copy = np.array([[0.1, 0.0]])  # halfway between the two colourings: ties without the groups
    np.testing.assert_allclose(nearest_two(copy, train), [[0.1, 0.1]])
    assert near_copies(copy, train).tolist() == [False]
    np.testing.assert_allclose(nearest_two(copy, train, groups), [[0.1, 9.9]])
    assert near_copies(copy, train, groups).tolist() == [True]
    # a new item between the drawings stays new: its second nearest is the other drawing
    assert near_copies(np.array([[5.0, 0.0]]), train, groups).tolist() == [False]
    with pytest.raises(ValueError, match="2 groups for 3"):
        nearest_two(copy, train, ["a", "b"])
    with pytest.raises(ValueError, match="at least 2 groups"):
        nearest_two(copy, train, ["a", "a", "a"])


def test_grouped_distances_match_a_brute_force_search_on_random_points():
    rng = np.random.default_rng(1)
    query, reference = rng.normal(size=(29, 6)), rng.normal(size=(120, 6))
    groups = [f"g{i}" for i in rng.integers(0, 15, size=120)]
    found = nearest_two(query, reference, groups, chunk=8)
    for row, (d1, d2) in zip(query, found):
        distances = np.linalg.norm(reference - row, axis=1)
        nearest = int(np.argmin(distances))
        others = [d for d, g in zip(distances, groups) if g != groups[nearest]]
        assert d1 == pytest.approx(distances[nearest], rel=1e-9) and d2 == pytest.approx(min(others), rel=1e-9)


def test_distances_match_a_brute_force_search_on_random_points():
    rng = np.random.default_rng(0)
    query, reference = rng.normal(size=(37, 20)), rng.normal(size=(300, 20))
    brute = np.sort(np.linalg.norm(query[:, None] - reference[None], axis=2), axis=1)[:, :2]
    np.testing.assert_allclose(nearest_two(query, reference, chunk=8), brute, rtol=1e-9)


def test_pixels_flatten_images_to_unit_floats():
    images = np.full((2, 3, 3, 1), 255, dtype=np.uint8)
    images[1] = 0
    flat = pixels(images)
    assert flat.shape == (2, 9) and flat[0].tolist() == [1.0] * 9 and flat[1].tolist() == [0.0] * 9


def test_kept_features_give_the_streamed_statistics():
    images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = list(images.split(7))
    kept = extract_features(batches, batch_size=5, progress=False, extractor=PooledPixels())
    streamed = compute_statistics(batches, batch_size=5, progress=False, extractor=PooledPixels())
    assert kept.shape == (40, PooledPixels.num_features)
    ours = statistics_of(kept)
    np.testing.assert_allclose(ours.mu, streamed.mu, rtol=1e-12)
    np.testing.assert_allclose(ours.sigma, streamed.sigma, rtol=1e-9, atol=1e-9)
    assert fid_from_statistics(ours, streamed) == pytest.approx(0.0, abs=1e-6)


def test_a_cached_array_is_computed_once_and_a_damaged_cache_is_recomputed(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float32).reshape(4, 3)

    first = cached_array("kanji/train", "features", compute, tmp_path)
    again = cached_array("kanji/train", "features", compute, tmp_path)
    assert len(calls) == 1 and np.array_equal(first, again)
    other = cached_array("kanji/val", "features", compute, tmp_path)  # another key, another file
    assert len(calls) == 2 and np.array_equal(other, first)
    (path,) = [p for p in tmp_path.iterdir() if p.name.startswith("kanji_train")]
    path.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="recomputing"):
        cached_array("kanji/train", "features", compute, tmp_path)
    assert len(calls) == 3


def test_the_positive_control_jitters_training_sketches_that_the_pixel_test_then_catches():
    from tiny_models import tiny_chirodiff

    from sparsedm.config import load_config
    from sparsedm.tasks import build_task

    task = build_task(load_config("configs/chirodiff_kanjivg_cpu.yaml", tiny_chirodiff()))
    train = task.reference_images("train")
    copies = task.near_copies(40)
    assert copies.shape == (40, *train.shape[1:]) and copies.dtype == np.uint8
    assert not np.array_equal(copies, train[:40])  # moved, not the items themselves
    assert np.array_equal(copies, task.near_copies(40))  # the same jitter every time
    # the pixel test sees every copy moved by a fraction of a pixel, fewer as the jitter grows: the control
    # measures what the test can see
    shares = []
    for jitter in (0.0, 0.002, 0.005, 0.01):
        task.JITTER = jitter
        shares.append(near_copy_share(pixels(task.near_copies(40)), pixels(train)))
    assert shares[0] == shares[1] == 1.0 and shares[1] > shares[2] > shares[3]


def test_the_memorisation_table_states_the_positive_control_beside_the_baseline(tmp_path):
    import json

    from test_sweep_curves import curve_run

    from sparsedm.experiments.curves import memorisation_table, read_curve_records

    curve_run(tmp_path, "dense-seed0", "dense", [60.0, 50.0, 40.0], 0, near_copy=0.1)
    for path in (tmp_path / "runs" / "dense-seed0").rglob("*.json"):
        record = json.loads(path.read_text())
        if "near_copy" in record:
            record.update(near_copy_control=0.9, near_copy_control_pixels=0.3, near_copy_control_size=200)
            record.update(kid=record["fid"] / 1000, kid_train=record["fid_train"] / 1000)
            path.write_text(json.dumps({**record, "near_copy_control_kind": "the reconstructions"}))
    table = memorisation_table(read_curve_records(tmp_path))
    assert "| 4000 | Dense | – | – | 40.00 | 39.00 | 0.0400 | 0.0390 | 40.0% | 5.0% |" in table
    assert "Baseline: 1.0% (Inception) and 2.0% (pixels)" in table
    assert (
        "Positive control: of 200 near copies by construction (the reconstructions), the test detects 90.0% in "
        "Inception features and 30.0% in pixels" in table
    )
