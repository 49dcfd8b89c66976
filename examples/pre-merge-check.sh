#!/usr/bin/env bash
# Pre-merge gate for candidate checkpoints: inspect each one, keep its JSON report, and check the
# report against a policy. Exits 0 when every candidate passes, 1 when any fails its policy,
# 2 when a candidate could not be inspected (missing folder, no MLM head, ...).
#
#   examples/pre-merge-check.sh [-p POLICY.toml] [-o REPORT_DIR] CHECKPOINT...
#
# Environment: HEADSCOPE (the command, default "headscope"; e.g. "python -m headscope"),
# INSPECT_ARGS (extra inspect flags, e.g. "--weights-only" or "--n-pairs 64").
# The reports stay in REPORT_DIR (default ./headscope-reports) for review or a later
# `headscope check --report`, which needs no torch.
set -uo pipefail

policy=""
reports="headscope-reports"
while getopts "p:o:h" opt; do
  case "$opt" in
    p) policy="$OPTARG" ;;
    o) reports="$OPTARG" ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ "$#" -eq 0 ]; then
  echo "usage: $0 [-p POLICY.toml] [-o REPORT_DIR] CHECKPOINT..." >&2
  exit 2
fi

read -r -a hs <<< "${HEADSCOPE:-headscope}"
read -r -a inspect_args <<< "${INSPECT_ARGS:-}"
policy_args=()
if [ -n "$policy" ]; then policy_args=(--policy "$policy"); fi
mkdir -p "$reports"

status=0
for ckpt in "$@"; do
  name="$(basename "${ckpt%/}")"
  report="$reports/$name.json"
  echo "== $ckpt" >&2
  # Data (the report) goes to the file; the human-readable table is not needed here.
  if ! "${hs[@]}" inspect "$ckpt" "${inspect_args[@]}" --json "$report" > /dev/null; then
    echo "!! $ckpt could not be inspected" >&2
    status=2
    continue
  fi
  "${hs[@]}" check --report "$report" "${policy_args[@]}"
  code=$?
  if [ "$code" -eq 1 ]; then
    echo "!! $ckpt fails the policy (report: $report)" >&2
    [ "$status" -eq 0 ] && status=1
  elif [ "$code" -ne 0 ]; then
    status=2
  fi
done
exit "$status"
