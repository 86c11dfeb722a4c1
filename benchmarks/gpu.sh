#!/usr/bin/env bash
# The GPU paths, measured in one go (issues #15 and #27), into one CSV:
#   - sampling throughput of RAR-B and RAR-L at batch 128 with the KV cache, guidance and the
#     MaskGIT-VQGAN decoding included, through the decode engine (rar.model.generate.DecodeEngine):
#     fp32 (the paper's Table 5 setting: 17.0 and 15.0 images/s on one A100) and real bf16
#     (bf16 weights and KV cache, no autocast), each eager and with the decode step compiled
#     (torch.compile "reduce-overhead": CUDA graphs), the first model's each with a profile of
#     its decode step (kernels, host and device time a step: `rar bench-sample --profile`);
#   - beside them, the baseline: the same fp32 eager benchmark run by the code before the
#     engine (the parent of the commit that added `class DecodeEngine` to rar/model/generate.py),
#     the `code` column saying which; `speedup_vs_baseline` divides by its images/s;
#   - training throughput and MFU of RAR-L in bf16 (flash SDPA, causal), eager and compiled.
# Budget: under 8 minutes on one H100-class GPU for RAR-B's sampling rows alone (each command
# has its own time limit); the issue #27 call is
#
#   RAR_BENCH_MODELS=rar_b RAR_BENCH_TRAIN=0 bash benchmarks/gpu.sh results/bench/gpu.csv
#
# Targets: bf16 + compile sampling >= 5x the official code's fp32 figure on the same GPU (the
# baseline row stands in for it: the official sampler is not run here), training MFU >= 40%.
#
#   bash benchmarks/gpu.sh [OUT.csv]            (default results/bench/gpu.csv)
#
# OUT.csv is rewritten after every command, so a run cut short keeps what it measured.
#
# Settings (environment; the defaults are the GPU run's, and a CPU dry run of this script uses
# tiny ones): RAR_BENCH_MODELS ("rar_b rar_l"), RAR_BENCH_BATCH (128), RAR_BENCH_STEPS (3),
# RAR_BENCH_TRAIN (1: run the training rows), RAR_BENCH_TRAIN_MODEL (rar_l),
# RAR_BENCH_TRAIN_BATCH (32; a list, "16 32 64", times each micro-batch and names the
# fastest), RAR_BENCH_DEVICE (cuda), RAR_BENCH_COMPILE (1), RAR_BENCH_DECODER (auto), RAR_BENCH_TIMEOUT_S (180 per command), RAR (the rar command;
# default .venv/bin/rar, else rar on the PATH), RAR_BENCH_BASELINE_DIR (a folder holding the
# baseline's `rar/` package; default benchmarks/baseline when it has one, else exported from
# git; a machine that gets the working tree without .git needs it made beforehand:
# `mkdir -p benchmarks/baseline && git archive REV rar | tar -x -C benchmarks/baseline`, an
# ignored folder, so it must be carried along by name). No baseline found: its row is left out.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-results/bench/gpu.csv}
MODELS=${RAR_BENCH_MODELS:-"rar_b rar_l"}
BATCH=${RAR_BENCH_BATCH:-128}
STEPS=${RAR_BENCH_STEPS:-3}
TRAIN=${RAR_BENCH_TRAIN:-1}
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

# The baseline: the code before the decode engine, as a folder put first on PYTHONPATH.
BASELINE=${RAR_BENCH_BASELINE_DIR:-}
if [ -z "$BASELINE" ] && [ -d benchmarks/baseline/rar ]; then
    BASELINE=benchmarks/baseline
fi
if [ -z "$BASELINE" ]; then
    engine=$(git log --reverse --format=%H -S "class DecodeEngine" -- rar/model/generate.py 2>/dev/null \
        | head -n 1)
    if [ -n "$engine" ] && mkdir -p "$work/baseline" \
        && git archive "$engine^" rar | tar -x -C "$work/baseline"; then
        BASELINE=$work/baseline
        echo "baseline: $(git log -1 --format='%h %s' "$engine^")" >&2
    else
        echo "no baseline (no git history here, RAR_BENCH_BASELINE_DIR unset): its row is left out" >&2
    fi
fi
[ -n "$BASELINE" ] && BASELINE=$(cd "$BASELINE" && pwd)

