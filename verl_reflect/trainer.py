"""verl's synchronous PPO trainer with what reflect-retry needs each step, registered as ``reflect_sync``.

Selected by ``trainer.v1.trainer_mode: reflect_sync`` (every recipe sets it through ``_reflect_grpo.yaml``).
It behaves exactly like verl's ``sync`` trainer, plus:

- **A step with no reflection token trains nothing, without crashing.** When no row of the batch reflected
  (every row solved on the first try), verl's rollout correction raises (``rollout_corr_helper.py:838``) and
  the token-mean loss would divide by zero. This trainer skips both and skips the actor update: there is
  nothing to learn and no forward/backward pass is spent.
- **Per-step reflect metrics** beside verl's own: ``reflect/first_try_correct``, ``reflect/final_correct``
  (accuracy before and after reflection over the step's rows; under failure replay the first try is the
  stored failure), ``reflect/reflected`` (share of rows that reflected), ``reflect/replayed_attempt``,
  ``reflect/reflection_tokens`` (mean per reflecting row), ``reflect/rows_with_gradient`` (share of rows with a
  non-zero advantage), ``reflect/generated_tokens`` (step total) and ``reflect/skipped_update``.
- **What was trained, dumped.** With ``trainer.rollout_data_dir`` set, ``<dir>/trained_<step>.jsonl`` holds per
  row the response ids, ``response_mask``, the advantages the actor update used, and the loop's turn records.
"""

from __future__ import annotations

import json
import os

import numpy as np
import transfer_queue as tq
from omegaconf import open_dict
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

TRAINER_MODE = "reflect_sync"
_STAT_KEYS = ("first_try_correct", "final_correct", "num_reflections", "reflection_tokens", "replayed_attempt")


def _generated_tokens(row: dict) -> int:
    """Tokens the rollout server generated for a row: every turn but a replayed attempt."""
    turns = row["turns"][1:] if row["replayed_attempt"] else row["turns"]
    return sum(turn["num_tokens"] for turn in turns)


@register_trainer(TRAINER_MODE)
class ReflectRetryTrainer(PPOTrainerSync):
    def _build_replay_buffer(self):
        # verl branches on ``trainer_mode == "sync"`` (sampler class, refill, validation): this is that trainer.
        self.trainer_mode = "sync"
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
        skipped = self._trained_token_count(batch) == 0
        metrics["reflect/skipped_update"] = float(skipped)
        return batch if skipped else super()._update_actor(batch, metrics)

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
            }
        )

    def _log_rollout_data(self, batch, timing_raw, rollout_data_dir):
        super()._log_rollout_data(batch, timing_raw, rollout_data_dir)
        os.makedirs(rollout_data_dir, exist_ok=True)
        with open(os.path.join(rollout_data_dir, f"trained_{self.global_steps}.jsonl"), "w") as f:
            for row in self._trained_rows(batch):
                f.write(json.dumps(row) + "\n")

    def _trained_rows(self, batch) -> list[dict]:
        """Per non-padding row: the loop's stats and turns, the response, its mask and its advantages."""
        fields = ["responses", "response_mask", "advantages", "rm_scores", "extra_fields"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        extra_fields = (
            data["extra_fields"].tolist() if hasattr(data["extra_fields"], "tolist") else data["extra_fields"]
        )
        rows = []
        for i, (key, tag) in enumerate(zip(batch.keys, batch.tags)):
            if tag.get("is_padding", False):
                continue
            extra = getattr(extra_fields[i], "data", extra_fields[i])
            rows.append(
                {
                    "key": key,
                    "weights_version": tag.get("min_global_steps"),  # the policy version it was sampled from
                    **{name: extra[name] for name in _STAT_KEYS},
                    "reward": float(data["rm_scores"][i].sum()),
                    "response_ids": data["responses"][i].tolist(),
                    "response_mask": data["response_mask"][i].tolist(),
                    "advantages": data["advantages"][i].tolist(),
                    "turns": [
                        {key: turn[key] for key in ("kind", "start", "num_tokens", "correct")}
                        for turn in extra["turns"]
                    ],
                }
            )
        return rows
