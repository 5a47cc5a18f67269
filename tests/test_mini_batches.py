"""``ReflectRetryMixin._spread_trained_rows``: the order that gives every mini-batch of a step a trained token (verl's
token-mean loss divides by the mini-batch's trained-token count), checked on the split verl's workers make."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from verl_reflect import trainer as trainer_mod


class _Batch:
    def __init__(self, keys):
        self.keys, self.partition_id = list(keys), "train"

    def reorder(self, order):
        self.keys = [self.keys[i] for i in order]


def _spread(monkeypatch, trained: list[bool], dp: int, mini_batch_prompts: int, n: int = 4, shuffle=False):
    masks = {f"k{i}": torch.tensor([0, 1, 1] if t else [0, 0, 0]) for i, t in enumerate(trained)}
    monkeypatch.setattr(
        trainer_mod.tq,
        "kv_batch_get",
        lambda keys, partition_id, select_fields: {"response_mask": [masks[k] for k in keys]},
    )
    actor = {"ppo_mini_batch_size": mini_batch_prompts, "shuffle": shuffle}
    config = OmegaConf.create({"actor_rollout_ref": {"actor": actor, "rollout": {"n": n}}})
    fake = SimpleNamespace(config=config, actor_rollout_wg=SimpleNamespace(_dispatch_info={"actor": list(range(dp))}))
    batch = _Batch(masks)
    before = list(batch.keys)
    left = trainer_mod.ReflectRetryMixin._spread_trained_rows(fake, batch)
    return before, batch.keys, left, masks


def _global_mini_batches(keys: list[str], dp: int, rows_per_mini_batch: int) -> list[list[str]]:
    """verl's split: rank r takes the r-th contiguous share, cut into contiguous slices of rows_per_mini_batch/dp."""
    share, slice_rows = len(keys) // dp, rows_per_mini_batch // dp
    n_mini = share // slice_rows
    return [
        [k for r in range(dp) for k in keys[r * share + j * slice_rows : r * share + (j + 1) * slice_rows]]
        for j in range(n_mini)
    ]


@pytest.mark.parametrize("dp", [1, 2, 4])
@pytest.mark.parametrize("seed", range(20))
def test_every_mini_batch_gets_a_trained_row_when_there_are_enough(monkeypatch, dp, seed):
    rng = random.Random(seed)
    rows, mini_batch_prompts, n = 32, 2, 4  # 4 mini-batches of 8 rows
    trained = [rng.random() < 0.15 for _ in range(rows)]
    before, after, left, masks = _spread(monkeypatch, trained, dp, mini_batch_prompts, n)
    assert sorted(after) == sorted(before)
    share = rows // dp
    for r in range(dp):  # rows never change rank: _balance_batch's partition stands
        assert set(after[r * share : (r + 1) * share]) == set(before[r * share : (r + 1) * share])
    minis = _global_mini_batches(after, dp, mini_batch_prompts * n)
    empty = sum(not any(bool(masks[k].sum()) for k in mini) for mini in minis)
    assert empty == left == max(0, len(minis) - sum(trained))


def test_shuffled_mini_batches_are_left_alone(monkeypatch):
    before, after, left, _ = _spread(monkeypatch, [True] + [False] * 15, 1, 2, shuffle=True)
    assert after == before and left is None
