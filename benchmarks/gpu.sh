#!/usr/bin/env bash
# The GPU paths, measured in one go (issue #15), into one CSV:
#   - sampling throughput of RAR-B and RAR-L at batch 128 with the KV cache, guidance and the
#     MaskGIT-VQGAN decoding included: fp32 (the paper's Table 5 setting: 17.0 and 15.0
#     images/s on one A100), bf16 (static bf16 KV cache), and bf16 with the compiled decode
#     step (torch.compile "reduce-overhead"; its CUDA graphs are skipped today: docs/gpu.md);
#   - training throughput and MFU of RAR-L in bf16 (flash SDPA, causal), eager and compiled.
# Budget: under 8 minutes on one H100-class GPU (each command has its own time limit).
# Targets: bf16 + compile sampling >= 5x the official code's fp32 figure on the same GPU (our
# fp32 row stands in for it: the official sampler is not run here), training MFU >= 40%.
#
#   bash benchmarks/gpu.sh [OUT.csv]            (default results/bench/gpu.csv)
#
# OUT.csv is rewritten after every command, so a run cut short keeps what it measured.
#
# Settings (environment; the defaults are the GPU run's, and a CPU dry run of this script uses
# tiny ones): RAR_BENCH_MODELS ("rar_b rar_l"), RAR_BENCH_BATCH (128), RAR_BENCH_STEPS (3),
# RAR_BENCH_TRAIN_MODEL (rar_l), RAR_BENCH_TRAIN_BATCH (32), RAR_BENCH_DEVICE (cuda),
# RAR_BENCH_COMPILE (1), RAR_BENCH_DECODER (auto), RAR_BENCH_TIMEOUT_S (180 per command), RAR (the
# rar command; default .venv/bin/rar, else rar on the PATH).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-results/bench/gpu.csv}
MODELS=${RAR_BENCH_MODELS:-"rar_b rar_l"}
BATCH=${RAR_BENCH_BATCH:-128}
STEPS=${RAR_BENCH_STEPS:-3}
TRAIN_MODEL=${RAR_BENCH_TRAIN_MODEL:-rar_l}
TRAIN_BATCH=${RAR_BENCH_TRAIN_BATCH:-32}
DEVICE=${RAR_BENCH_DEVICE:-cuda}
COMPILE=${RAR_BENCH_COMPILE:-1}
DECODER=${RAR_BENCH_DECODER:-auto}
LIMIT=${RAR_BENCH_TIMEOUT_S:-180}
if [ -z "${RAR:-}" ]; then
    if [ -x .venv/bin/rar ]; then RAR=.venv/bin/rar; else RAR=rar; fi
fi
PYTHON=$(dirname "$(command -v "$RAR")")/python
[ -x "$PYTHON" ] || PYTHON=python3

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

mkdir -p "$(dirname "$OUT")"
# One CSV: a `bench` column (sample | train), the union of both benchmarks' columns, and for
# sampling the paper's fp32 A100 figure and the speed-up over our fp32 row on this GPU.
merge() {  # (re)write $OUT from the results so far: a run cut short keeps what it measured
    "$PYTHON" - "$work" "$OUT" <<'PY'
import csv
import sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
PAPER_FP32 = {"rar_b": 17.0, "rar_l": 15.0, "rar_xl": 8.3, "rar_xxl": 6.4}  # Table 5, one A100
rows = []
for bench in ("sample", "train"):
    path = work / f"{bench}.csv"
    if path.exists():
        with path.open() as f:
            rows += [{"bench": bench, **r} for r in csv.DictReader(f)]
fp32 = {r["model"]: float(r["images_per_s"]) for r in rows
        if r["bench"] == "sample" and r["dtype"] == "fp32"}
for r in rows:
    if r["bench"] == "sample":
        r["paper_fp32_a100_images_per_s"] = PAPER_FP32.get(r["model"], "")
        base = fp32.get(r["model"])
        r["speedup_vs_fp32"] = round(float(r["images_per_s"]) / base, 2) if base else ""
fields = list(dict.fromkeys(k for r in rows for k in r))
partial = out.with_name(out.name + ".part")  # written whole, then renamed into place
with partial.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
partial.replace(out)
print(f"{len(rows)} rows -> {out}")
for r in rows:
    what = f"{r['bench']:6s} {r['model']:8s} {r['dtype']:4s} compile={r['compile']:5s}"
    extra = f" MFU {r['mfu']}" if r.get("mfu") else ""
    extra += f" ({r['speedup_vs_fp32']}x fp32)" if r.get("speedup_vs_fp32") else ""
    print(f"  {what} {float(r['images_per_s']):10.2f} images/s{extra}")
PY
}

run() {  # run one benchmark command within the time limit; a failure is noted, not fatal
    echo "+ $*" >&2
    if ! timeout "$LIMIT" "$@"; then
        echo "FAILED (or over ${LIMIT} s): $*" >&2
        echo "$*" >> "$work/failed.txt"
        failed=1
    fi
    merge > /dev/null
}

variants=("fp32" "bf16")
[ "$COMPILE" = 1 ] && variants+=("bf16 --compile")
for model in $MODELS; do
    for variant in "${variants[@]}"; do
        # shellcheck disable=SC2086  # $variant is "DTYPE [--compile]"
        run "$RAR" bench-sample --model "$model" --batch-size "$BATCH" --steps "$STEPS" \
            --device "$DEVICE" --decoder "$DECODER" --dtype $variant --csv "$work/sample.csv"
    done
done
train_variants=("")
[ "$COMPILE" = 1 ] && train_variants+=("--compile")
for variant in "${train_variants[@]}"; do
    # shellcheck disable=SC2086
    run "$RAR" bench-train --model "$TRAIN_MODEL" --batch-size "$TRAIN_BATCH" --steps "$STEPS" \
        --device "$DEVICE" --dtype bf16 $variant --csv "$work/train.csv"
done

merge
if [ -s "$work/failed.txt" ]; then
    echo "these commands failed or ran over their limit:" >&2
    cat "$work/failed.txt" >&2
fi
exit $failed
