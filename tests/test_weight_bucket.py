"""The vLLM weight-sync bucket against the model's largest tensor (``verl_reflect/cpu/weight_bucket.py``): read from
safetensors headers, sized by ``+cpu=vllm``'s resolver, checked by the dry run.

The model folders here hold safetensors *headers* only (no tensor data follows): every size is read without the
weights, which these files do not even have.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from verl_reflect.commands import cli
from verl_reflect.cpu import weight_bucket

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_EMBEDDING = (49152, 576)  # SmolLM2-135M's largest tensor: 113,246,208 bytes in float32, exactly 108 MiB


def write_header_only(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "BF16") -> None:
    """A safetensors file's header and nothing after it."""
    offset, header = 0, {"__metadata__": {"format": "pt"}}
    for name, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


def fake_model(folder: Path, shapes: dict[str, tuple[int, ...]], **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    write_header_only(folder / "model.safetensors", shapes)
    return folder


def test_the_largest_tensor_is_read_from_headers_and_counted_in_float32(tmp_path):
    # Stored in bf16, synced as the actor's float32: the bucket needs 4 bytes an element.
    shapes = {"model.embed_tokens.weight": SMOLLM2_EMBEDDING, "model.layers.0.mlp.up_proj.weight": (1536, 576)}
    model = fake_model(tmp_path / "m", shapes)
    tensor = weight_bucket.largest_tensor(model)
    assert tensor == weight_bucket.Tensor("model.embed_tokens.weight", SMOLLM2_EMBEDDING)
    assert tensor.sync_bytes == 113_246_208
    assert weight_bucket.needed_megabytes(tensor) == weight_bucket.bucket_megabytes(model) == 108
    # One element more needs one MiB more: the bucket is rounded up, never down.
    bigger = weight_bucket.Tensor("w", (49152 * 576 + 1,))
    assert weight_bucket.needed_megabytes(bigger) == 109


def test_sharded_models_are_read_through_their_index_and_small_ones_keep_the_minimum(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    write_header_only(folder / "a.safetensors", {"model.norm.weight": (576,), "lm_head.weight": (151936, 1536)})
    write_header_only(folder / "b.safetensors", {"model.embed_tokens.weight": (151936, 1024)})
    write_header_only(folder / "stray.safetensors", {"not.in.the.index": (10**6, 10**3)})  # not the model's
    weight_map = {"model.norm.weight": "a.safetensors", "lm_head.weight": "a.safetensors"}
    weight_map["model.embed_tokens.weight"] = "b.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert weight_bucket.largest_tensor(folder).name == "lm_head.weight"
    assert weight_bucket.bucket_megabytes(folder) == -(-151936 * 1536 * 4 // 2**20) == 891

    tiny = fake_model(tmp_path / "tiny", {"model.embed_tokens.weight": (1024, 64)})
    assert weight_bucket.bucket_megabytes(tiny) == weight_bucket.MIN_BUCKET_MB


def test_without_safetensors_the_config_gives_the_largest_matrix_and_without_files_verls_default(tmp_path):
    folder = tmp_path / "bin_only"
    folder.mkdir()
    config = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336}
    (folder / "config.json").write_text(json.dumps(config))
    assert weight_bucket.largest_tensor(folder).shape == (32000, 4096)
    assert weight_bucket.bucket_megabytes(tmp_path / "absent") == weight_bucket.VERL_DEFAULT_BUCKET_MB
    assert weight_bucket.bucket_megabytes("no-such-org/no-such-model") == weight_bucket.VERL_DEFAULT_BUCKET_MB


def test_cpu_vllm_sizes_the_bucket_from_the_model_it_runs(tmp_path, tiny_default):
    from verl_reflect.commands.recipe import compose

    model = fake_model(tmp_path / "m", {"model.embed_tokens.weight": SMOLLM2_EMBEDDING})
    rollout = compose("countdown_tiny_cpu", ["+cpu=vllm", f"actor_rollout_ref.model.path={model}"]).actor_rollout_ref
    assert rollout.rollout.checkpoint_engine.update_weights_bucket_megabytes == 108
    tiny = compose("countdown_tiny_cpu", ["+cpu=vllm"]).actor_rollout_ref.rollout
    assert tiny.checkpoint_engine.update_weights_bucket_megabytes == weight_bucket.MIN_BUCKET_MB


# ----------------------------------------------------------------------------- the dry run's check


def dry_run_line(capsys, *overrides: str) -> tuple[int, str]:
    code = cli.main(["dry-run", "--static-only", "--config-name", "countdown_tiny_cpu", *overrides])
    lines = capsys.readouterr().out.splitlines()
    assert not any("the check itself failed" in line for line in lines), lines
    (line,) = [line for line in lines if line[2:].startswith("weight-sync bucket:")]
    return code, line


@pytest.fixture
def smollm2_sized(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("VERL_REFLECT_CACHE", str(tiny_model_dir.parent))
    shapes = {"model.embed_tokens.weight": SMOLLM2_EMBEDDING}
    return fake_model(tmp_path / "m", shapes, vocab_size=49152, hidden_size=576)


def test_a_bucket_smaller_than_the_largest_tensor_fails_the_dry_run_and_names_the_setting(capsys, smollm2_sized):
    bucket_64 = f"{weight_bucket.BUCKET_KEY}=64"  # the value recipes/cpu/vllm.yaml used to hard-code
    code, line = dry_run_line(capsys, "+cpu=vllm", f"actor_rollout_ref.model.path={smollm2_sized}", bucket_64)
    assert code == 1
    assert line.startswith("✗ weight-sync bucket: largest tensor model.embed_tokens.weight 49152x576 (108.0 MiB")
    assert line.split(" — fix: ", 1)[1].startswith(f"{weight_bucket.BUCKET_KEY}=108 ")


def test_the_bucket_cpu_vllm_computes_passes_and_other_rollouts_are_not_checked(capsys, smollm2_sized):
    code, line = dry_run_line(capsys, "+cpu=vllm", f"actor_rollout_ref.model.path={smollm2_sized}")
    assert line.startswith("✓ weight-sync bucket: ") and line.endswith("bucket 108 MiB: fits"), line
    _, line = dry_run_line(capsys, f"actor_rollout_ref.model.path={smollm2_sized}")  # the hf rollout
    assert line.startswith("- weight-sync bucket: skipped (the hf rollout"), line
