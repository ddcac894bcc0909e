#!/usr/bin/env bash
# `make bundle`: the default bundle end to end from nothing, reusing every step already done.
#   synthetic data -> cache (R=112, X-Sub) -> VST (the temporal half for the BlazePose front end,
#   trained on the synthetic skeletons) -> glossary -> LoRA fine-tune of
#   SmolLM2-135M -> export (ONNX engines and pose models + GGUF) -> check
# Each step leaves a stamp in BUILD/.done/ when it succeeds; an interrupted step resumes
# (synth and training continue where they stopped). On 2 CPU cores the whole run takes about an hour.
set -euo pipefail
BUILD=${1:-build}
LV=${LVLM_VAR:-.venv/bin/lvlm-var}
mkdir -p "$BUILD/.done"

step() {  # step NAME DESCRIPTION COMMAND...
  local name=$1 what=$2
  shift 2
  if [ -f "$BUILD/.done/$name" ]; then
    echo "[bundle] $what: done already"
    return
  fi
  echo "[bundle] $what ..."
  local t0=$SECONDS
  "$@"
  touch "$BUILD/.done/$name"
  echo "[bundle] $what: finished in $((SECONDS - t0)) s"
}

resume=()
[ -f "$BUILD/vst/last_state.pt" ] && resume=(--resume)
resume_lm=()
[ -f "$BUILD/lvlm/finetune_state.pt" ] && resume_lm=(--resume)

step synth "1/6 synthetic dataset" "$LV" data synth --out "$BUILD/data"
step prepare "2/6 frame cache (112 px, X-Sub)" "$LV" data prepare --data "$BUILD/data" --protocol xsub --size 112 --out "$BUILD/cache"
step vst "3/6 VST training" "$LV" train vst --data "$BUILD/cache" --protocol xsub --out "$BUILD/vst" "${resume[@]}"
step glossary "4/6 codebook glossary" "$LV" vst glossary --run "$BUILD/vst" --data "$BUILD/cache"
step finetune "5/6 language-model fine-tune" "$LV" finetune --vst "$BUILD/vst" --data "$BUILD/cache" --out "$BUILD/lvlm" "${resume_lm[@]}"
step export "6/6 bundle export" "$LV" export bundle --vst "$BUILD/vst" --lvlm "$BUILD/lvlm" --out "$BUILD/bundle"
"$LV" check "$BUILD/bundle"
