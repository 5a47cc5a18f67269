"""verl's v1 PPO trainers with what reflect-retry needs each step, one per verl mode: ``reflect_<mode>``.

Selected by ``trainer.v1.trainer_mode``: ``reflect_sync`` (every recipe's default, through ``_reflect_grpo.yaml``),
``reflect_colocate_async`` or ``reflect_separate_async``. Each is verl's own trainer of that mode (its hooks: when to
abort, sleep, sync and resume the rollout) with ``ReflectRetryMixin`` in front, which adds the same things to all:

- **A step with no reflection token trains nothing, without crashing.** When no row of the batch reflected
  (every row solved on the first try), verl's rollout correction raises (``rollout_corr_helper.py:838``) and
  the token-mean loss would divide by zero. This trainer skips both and skips the actor update: there is
  nothing to learn and no forward/backward pass is spent. verl's means over the empty mask (advantages, entropy,
  ...) are NaN there, and left out of that step's logs.
- **A step in which no row carries gradient skips the actor update where skipping is exact.** Under failure replay
  every row reflects, and a group whose retries all agree gets a zero ``reflect_grpo`` advantage: often the whole
  step. The rule (``no_gradient_skip_blocker``): skip when no masked token has a non-zero advantage and the loss has
  no term outside the advantage, i.e. all of
  (1) a policy loss that is the advantage times a function of the policy (``policy_loss.loss_mode`` ``vanilla``,
  ``gspo`` or ``gpg``, with or without rollout correction's ``bypass_mode``, which is vanilla or REINFORCE): zero
  advantage is then a loss that is zero for every weight, not just a zero gradient here;
  (2) ``entropy_coeff == 0``: an entropy bonus has a gradient whatever the advantage;
  (3) no distillation loss;
  (4) no KL loss (``use_kl_loss`` off or ``kl_loss_coef == 0``), or a KL loss whose gradient is zero because the
  actor still is the reference: no update has run in this process and it did not resume from a checkpoint (the
  KL term ``kl(pi, pi_ref)`` and its gradient are 0 at ``pi = pi_ref``, up to the numerics of two forward passes).
  Once the actor has moved, a zero-advantage step's gradient is the KL pull towards the reference: a real update,
  so it runs, and is counted as ``reflect/update_without_advantage``.
  What a skip leaves out beyond the (zero) gradient: verl would still call the optimizer on the zero gradient, so
  AdamW applies its momentum from earlier steps and its weight decay, and the lr scheduler ticks. None of that is
  learned from this step's data; a skipped step is a step that had no data, the same as a batch verl's
  ``filter_groups`` would have dropped. Counted: ``reflect/skipped_update`` (any skip) and
  ``reflect/skipped_no_gradient`` (this reason). ``verl_reflect.skip_no_gradient_steps: false`` turns it off
  (``verl_reflect.skip_no_gradient_steps=false``, a recipe setting; benchmarks/bench_trainer_step.py compares both).
  Only the update is saved: verl's step computes old log-probs and reference log-probs before the advantage
  (``trainer_base.py`` ``_step_once``: old_log_prob, ref, then adv, then update_actor), so the step cannot know
  yet. Rows without gradient never reach those passes when ``algorithm.filter_groups`` evicts their groups at
  sampling (failure replay: every row reflects, so a group with one reward has zero advantage).
- **Per-step reflect metrics** beside verl's own: ``reflect/first_try_correct``, ``reflect/final_correct``
  (accuracy before and after reflection over the step's rows; under failure replay the first try is the
  stored failure), ``reflect/reflected`` (share of rows that reflected), ``reflect/replayed_attempt``,
  ``reflect/reflection_tokens`` (mean per reflecting row), ``reflect/rows_with_gradient`` (share of rows with a
  non-zero advantage), ``reflect/generated_tokens`` (step total), ``reflect/verifier_errors`` and
  ``reflect/verifier_timeouts`` (verdicts whose verifier raised, returned no score or ran out of time: step
  totals, each scored as not solved) and ``reflect/skipped_update``.
- **Every mini-batch of a step that trains has a trained token** where the rows allow it: verl's token-mean loss
  divides by the mini-batch's trained-token count, so a mini-batch without one logs a NaN loss. Rows are reordered
  within each data-parallel rank's share (``_balance_batch``'s partition is kept) so the reflecting rows spread
  over the mini-batches (``_spread_trained_rows``).
- **What was trained, dumped.** With ``trainer.rollout_data_dir`` set, ``<dir>/trained_<step>.jsonl`` holds per
  row its prompt (``data_source`` and ``index``, the row's ``extra_info.index``: what identifies it across runs and
  resumes), the response ids, ``response_mask``, the advantages the actor update used, the trainer's and the
  rollout's log-probs, the weight versions of its first and last token, and the loop's turn records.
"""

