"""The ``reflect_grpo`` advantage estimator: GRPO on the reflection span only (Bensal et al., 2025)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import register_adv_est
from verl.utils.groupwise import as_torch_index


@register_adv_est("reflect_grpo")
def compute_reflect_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Optional[AlgoConfig] = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantage over the rows of a group that reflected, applied to reflection tokens only.

    The ``reflect_retry`` agent loop sets ``response_mask`` to 1 exactly on reflection tokens, so the
    mask *is* the reflection span, and a row with an all-zero mask solved the task on its first try.

    Args:
        token_level_rewards: `(torch.Tensor)` shape (bs, response_length); the row's outcome reward
            (1.0 iff the final retry is correct) is its sum.
        response_mask: `(torch.Tensor)` shape (bs, response_length); 1 on reflection tokens.
        index: `(np.ndarray)` shape (bs,); group id (uid) per row: the rollouts of one prompt.
        epsilon: added to the std so a group with equal rewards divides by epsilon, not zero.
        norm_adv_by_std_in_grpo: divide by the group std (GRPO) or not (Dr.GRPO). verl passes
            registered estimators only ``config``, so ``config.norm_adv_by_std_in_grpo`` wins when given.
        config: the ``algorithm`` config section.

    For a row i in group g, with R_g the rows of g that reflected (any mask token set) and r_i its reward:

        A_i = (r_i - mean_{j in R_g} r_j) / (std_{j in R_g} r_j + epsilon)   if i in R_g and |R_g| >= 2
        A_i = 0                                                              otherwise
        advantages[i, t] = A_i * response_mask[i, t]

    std is the unbiased std, as in verl's ``grpo``. Rows that did not reflect neither get advantage
    nor move the baseline; a lone reflecting row has no baseline and gets zero.

    Returns:
        advantages: `(torch.Tensor)` shape (bs, response_length)
        returns: `(torch.Tensor)` shape (bs, response_length), equal to advantages (outcome-only)
    """
    if config is not None:
        norm_adv_by_std_in_grpo = config.get("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)  # (bs,)
        reflected = (response_mask > 0).any(dim=-1).to(scores.dtype)  # (bs,)
        group = as_torch_index(index, device=scores.device)  # (bs,) in 0..G-1
        num_groups = int(group.max()) + 1 if group.numel() else 0

        def group_sum(values: torch.Tensor) -> torch.Tensor:  # (bs,) -> (G,)
            return torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add_(0, group, values)

        count = group_sum(reflected)  # (G,) reflecting rows per group
        mean = group_sum(scores * reflected) / count.clamp(min=1)
        centered = (scores - mean[group]) * reflected  # (bs,)
        std = (group_sum(centered**2) / (count - 1).clamp(min=1)).sqrt()
        scalar = centered / (std[group] + epsilon) if norm_adv_by_std_in_grpo else centered
        scalar = scalar * (count[group] >= 2)  # (bs,)
        advantages = scalar.unsqueeze(-1) * response_mask  # (bs, response_length)
    return advantages, advantages


@register_adv_est("reflect_grpo_control")
def compute_reflect_grpo_control_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Optional[AlgoConfig] = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reflect_grpo`` with the reflection reward taken away: the control arm of the learning test and the README.

    The rows' outcome rewards are shuffled across the batch before ``reflect_grpo`` runs, so the update has the
    same size, the same mask and the same share of rows with gradient as the real run, but a reflection's
    advantage no longer says whether its retry succeeded. Whatever this arm learns is drift, not the method.
    The permutation is drawn from ``algorithm.control_seed`` (default 0) and the batch's rewards, so a run is
    reproducible.

    Args and returns: as ``compute_reflect_grpo_advantage``; ``token_level_rewards`` `(bs, response_length)`.
    """
    seed = int(config.get("control_seed", 0)) if config is not None else 0
    scores = token_level_rewards.sum(dim=-1)  # (bs,)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + int(scores.sum().item() * 1000) + len(scores))
    permutation = torch.randperm(len(scores), generator=generator)  # (bs,)
    # One reward per row, on its last token: the estimator only reads the row sums.
    shuffled = torch.zeros_like(token_level_rewards)
    shuffled[:, -1] = scores[permutation]
    return compute_reflect_grpo_advantage(
        shuffled, response_mask, index, epsilon, norm_adv_by_std_in_grpo, config=config, **kwargs
    )
