import pytest

from sparsedm.errors import UserError
from sparsedm.runs.batches import BatchSchedule


def test_a_training_set_smaller_than_a_batch_points_at_the_data_before_the_batch_size():
    """A loader that read 2 of 11,513 files must not be answered with "lower the batch size" alone: following
    that advice trains on 2 items (issue 37, pre-2012 KanjiVG)."""
    with pytest.raises(UserError, match=r"has 2 items, fewer than train.batch_size=8; .*check data.root") as caught:
        BatchSchedule(2, 8, seed=0)
    assert "\n" not in str(caught.value)


def test_batches_depend_only_on_seed_and_step_and_ranks_split_one_global_batch():
    a, b = BatchSchedule(10, 4, seed=3), BatchSchedule(10, 4, seed=3)
    assert [a.indices(s) for s in range(5)] == [b.indices(s) for s in reversed(range(5))][::-1]
    whole = a.indices(3)
    assert sorted(a.indices(3, rank=0, world_size=2) + a.indices(3, rank=1, world_size=2)) == sorted(whole)
    assert len(set(a.indices(0) + a.indices(1))) == 8  # one epoch: no item twice