from __future__ import annotations

import json
import os

import numpy as np
import transfer_queue as tq
from omegaconf import open_dict
from verl.trainer.distillation import is_distillation_enabled
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

TRAINER_MODE = "reflect_sync"
_STAT_KEYS = (
    "first_try_correct",
    "final_correct",
    "num_reflections",
    "reflection_tokens",
    "replayed_attempt",
    "verifier_errors",
    "verifier_timeouts",
)


def _is_nan(value) -> bool:
    return isinstance(value, (float, np.floating)) and bool(np.isnan(value))


# verl's policy losses that are the advantage times a function of the policy (core_algos.py): zero advantage, zero loss.
_ADVANTAGE_LINEAR_LOSSES = ("vanilla", "gspo", "gpg")


def no_gradient_skip_blocker(actor_config, *, distillation: bool, actor_is_reference: bool) -> str | None:
    """Why a step whose advantages are all zero must still run the actor update (a loss term that has a gradient
    without advantage), or None when skipping it is exact: the module docstring's rule."""
    loss_mode = actor_config.get("policy_loss", {}).get("loss_mode", "vanilla")
    if loss_mode not in _ADVANTAGE_LINEAR_LOSSES:
        return f"policy_loss.loss_mode={loss_mode} may have a term outside the advantage"
    if actor_config.get("entropy_coeff", 0) != 0:
        return "entropy bonus (entropy_coeff != 0)"
    if distillation:
        return "distillation loss"
    if actor_config.get("use_kl_loss", False) and actor_config.get("kl_loss_coef", 0) != 0 and not actor_is_reference:
        return "KL loss towards the reference, which the actor has moved away from"
    return None


def _generated_tokens(row: dict) -> int:
    """Tokens the rollout server generated for a row: every turn but a replayed attempt."""
    turns = row["turns"][1:] if row["replayed_attempt"] else row["turns"]
    return sum(turn["num_tokens"] for turn in turns)


