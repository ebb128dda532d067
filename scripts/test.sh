#!/usr/bin/env bash
# Runs every check of the project on a fresh Debian machine with Go:
# installs redis-server and redis-sentinel when missing (as root, from
# Debian), then gofmt, go vet, staticcheck, short fuzz runs and the
# race-enabled test suite of every module (real redis-server, Sentinel and
# Cluster tests included).
#
# LOCKSMITH_REQUIRE_REDIS=1 turns tests that need redis-server from skipped
# into failed when it is missing; .ci/run sets it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage is announced with the time elapsed since the start, and a long
# stage says it is still running once a minute, so a slow machine shows
# where the time goes.
started=$SECONDS
stage() { printf '== [%4ds] %s\n' "$((SECONDS - started))" "$*"; }
ticker_pid=
tick_start() {
	local what="$1"
	( while sleep 60; do printf '   [%4ds] still running: %s\n' "$((SECONDS - started))" "$what"; done ) &
	ticker_pid=$!
}
tick_stop() { [ -n "$ticker_pid" ] && kill "$ticker_pid" 2>/dev/null; wait "$ticker_pid" 2>/dev/null || true; ticker_pid=; }
trap 'tick_stop' EXIT

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-sentinel >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		stage "installing redis-server and redis-sentinel (Debian packages)"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-sentinel >/dev/null
	else
		echo "== redis-server or redis-sentinel not found: tests that need a real Redis will skip" \
			"(apt-get install redis-server redis-sentinel)" >&2
	fi
fi

STATICCHECK=honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOBIN_DIR="$(go env GOPATH)/bin"
if ! "$GOBIN_DIR/staticcheck" -version 2>/dev/null | grep -q '(0.8.2)'; then
	stage "installing $STATICCHECK"
	go install "$STATICCHECK"
fi

# Every Go module of the repository: the library and the nested ones that
# keep their own dependencies (peer benchmarks, fault-injection tests).
modules=(.)
for m in benchmarks/peers faults otel; do
	[ -f "$m/go.mod" ] && modules+=("$m")
done

# Repository hygiene: no tracked executable binary, no tracked file over
# 1 MiB (build outputs belong in .gitignore, data in shared storage).
stage "tracked files: no binaries, none over 1 MiB"
bad=0
while IFS= read -r -d '' f; do
	[ -f "$f" ] || continue
	size=$(stat -c %s "$f")
	if [ "$size" -gt 1048576 ]; then
		echo "tracked file over 1 MiB: $f ($size bytes)" >&2
		bad=1
	fi
	magic=$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')
	case "$magic" in
	7f454c46 | cffaedfe | cefaedfe | feedface | feedfacf | 4d5a*)
		echo "tracked executable binary: $f" >&2
		bad=1
		;;
	esac
done < <(git ls-files -z 2>/dev/null)
[ "$bad" = 0 ] || exit 1

stage "gofmt"
unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then
	echo "gofmt: these files need formatting:" >&2
	echo "$unformatted" >&2
	exit 1
fi

for m in "${modules[@]}"; do
	stage "$m: go vet"
	(cd "$m" && go vet ./...)
	stage "$m: staticcheck"
	(cd "$m" && "$GOBIN_DIR/staticcheck" ./...)
done

# Fuzz runs are bounded by a count, not a duration: a duration-bounded run
# can fail with no crasher (golang/go#75804).
fuzz() {
	stage "fuzz $1 ($2, ${FUZZCOUNT:-20000x})"
	go test -run '^$' -fuzz "^$1\$" -fuzztime "${FUZZCOUNT:-20000x}" "$2"
}
fuzz FuzzDecode ./internal/envelope/
fuzz FuzzMsgPackUnmarshal ./codec/
fuzz FuzzParseAcquire ./internal/lease/
fuzz FuzzParseClaim ./fill/
fuzz FuzzReadHeadroom ./budget/

# The test suite of every module, race detector on. Each package's result is
# kept to print the count at the end.
results="$(mktemp)"
trap 'tick_stop; rm -f "$results"' EXIT
status=0
for m in "${modules[@]}"; do
	stage "$m: go test -race"
	tick_start "$m: go test -race"
	(cd "$m" && go test -race -count=1 -timeout 15m ./...) 2>&1 | tee -a "$results" || status=1
	tick_stop
done
# Every benchmark once, on real Redis, so that their own checks (b.Errorf)
# run: -short keeps the long ones to a second. Figures come from the
# commands in the README, not from this pass.
for m in . otel; do
	stage "$m: benchmarks once (-benchtime 1x -short)"
	tick_start "$m: benchmarks"
	(cd "$m" && go test -short -count=1 -run '^$' -bench . -benchtime 1x ./...) 2>&1 | tee -a "$results" || status=1
	tick_stop
done

passed="$(grep -c '^ok' "$results" || true)"
failed="$(grep -c '^FAIL[[:space:]]' "$results" || true)"
stage "done"
echo "packages: $passed passed, $failed failed"
exit "$status"
