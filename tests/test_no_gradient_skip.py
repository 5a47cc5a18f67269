"""When ``reflect_<mode>`` may skip the actor update of a step whose advantages are all zero (``trainer.py``'s rule),
and that the rule's premise holds in verl's own loss: with zero advantages, every term left is the KL or entropy term.

The skip itself runs through ``main_ppo`` in ``benchmarks/bench_trainer_step.py --skip`` (it asserts every no-gradient
step was skipped) and, where the actor has moved under a KL loss, the update that still runs in ``test_trainer.py``.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.workers.config import ActorConfig

from verl_reflect.trainer import _ADVANTAGE_LINEAR_LOSSES, no_gradient_skip_blocker


def actor(**overrides):
    config = {"policy_loss": {"loss_mode": "vanilla"}, "entropy_coeff": 0, "use_kl_loss": False, "kl_loss_coef": 0.001}
    return OmegaConf.create({**config, **overrides})


def blocker(config, *, distillation=False, actor_is_reference=False):
    return no_gradient_skip_blocker(config, distillation=distillation, actor_is_reference=actor_is_reference)


def test_skip_is_exact_without_kl_entropy_or_distillation():
    assert blocker(actor()) is None
    assert blocker(actor(use_kl_loss=True, kl_loss_coef=0)) is None  # a KL loss with weight 0 is no term


def test_kl_loss_blocks_the_skip_only_once_the_actor_has_left_the_reference():
    assert blocker(actor(use_kl_loss=True), actor_is_reference=True) is None
    assert "KL" in blocker(actor(use_kl_loss=True), actor_is_reference=False)


@pytest.mark.parametrize(
    ("config", "distillation", "reason"),
    [
        (actor(entropy_coeff=0.01), False, "entropy"),
        (actor(), True, "distillation"),
        (actor(policy_loss={"loss_mode": "dro"}), False, "loss_mode=dro"),
    ],
)
def test_terms_outside_the_advantage_block_the_skip(config, distillation, reason):
    assert reason in blocker(config, distillation=distillation, actor_is_reference=True)


@pytest.mark.parametrize("loss_mode", _ADVANTAGE_LINEAR_LOSSES)
def test_the_policy_losses_the_rule_trusts_have_no_gradient_at_zero_advantage(loss_mode):
    """The rule's premise, checked on verl's own functions: zero advantage, zero loss and zero gradient, however far
    the policy is from the one that sampled."""
    torch.manual_seed(0)
    log_prob = torch.randn(4, 6, requires_grad=True)
    old_log_prob = torch.randn(4, 6)
    # verl's defaults (clip ratios, ...); the loss function is picked by name below
    config = ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=1, rollout_n=1)
    loss, _ = get_policy_loss_fn(loss_mode)(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=torch.zeros(4, 6),
        response_mask=torch.ones(4, 6),
        loss_agg_mode="token-mean",
        config=config,
    )
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(log_prob.grad) == 0
