"""reflect_grpo: hand-computed values, agreement with verl's grpo where they must agree, verl's compute_advantage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from verl import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

import verl_reflect.register  # noqa: F401
from verl_reflect.advantage import compute_reflect_grpo_advantage

EPS = 1e-6


def outcome_rewards(scores: list[float], length: int) -> torch.Tensor:
    """Outcome reward on the last token, as the agent loop's reward_score lands in rm_scores."""
    rewards = torch.zeros(len(scores), length)
    rewards[:, -1] = torch.tensor(scores)
    return rewards


# Rows: uid, reward, reflection span [start, end) in a response of 6 tokens (None: solved first try).
ROWS = [
    ("a", 1.0, None),  # first-try success: no advantage, not in the baseline
    ("a", 1.0, (1, 3)),
    ("a", 0.0, (2, 5)),
    ("a", 1.0, (0, 2)),
    ("b", 1.0, (1, 4)),  # the only reflecting row of its group: no baseline, zero advantage
    ("b", 0.0, None),
    ("c", 1.0, (0, 6)),  # all reflecting rows equally rewarded: zero advantage
    ("c", 1.0, (3, 4)),
]
LENGTH = 6


def batch():
    mask = torch.zeros(len(ROWS), LENGTH, dtype=torch.int64)
    for i, (_, _, span) in enumerate(ROWS):
        if span:
            mask[i, span[0] : span[1]] = 1
    index = np.array([uid for uid, _, _ in ROWS], dtype=object)
    return outcome_rewards([r for _, r, _ in ROWS], LENGTH), mask, index


def expected_scalars(normalise: bool) -> list[float]:
    # Group a's reflecting rewards are [1, 0, 1]: mean 2/3, unbiased std sqrt(1/3).
    mean, std = 2 / 3, math.sqrt(1 / 3)
    a = [0.0, 1 - mean, 0 - mean, 1 - mean]
    if normalise:
        a = [x / (std + EPS) for x in a]
    return a + [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("normalise", [True, False])
def test_hand_computed_values(normalise):
    rewards, mask, index = batch()
    advantages, returns = compute_reflect_grpo_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=normalise)

    expected = torch.tensor(expected_scalars(normalise)).unsqueeze(-1) * mask
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, advantages)
    # Zero outside the reflection span, always.
    assert torch.all(advantages[mask == 0] == 0)


def test_config_norm_flag_wins_as_verl_passes_only_config():
    rewards, mask, index = batch()
    advantages, _ = compute_reflect_grpo_advantage(
        rewards, mask, index, config=AlgoConfig(norm_adv_by_std_in_grpo=False)
    )
    torch.testing.assert_close(advantages, torch.tensor(expected_scalars(False)).unsqueeze(-1) * mask)


def test_equals_verl_grpo_when_every_row_reflects():
    generator = torch.Generator().manual_seed(0)
    groups, group_size, length = 64, 8, 32
    scores = torch.randint(0, 2, (groups * group_size,), generator=generator).float()
    rewards = outcome_rewards(scores.tolist(), length)
    starts = torch.randint(0, length - 1, (groups * group_size,), generator=generator)
    positions = torch.arange(length)
    mask = ((positions >= starts[:, None]) & (positions < starts[:, None] + 5)).long()
    index = np.array([f"uid-{i // group_size}" for i in range(groups * group_size)], dtype=object)

    ours, _ = compute_reflect_grpo_advantage(rewards, mask, index)
    verls, _ = compute_grpo_outcome_advantage(rewards, mask, index)
    torch.testing.assert_close(ours, verls)


def test_registered_and_driven_by_verl_compute_advantage():
    assert get_adv_estimator_fn("reflect_grpo") is compute_reflect_grpo_advantage
    rewards, mask, index = batch()
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask},
        non_tensors={"uid": index},
    )
    for normalise in (True, False):
        out = compute_advantage(
            data, adv_estimator="reflect_grpo", config=AlgoConfig(norm_adv_by_std_in_grpo=normalise)
        )
        expected = torch.tensor(expected_scalars(normalise)).unsqueeze(-1) * mask
        torch.testing.assert_close(out.batch["advantages"], expected)
        torch.testing.assert_close(out.batch["returns"], expected)


def test_importing_registration_twice_is_harmless():
    import importlib

    import verl_reflect.register as register

    importlib.reload(register)
    assert get_adv_estimator_fn("reflect_grpo") is compute_reflect_grpo_advantage
