#!/usr/bin/env bash
# make demo: extract stdlib pairs, fine-tune all-MiniLM-L6-v2 briefly on the CPU, evaluate
# against the zero-shot model, build a FAISS index over standard-library code, search it.
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STDLIB=$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')

echo "== 1. extract query/code pairs from $STDLIB"
dualenc data extract "$STDLIB" --out data/stdlib

echo "== 2. zero-shot all-MiniLM-L6-v2 on the held-out pairs"
dualenc evaluate --encoder hf --data data/stdlib/val.jsonl

echo "== 3. fine-tune (configs/quickstart.yaml)"
rm -rf checkpoints/quickstart
dualenc train --config configs/quickstart.yaml

echo "== 4. evaluate the best checkpoint"
dualenc evaluate --checkpoint checkpoints/quickstart/encoder-best-mrr --data data/stdlib/val.jsonl

echo "== 5. index the documented standard-library functions and search them"
cat data/stdlib/train.jsonl data/stdlib/val.jsonl > data/stdlib/corpus.jsonl
dualenc index build --encoder-checkpoint checkpoints/quickstart/encoder-best-mrr \
  --code-corpus data/stdlib/corpus.jsonl --output-dir indices/stdlib --overwrite
dualenc search --index indices/stdlib "binary search implementation" -k 3 --max-lines 8
