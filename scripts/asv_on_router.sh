#!/usr/bin/env bash
# The project's own asv suite through the asv plugin (router.asv) against a local router: CI runs a
# subset at BENCH_SIZE=tiny (each commit's environment builds the package, its Cython extension
# included, on the router's host). Usage: scripts/asv_on_router.sh [PYTHON] [asv run args...]
# (default: .venv/bin/python; --quick --bench bench_exec).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
shift || true
[ $# -gt 0 ] || set -- --quick --bench bench_exec
work=$(mktemp -d)
"$py" -m router.cli serve --listen 127.0.0.1:0 --state-dir "$work/state" --drain-secs 0 >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid"; wait "$pid" || true; rm -rf "$work"' EXIT
for _ in $(seq 300); do
    target=$(sed -n 's/^router listening on //p' "$work/serve.log")
    [ -n "$target" ] && break
    kill -0 "$pid" && sleep 0.1
done
[ -n "$target" ] || { cat "$work/serve.log"; exit 1; }
ROUTER_TOKEN=$("$py" -m router.cli token --state-dir "$work/state")
export ROUTER_TOKEN
version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
cat >"$work/asv.conf.json" <<CONF
{"version": 1, "project": "task-command-router", "repo": "$PWD", "dvcs": "git", "branches": ["main"],
 "benchmark_dir": "$PWD/benchmarks/suite", "env_dir": "$work/env", "results_dir": "$work/results",
 "html_dir": "$work/html", "pythons": ["$version"], "plugins": [".router.asv"], "environment_type": "router",
 "router_targets": ["$target"], "router_env_dir": "$work/remote", "router_pass_env": ["BENCH_*"]}
CONF
"$py" -m asv machine --yes --config "$work/asv.conf.json" >/dev/null
BENCH_SIZE=tiny "$py" -m asv run --config "$work/asv.conf.json" --show-stderr "$@" HEAD^!