mkdir -p "$(dirname "$OUT")"
# One CSV: a `bench` column (sample | train), a `code` column (baseline | engine), the union of
# both benchmarks' columns, and for sampling the paper's fp32 A100 figure and the speed-up over
# the baseline row (fp32 eager, the code before the engine) on this GPU.
merge() {  # (re)write $OUT from the results so far: a run cut short keeps what it measured
    "$PYTHON" - "$work" "$OUT" <<'PY'
import csv
import sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
PAPER_FP32 = {"rar_b": 17.0, "rar_l": 15.0, "rar_xl": 8.3, "rar_xxl": 6.4}  # Table 5, one A100
rows = []
for bench, code, name in (("sample", "baseline", "sample_baseline"), ("sample", "engine", "sample"),
                          ("train", "", "train")):
    path = work / f"{name}.csv"
    if path.exists():
        with path.open() as f:
            rows += [{"bench": bench, "code": code, **r} for r in csv.DictReader(f)]
base = {r["model"]: float(r["images_per_s"]) for r in rows if r["code"] == "baseline"}
for r in rows:
    if r["bench"] == "sample":
        r["paper_fp32_a100_images_per_s"] = PAPER_FP32.get(r["model"], "")
        b = base.get(r["model"])
        r["speedup_vs_baseline"] = round(float(r["images_per_s"]) / b, 2) if b else ""
fields = list(dict.fromkeys(k for r in rows for k in r))
partial = out.with_name(out.name + ".part")  # written whole, then renamed into place
with partial.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
partial.replace(out)
print(f"{len(rows)} rows -> {out}")
for r in rows:
    what = f"{r['bench']:6s} {r['code']:8s} {r['model']:8s} {r['dtype']:4s} compile={r['compile']:5s}"
    extra = f" MFU {r['mfu']}" if r.get("mfu") else ""
    extra += f" ({r['speedup_vs_baseline']}x baseline)" if r.get("speedup_vs_baseline") else ""
    unit = "step" if r["bench"] == "train" else "batch"
    first = r.get(f"first_{unit}_s")  # the warm-up, compilation included (not the baseline's)
    extra += f", first {unit} {first} s" if first else ""
    if r.get("kernels_per_step"):  # --profile: one decode step
        extra += (f"; a step: {r['kernels_per_step']} kernels, host {r['host_ms_per_step']} ms,"
                  f" device {r['device_ms_per_step']} ms, wall {r['wall_ms_per_step']} ms")
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

# Eager rows first: a run cut short by its time limit keeps them. A compiled row's first batch
# holds three compilations of the decode step (rar.model.generate.DecodeEngine.compile_step).
variants=("fp32" "bf16")
[ "$COMPILE" = 1 ] && variants=("fp32" "bf16" "fp32 --compile" "bf16 --compile")
profile=--profile  # the first model's rows only: a profile adds a generation to a row
for model in $MODELS; do
    common=(bench-sample --model "$model" --batch-size "$BATCH" --steps "$STEPS"
        --device "$DEVICE" --decoder "$DECODER")
    if [ -n "$BASELINE" ]; then  # the code before the engine, fp32 eager
        run env PYTHONPATH="$BASELINE" "$RAR" "${common[@]}" --dtype fp32 \
            --csv "$work/sample_baseline.csv"
    fi
    for variant in "${variants[@]}"; do
        # shellcheck disable=SC2086  # $variant is "DTYPE [--compile]"
        run "$RAR" "${common[@]}" --dtype $variant $profile --csv "$work/sample.csv"
    done
    profile=
done
train_variants=()
[ "$TRAIN" = 1 ] && train_variants=("")
[ "$TRAIN" = 1 ] && [ "$COMPILE" = 1 ] && train_variants+=("--compile")
for variant in "${train_variants[@]}"; do
    # shellcheck disable=SC2086
    # $TRAIN_BATCH may list micro-batches ("16 32 64"): each is timed, the fastest named
    run "$RAR" bench-train --model "$TRAIN_MODEL" --batch-size $TRAIN_BATCH --steps "$STEPS" \
        --device "$DEVICE" --dtype bf16 $variant --csv "$work/train.csv"
done

merge
if [ -s "$work/failed.txt" ]; then
    echo "these commands failed or ran over their limit:" >&2
    cat "$work/failed.txt" >&2
fi
exit $failed
