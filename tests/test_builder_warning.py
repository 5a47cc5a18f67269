"""verl's "No model-specific Continuous Token builder" warning, once per process and model_type: verl logs it for
every agent loop it builds (one per trajectory), and the loop handles those families itself
(``verl_reflect/turn_boundary.py``). Every other record of that logger still passes."""

from __future__ import annotations

import logging

from verl.utils.tokenizer.continuous_token_wiring import (
    ContinuousTokenModelFamily,
    infer_continuous_token_model_family,
)

from verl_reflect import turn_boundary

WIRING = "verl.utils.tokenizer.continuous_token_wiring"


def test_the_default_builder_warning_shows_once_per_model_type_and_other_warnings_stay(caplog):
    turn_boundary.warn_default_builder_once()  # installed at import; a second call adds nothing
    logger = logging.getLogger(WIRING)
    assert sum(type(f).__name__ == "_DefaultBuilderWarningOnce" for f in logger.filters) == 1
    # A model_type no earlier test in this process can have logged: the filter's memory is per process.
    fresh = "llama_test_builder_warning"
    with caplog.at_level(logging.WARNING, logger=WIRING):
        for _ in range(32):  # 32 trajectories
            family = infer_continuous_token_model_family(hf_model_type=fresh)
            assert family == ContinuousTokenModelFamily.DEFAULT  # the fallback itself is verl's, unchanged
        infer_continuous_token_model_family(hf_model_type=fresh + "_other")
        for _ in range(3):
            logger.warning("No model-specific VL Continuous Token builder matched (inferred %s)", "x")
            logger.warning("something else entirely")
    messages = [record.getMessage() for record in caplog.records if record.name == WIRING]
    assert [m for m in messages if fresh in m] == [
        f"No model-specific Continuous Token builder is registered for config.json model_type={fresh!r}; "
        "falling back to default.",
        f"No model-specific Continuous Token builder is registered for config.json model_type={fresh + '_other'!r}; "
        "falling back to default.",
    ]
    assert messages.count("something else entirely") == 3
    assert sum(m.startswith("No model-specific VL") for m in messages) == 3
