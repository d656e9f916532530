import numpy as np
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_pretrain.data.mixing import MixingSchedule, mix_blocks, normalize_weights

weights_strategy = st.lists(st.floats(min_value=0.01, max_value=100.0), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(weights=weights_strategy, n=st.integers(0, 3000), cut=st.integers(0, 3000))
def test_counts_match_the_schedule_and_stay_within_the_bound_of_the_weights(weights, n, cut):
    schedule = MixingSchedule(weights)
    sources = schedule.sources(0, n)
    assert np.array_equal(np.bincount(sources, minlength=len(weights)), schedule.counts(n))
    # Every prefix is within 1/2 + w_j·S/2 blocks of its share (a random draw would be off by ~sqrt(n)).
    bound = 0.5 + schedule.weights * len(weights) / 2 + 1e-9
    running = np.zeros(len(weights))
    for i, source in enumerate(sources):
        running[source] += 1
        assert (np.abs(running - schedule.weights * (i + 1)) <= bound).all()
    cut = min(cut, n)  # restarting anywhere gives the same blocks: the basis of resume without replay
    assert np.array_equal(np.concatenate([schedule.sources(0, cut), schedule.sources(cut, n)]), sources)


def test_sixty_thirty_ten_is_exact_every_ten_blocks():
    schedule = MixingSchedule([60, 30, 10])
    for n in (10, 1000, 123_450):
        assert schedule.counts(n).tolist() == [n * 6 // 10, n * 3 // 10, n // 10]
    assert schedule.counts(10**9).sum() == 10**9  # closed form: no need to generate a billion entries


@pytest.mark.parametrize(
    "weights, message",
    [
        ([], "at least one source"),
        ([1, 0], "weight of 'b' must be a positive number, got 0"),
        ([1, -2], "got -2"),
        ([float("nan")], "got nan"),
        (["heavy"], "must be a number"),
        ([1, float("inf")], "got inf"),
    ],
)
def test_bad_weights_are_errors_naming_the_source(weights, message):
    with pytest.raises(ValueError, match=message):
        normalize_weights(weights, ["a", "b"][: len(weights)] or None)


def _blocks(source: int, count: int, block_size: int = 4) -> Dataset:
    rows = [[source * 1000 + i] * block_size for i in range(count)]
    return Dataset.from_dict({"input_ids": rows, "document_lengths": [[block_size]] * count})


def test_mixed_blocks_hold_the_weights_within_tolerance_and_repeat_nothing():
    blocks = [_blocks(0, 700), _blocks(1, 400), _blocks(2, 90)]
    mixed, info = mix_blocks(blocks, [0.6, 0.3, 0.1], ["web", "books", "code"], seed=3)
    n = len(mixed)
    assert 900 <= n < 910  # the 10% source runs out first: 90 / 0.1, give or take a block
    ids = [row[0] for row in mixed["input_ids"]]
    assert len(set(ids)) == n  # nothing repeated
    source = np.asarray(mixed["source_id"])
    assert np.array_equal(source, MixingSchedule([0.6, 0.3, 0.1]).sources(0, n))  # stored in schedule order
    assert np.array_equal(np.asarray(ids) // 1000, source)  # every block comes from the source its id says
    for window in range(100, n + 1, 100):  # within a block of the target at every multiple of 100 blocks
        fractions = np.bincount(source[:window], minlength=3) / window
        assert np.abs(fractions - [0.6, 0.3, 0.1]).max() <= 1 / window
    assert info["code"] == {"blocks_available": 90, "blocks_used": 90, "passes": 1}
    assert ids[:10] != sorted(ids[:10])  # blocks are shuffled within a source


def test_upsampling_a_small_source_is_counted_in_passes():
    mixed, info = mix_blocks([_blocks(0, 50), _blocks(1, 5)], [1, 1], ["big", "small"], num_blocks=40)
    assert info["small"] == {"blocks_available": 5, "blocks_used": 20, "passes": 4}
    small = [row[0] for row, s in zip(mixed["input_ids"], mixed["source_id"]) if s == 1]
    assert sorted(small) == sorted(list(range(1000, 1005)) * 4)  # each block once per pass


def test_a_source_smaller_than_one_block_is_an_error():
    with pytest.raises(ValueError, match="Source 'tiny' has no block"):
        mix_blocks([_blocks(0, 3), _blocks(1, 0)], [1, 1], ["big", "tiny"])
