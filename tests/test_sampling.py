from collections import Counter

import numpy as np
import pytest

from flexpaft.errors import FlexpaftError
from flexpaft.training.sampling import (
    PromptBatchSampler,
    example_templates,
    global_batches,
    group_by_length,
    plan_epoch,
    shard,
)


def test_each_template_gets_its_share():
    plan = plan_epoch(20000, 8, epoch=0, seed=1)
    counts = np.bincount(plan.templates, minlength=8) / 20000
    # Binomial sd of a share is sqrt(p(1-p)/n) ~ 0.0023; 5 sd tolerance.
    assert np.all(np.abs(counts - 1 / 8) < 0.012)
    assert sorted(plan.examples.tolist()) == list(range(20000))


def test_new_draw_every_epoch_and_reproducible():
    a0, a1 = plan_epoch(500, 10, 0, seed=5), plan_epoch(500, 10, 1, seed=5)
    # Same example, other epoch: the template is drawn again (most examples change template).
    t0 = dict(zip(a0.examples.tolist(), a0.templates.tolist()))
    t1 = dict(zip(a1.examples.tolist(), a1.templates.tolist()))
    changed = sum(t0[i] != t1[i] for i in range(500))
    assert changed > 0.8 * 500  # expected 90% with 10 templates
    b0 = plan_epoch(500, 10, 0, seed=5)
    assert np.array_equal(a0.templates, b0.templates) and np.array_equal(a0.examples, b0.examples)
    assert not np.array_equal(plan_epoch(500, 10, 0, seed=6).templates, a0.templates)


@pytest.mark.parametrize("own,rate", [(None, 0.0), (2, 0.5)])
def test_example_templates_is_the_plans_draw_indexed_by_example(own, rate):
    for epoch in (0, 3):
        plan = plan_epoch(300, 7, epoch, seed=4, own=own, own_rate=rate)
        by_example = example_templates(300, 7, epoch, seed=4, own=own, own_rate=rate)
        assert by_example[plan.examples].tolist() == plan.templates.tolist()


def test_steps_mode_keeps_a_template_for_k_steps():
    k, gb = 3, 4
    plan = plan_epoch(100, 50, 0, seed=0, mode="steps", k_steps=k, global_batch=gb)
    blocks = [plan.templates[i : i + k * gb] for i in range(0, 100, k * gb)]
    assert all(len(set(b.tolist())) == 1 for b in blocks)
    assert len({int(b[0]) for b in blocks}) > 1


def test_rank_streams_are_disjoint_and_cover_the_epoch():
    plan = plan_epoch(103, 7, 0, seed=2)
    world, bs = 4, 5
    per_rank = [shard(plan, r, world, bs) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # DDP needs equal batch counts
    positions = [pair for r in per_rank for batch in r for pair in batch]
    # Every (example, template) pair of the global stream is used; only the wrap-around repeats.
    assert set(positions) == set(zip(plan.examples.tolist(), plan.templates.tolist()))
    assert len(positions) - 103 < world * bs
    first = [set(map(tuple, r[0])) for r in per_rank]
    for i in range(world):
        for j in range(i + 1, world):
            assert not first[i] & first[j]


def test_world_size_does_not_change_the_stream():
    s1 = PromptBatchSampler(64, 9, 4, seed=3, world_size=1)
    s2 = [PromptBatchSampler(64, 9, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    one = [p for b in s1.batches(0) for p in b]
    two = [p for b in zip(*(s.batches(0) for s in s2)) for batch in b for p in batch]
    assert one == two


def test_group_by_length_keeps_pairs_and_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 500, size=256)
    plan = plan_epoch(256, 5, 0, seed=0)
    grouped = group_by_length(plan, lengths, batch_size=8, window_batches=32, seed=0, epoch=0)
    assert Counter(zip(grouped.examples.tolist(), grouped.templates.tolist())) == Counter(
        zip(plan.examples.tolist(), plan.templates.tolist())
    )

    def padded(p):
        return sum(lengths[p.examples[i : i + 8]].max() * 8 for i in range(0, 256, 8))

    assert padded(grouped) < 0.75 * padded(plan)


def test_skip_resumes_mid_epoch():
    s = PromptBatchSampler(40, 3, 4, seed=0)
    full = list(s)
    s.set_epoch(0, skip=4)
    assert list(s) == full[4:]


def test_bad_arguments():
    with pytest.raises(FlexpaftError, match="no training templates"):
        plan_epoch(10, 0, 0, 0)
    with pytest.raises(FlexpaftError, match="unknown prompt sampling mode"):
        plan_epoch(10, 2, 0, 0, mode="batch")


@pytest.mark.parametrize("world, skip", [(1, 0), (2, 0), (3, 2), (4, 1)])
def test_accelerate_sharding_of_the_global_stream_is_our_rank_shard(world, skip):
    """accelerate.prepare shards the DataLoader's batch sampler with BatchSamplerShard: over
    GlobalStream that must give each rank exactly its own batches, resume position included."""
    from accelerate.data_loader import BatchSamplerShard

    lengths = np.random.default_rng(1).integers(5, 300, size=53)
    for r in range(world):
        ours = PromptBatchSampler(53, 4, 3, seed=7, rank=r, world_size=world, lengths=lengths)
        ours.set_epoch(1, skip=skip)
        expected = list(ours)
        if world == 1:
            got = list(ours.stream())  # one process: accelerate does not wrap the sampler
        else:
            got = list(BatchSamplerShard(ours.stream(), num_processes=world, process_index=r))
        assert got == expected and len(got) == len(ours)
        assert len(ours.stream()) == len(ours) * world
    # The ranks' batches together are the one-process stream (the world size changes nothing).
    one = PromptBatchSampler(53, 4, 3, seed=7, lengths=lengths, world_size=1)
    assert [p for b in one.batches(1) for p in b][:30] == [
        p for b in global_batches(one.plan(1), world, 3) for p in b
    ][:30]