class ReflectRetryMixin:
    """reflect-retry's additions to a verl v1 trainer; put in front of verl's trainer of mode ``VERL_MODE``.

    Not a subclass of any verl trainer, so the mode's own hooks (``on_sample_end``, ``on_step_end``, ...) stay the
    ones that run: a subclass of ``PPOTrainerSync`` would keep the sync hooks in an async mode.
    """

    VERL_MODE: str

    def _build_replay_buffer(self):
        # verl branches on ``trainer_mode`` strings (``== "sync"``: sampler class, refill, checkpointed in-flight
        # prompts) and reads ``trainer.v1.<mode>`` for its settings: this trainer is verl's of that mode.
        self.trainer_mode = self.VERL_MODE
        self.parameter_sync_step = self.config.trainer.v1.get(self.VERL_MODE, {}).get("parameter_sync_step", 1)
        return super()._build_replay_buffer()

    def _trained_token_count(self, batch) -> int:
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
        return int(data["response_mask"].values().sum())

    def _compute_advantage(self, batch, metrics):
        if self._trained_token_count(batch):
            return super()._compute_advantage(batch, metrics)
        # No reflection token anywhere: rollout correction has nothing to correct (and raises on an empty
        # mask); advantages come out all zero.
        algorithm = self.config.algorithm
        rollout_correction = algorithm.get("rollout_correction")
        with open_dict(algorithm):
            algorithm.rollout_correction = None
        try:
            return super()._compute_advantage(batch, metrics)
        finally:
            with open_dict(algorithm):
                algorithm.rollout_correction = rollout_correction

    def _update_actor(self, batch, metrics):
        if not hasattr(self, "_actor_is_reference"):
            # verl's first step of a fresh run is global step 1; a resumed run starts after its checkpoint's step
            self._actor_is_reference = self.global_steps <= 1
        no_token = self._trained_token_count(batch) == 0
        no_gradient = not no_token and not self._has_advantage(batch)
        blocker = no_gradient_skip_blocker(
            self.config.actor_rollout_ref.actor,
            distillation=is_distillation_enabled(self.config.get("distillation")),
            actor_is_reference=self._actor_is_reference,
        )
        if not self.config.get("verl_reflect", {}).get("skip_no_gradient_steps", True):
            blocker = "turned off (verl_reflect.skip_no_gradient_steps)"
        skipped_no_gradient = no_gradient and blocker is None
        metrics["reflect/skipped_update"] = float(no_token or skipped_no_gradient)
        metrics["reflect/skipped_no_gradient"] = float(skipped_no_gradient)
        metrics["reflect/update_without_advantage"] = float(no_gradient and not skipped_no_gradient)
        if no_token or skipped_no_gradient:
            return batch
        left_empty = self._spread_trained_rows(batch)
        if left_empty is not None:
            metrics["reflect/mini_batches_without_token"] = left_empty
        batch = super()._update_actor(batch, metrics)
        self._actor_is_reference = False
        return batch

    def _has_advantage(self, batch) -> bool:
        """Whether any token the loss sees (``response_mask``, after rollout correction's rejections) has a non-zero
        advantage."""
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages", "response_mask"]
        )
        return bool(((data["advantages"].values() != 0) & (data["response_mask"].values() != 0)).any())

    def _spread_trained_rows(self, batch) -> int | None:
        """Reorder ``batch`` so that every mini-batch has a trained token if the step has enough trained rows;
        returns how many mini-batches still have none (trained rows fewer than mini-batches), None if the order
        does not decide the mini-batches.

        verl's dispatch gives data-parallel rank ``r`` the ``r``-th contiguous share of the batch, and each rank cuts
        its share into contiguous mini-batches (``train_mini_batch``, ``shuffle: false``); global mini-batch ``j`` is
        the ``j``-th slice of every share. Rows move only within their share (``_balance_batch``'s partition is
        kept), and the trained rows are dealt to the slices round-robin, each rank starting where the previous one
        stopped.
        """
        actor = self.config.actor_rollout_ref.actor
        rows_per_mini_batch = actor.ppo_mini_batch_size * self.config.actor_rollout_ref.rollout.n
        dp_size = max(self.actor_rollout_wg._dispatch_info["actor"]) + 1  # filled by _balance_batch
        share = len(batch.keys) // dp_size
        if actor.shuffle or share * dp_size != len(batch.keys) or share % (rows_per_mini_batch // dp_size):
            return None  # shuffled mini-batches, or not verl's even split
        slice_rows = rows_per_mini_batch // dp_size
        n_mini = share // slice_rows
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
        trained = [bool(data["response_mask"][i].sum()) for i in range(len(batch.keys))]  # per row (jagged rows)
        order, start = [], 0
        for rank in range(dp_size):
            rows = range(rank * share, (rank + 1) * share)
            slices: list[list[int]] = [[] for _ in range(n_mini)]
            for k, i in enumerate([i for i in rows if trained[i]]):
                slices[(start + k) % n_mini].append(i)
            start = (start + sum(trained[i] for i in rows)) % n_mini
            rest = iter(i for i in rows if not trained[i])
            for chosen in slices:
                order += chosen + [next(rest) for _ in range(slice_rows - len(chosen))]
        batch.reorder(order)
        covered = {(position % share) // slice_rows for position, i in enumerate(order) if trained[i]}
        return n_mini - len(covered)

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        rows = self._trained_rows(batch)
        reflected = [row for row in rows if row["num_reflections"] > 0]
        metrics.update(
            {
                "reflect/first_try_correct": np.mean([row["first_try_correct"] for row in rows]),
                "reflect/final_correct": np.mean([row["final_correct"] for row in rows]),
                "reflect/reflected": len(reflected) / len(rows),
                "reflect/replayed_attempt": np.mean([row["replayed_attempt"] for row in rows]),
                "reflect/reflection_tokens": np.mean([row["reflection_tokens"] for row in reflected])
                if reflected
                else 0.0,
                "reflect/rows_with_gradient": np.mean([any(row["advantages"]) for row in rows]),
                "reflect/generated_tokens": sum(_generated_tokens(row) for row in rows),
                # Verdicts a misbehaving verifier cost this step (each scored as not solved): step totals.
                "reflect/verifier_errors": sum(row["verifier_errors"] for row in rows),
                "reflect/verifier_timeouts": sum(row["verifier_timeouts"] for row in rows),
            }
        )

        if metrics.get("reflect/skipped_update"):
            # A step with no trained token: verl's means over the mask (advantages, returns, entropy, rollout-vs-
            # trainer probabilities) are means over nothing, undefined; left out of the logs, as verl leaves out the
            # loss of the update it did not run. A NaN in a step that trains stays: it says something went wrong.
            for key in [key for key, value in metrics.items() if _is_nan(value)]:
                del metrics[key]

    def _log_rollout_data(self, batch, timing_raw, rollout_data_dir):
        super()._log_rollout_data(batch, timing_raw, rollout_data_dir)
        os.makedirs(rollout_data_dir, exist_ok=True)
        with open(os.path.join(rollout_data_dir, f"trained_{self.global_steps}.jsonl"), "w") as f:
            for row in self._trained_rows(batch):
                f.write(json.dumps(row) + "\n")

    def _trained_rows(self, batch) -> list[dict]:
        """Per non-padding row: its prompt (``data_source``, ``index``), the loop's stats and turns, the response, its
        mask and its advantages."""
        fields = ["responses", "response_mask", "advantages", "rm_scores", "extra_fields", "old_log_probs"]
        fields += ["data_source", "index"]  # the dataset row (extra_info.index): uids are new uuids every run
        if self.config.actor_rollout_ref.rollout.calculate_log_probs:
            fields.append("rollout_log_probs")
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        extra_fields, data_sources, indices = (
            data[name].tolist() if hasattr(data[name], "tolist") else data[name]
            for name in ("extra_fields", "data_source", "index")
        )
        rows = []
        for i, (key, tag) in enumerate(zip(batch.keys, batch.tags)):
            if tag.get("is_padding", False):
                continue
            extra = getattr(extra_fields[i], "data", extra_fields[i])
            rows.append(
                {
                    "key": key,
                    # which prompt: what stays the same across runs and a resume (key's uid does not)
                    "data_source": getattr(data_sources[i], "data", data_sources[i]),
                    "index": int(getattr(indices[i], "data", indices[i])),
                    "weights_version": tag.get("min_global_steps"),  # the policy version it was sampled from
                    # the version its last token came from: later than weights_version if a turn was aborted at a
                    # weight sync and resumed (async modes)
                    "last_weights_version": tag.get("max_global_steps"),
                    **{name: extra[name] for name in _STAT_KEYS},
                    "reward": float(data["rm_scores"][i].sum()),
                    "response_ids": data["responses"][i].tolist(),
                    "response_mask": data["response_mask"][i].tolist(),
                    "advantages": data["advantages"][i].tolist(),
                    # the trainer's log-probs of the response before the update, and the rollout's (if it sent
                    # them): equal up to numerics where the row was sampled from the weights the update started at
                    "old_log_probs": data["old_log_probs"][i].tolist(),
                    "rollout_log_probs": (
                        data["rollout_log_probs"][i].tolist() if "rollout_log_probs" in fields else None
                    ),
                    "turns": [
                        {key: turn[key] for key in ("kind", "start", "num_tokens", "correct")}
                        for turn in extra["turns"]
                    ],
                }
            )
        return rows


@register_trainer(TRAINER_MODE)
class ReflectRetryTrainer(ReflectRetryMixin, PPOTrainerSync):
    VERL_MODE = "sync"


@register_trainer("reflect_colocate_async")
class ReflectColocateAsyncTrainer(ReflectRetryMixin, PPOTrainerColocateAsync):
    VERL_MODE = "colocate_async"


@register_trainer("reflect_separate_async")
class ReflectSeparateAsyncTrainer(ReflectRetryMixin, PPOTrainerSeparateAsync):
    VERL_MODE = "separate_async"
