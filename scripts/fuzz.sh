#!/usr/bin/env bash
# Coverage-guided fuzzing of vkv's decoding paths with cargo-afl (stable Rust is enough).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Builds the targets of fuzz/ (vkv-fuzz) with `cargo afl build`, then runs afl-fuzz on each
# TARGET (default: every directory of fuzz/corpus/) for SECONDS (default 30), one after the
# other, starting from the seeds in fuzz/corpus/<target>/. Exits non-zero if AFL saved a crash
# (or if a run failed); each crash is printed in hex with the command that reproduces it.
#
# Writes only the afl build (${CARGO_TARGET_DIR:-target}/afl, apart from the plain build, whose
# flags differ) and afl-fuzz's output, fuzz/out/<target>/, replaced on every run (gitignored).
#
# One-time setup on a machine: `cargo install --locked cargo-afl` (its install also builds the
# AFL++ runtime and afl-fuzz into ~/.local/share/afl.rs; `cargo afl config --build --force`
# rebuilds them, e.g. after a rustc update). No LLVM dev packages or nightly are needed.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
if [ $# -gt 0 ]; then
  shift
fi
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]  (SECONDS a positive integer, got '$secs')" >&2
  exit 2
fi

if ! cargo afl --version >/dev/null 2>&1; then
  echo "cargo-afl is not installed (or AFL++ not built for this rustc):" >&2
  echo "  cargo install --locked cargo-afl     # or: cargo afl config --build --force" >&2
  exit 2
fi
probe="$(cargo afl fuzz -h 2>&1 || true)"
if [[ "$probe" == *"runtime was not built"* ]]; then
  echo "$probe" >&2
  echo "AFL++ is not built for this rustc: cargo afl config --build --force" >&2
  exit 2
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for dir in fuzz/corpus/*/; do
    targets+=("$(basename "$dir")")
  done
fi
for target in "${targets[@]}"; do
  if [ ! -f "fuzz/src/bin/$target.rs" ] || [ ! -d "fuzz/corpus/$target" ]; then
    echo "unknown target '$target' (no fuzz/src/bin/$target.rs or fuzz/corpus/$target/)" >&2
    exit 2
  fi
done

target_dir="${CARGO_TARGET_DIR:-$PWD/target}/afl"
echo "== cargo afl build (${#targets[@]} targets) into $target_dir =="
start=$SECONDS
bin_args=()
for target in "${targets[@]}"; do
  bin_args+=(--bin "$target")
done
CARGO_TARGET_DIR="$target_dir" cargo afl build --release --locked -p vkv-fuzz "${bin_args[@]}"
echo "== built in $((SECONDS - start)) s =="

# No TTY UI; tolerate containers where the CPU governor, core_pattern or CPU binding cannot be
# configured. Each can be overridden from the environment.
export AFL_NO_UI="${AFL_NO_UI:-1}"
export AFL_SKIP_CPUFREQ="${AFL_SKIP_CPUFREQ:-1}"
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES="${AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES:-1}"
export AFL_NO_AFFINITY="${AFL_NO_AFFINITY:-1}"
# Stop a target's run at its first crash: one is enough to fail.
export AFL_BENCH_UNTIL_CRASH=1

afl_stat() { # afl_stat FILE KEY: one value of afl-fuzz's fuzzer_stats
  sed -n "s/^$2 *: *//p" "$1"
}

failed=0
summary=()
for target in "${targets[@]}"; do
  out="fuzz/out/$target"
  rm -rf "$out"
  mkdir -p "$out"
  echo "== $target: afl-fuzz for $secs s =="
  rc=0
  # -V ends the run; timeout is only a guard against a run that never gets going.
  timeout --signal=INT --kill-after=30 "$((secs + 120))" \
    cargo afl fuzz -V "$secs" -i "fuzz/corpus/$target" -o "$out" "$target_dir/release/$target" \
    >"$out/afl-fuzz.log" 2>&1 || rc=$?
  stats="$out/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    echo "afl-fuzz did not start for $target (exit $rc); its output:" >&2
    tail -n 30 "$out/afl-fuzz.log" >&2
    failed=1
    summary+=("$target: did not run")
    continue
  fi
  crashes=()
  for file in "$out"/default/crashes/id:*; do
    [ -e "$file" ] && crashes+=("$file")
  done
  line="$target: $(afl_stat "$stats" execs_done) execs, $(afl_stat "$stats" execs_per_sec)/s, corpus $(afl_stat "$stats" corpus_count), edges $(afl_stat "$stats" edges_found)/$(afl_stat "$stats" total_edges) ($(afl_stat "$stats" bitmap_cvg)), crashes ${#crashes[@]}, hangs $(afl_stat "$stats" saved_hangs)"
  summary+=("$line")
  echo "$line"
  if [ "$rc" -ne 0 ]; then
    echo "afl-fuzz exited with $rc for $target; see $out/afl-fuzz.log" >&2
    failed=1
  fi
  for file in "${crashes[@]}"; do
    failed=1
    echo "CRASH in $target: $file" >&2
    od -An -tx1 -v "$file" | tr -d ' \n' >&2
    echo >&2
    echo "  reproduce: cargo run -p vkv-fuzz --bin $target -- '$file'" >&2
  done
done

echo "== summary =="
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "FUZZING FAILED (crashes or failed runs above; outputs in fuzz/out/)" >&2
  exit 1
fi
echo "no crashes"
