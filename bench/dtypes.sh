#!/usr/bin/env bash
# Per dtype the converter writes, on both shared models: the ONNX file's size, and the attention_sinks perplexity
# run of the README (TinyStories text, 4096 tokens, window 64, 4 sinks), whose summary gives the overall
# perplexity and the evaluated tokens per second (one decode step per token). Conversions go to a fresh cache.
#
#   npm run build && bash bench/dtypes.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=../shared
CLI=(node dist/src/cli/main.js)
ATTENTION_SINKS_CACHE=$(mktemp -d)
export ATTENTION_SINKS_CACHE
trap 'rm -rf "$ATTENTION_SINKS_CACHE"' EXIT

for model in tinystories-656k stories260K/stories260K.bin; do
  for dtype in fp32 fp16 q8 q4 q4f16; do
    echo "## $(basename "$model") $dtype"
    "${CLI[@]}" perplexity --experiment attention_sinks --model_name_or_path "$SHARED/models/$model" --dtype "$dtype" \
      --dataset_name "$SHARED/data/tinystories_valid.txt" --num_tokens 4096 --window_size 64 --attention_sink_size 4 \
      --output_dir "bench/outputs/dtypes/$(basename "$model")-$dtype" --overwrite
  done
  ls -l "$ATTENTION_SINKS_CACHE"/*/onnx/ | awk '/\.onnx$/ { print $5, $NF }'
  rm -rf "${ATTENTION_SINKS_CACHE:?}"/*
done
