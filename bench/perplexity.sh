#!/usr/bin/env bash
# Regenerates the README's perplexity benchmark: the CSVs go to bench/outputs/<run>/ (git-ignored), the
# plots to docs/images/<run>.png (and .svg, git-ignored), the summary tables and speed ratios to standard output.
#
#   npm run build && bash bench/perplexity.sh            # every run below
#   bash bench/perplexity.sh tinystories-656k-w64          # only the runs named
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=../shared
CLI=(node dist/src/cli/main.js)

# name | model | text | tokens | window
RUNS=(
  "tinystories-656k-w64|$SHARED/models/tinystories-656k|$SHARED/data/tinystories_valid.txt|4096|64"
  "tinystories-656k-w256|$SHARED/models/tinystories-656k|$SHARED/data/tinystories_valid.txt|4096|256"
  "stories260K-w64|$SHARED/models/stories260K/stories260K.bin|$SHARED/data/tinystories_valid.txt|4096|64"
  "stories260K-w256|$SHARED/models/stories260K/stories260K.bin|$SHARED/data/tinystories_valid.txt|4096|256"
  "tinystories-656k-shakespeare-w256|$SHARED/models/tinystories-656k|$SHARED/data/tinyshakespeare.txt|20000|256"
  "stories260K-shakespeare-w256|$SHARED/models/stories260K/stories260K.bin|$SHARED/data/tinyshakespeare.txt|20000|256"
)

for spec in "${RUNS[@]}"; do
  IFS="|" read -r name model text tokens window <<<"$spec"
  if [[ $# -gt 0 && ! " $* " =~ " $name " ]]; then continue; fi
  out="bench/outputs/$name"
  for experiment in attention_sinks windowed transformers; do
    "${CLI[@]}" perplexity --experiment "$experiment" --model_name_or_path "$model" --dataset_name "$text" \
      --num_tokens "$tokens" --window_size "$window" --attention_sink_size 4 --output_dir "$out" --overwrite
  done
  echo "## $name"
  "${CLI[@]}" plot --output_dir "$out" --output "docs/images/$name.png" --overwrite \
    --title "$(basename "$model") on $(basename "$text"): log perplexity, window $window"
  node dist/bench/perplexity_overhead.js "$model" "$text" "$window"
  echo
done
