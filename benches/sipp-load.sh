#!/usr/bin/env bash
# Finds the highest call rate sluice carries with zero failed calls: SIPp uac -> sluice ->
# SIPp uas over UDP on loopback, one step of STEP_SECONDS per rate, stopping at the first rate
# with a failed call (or when SIPp itself cannot keep the rate). For each step it reports the
# proxy's CPU seconds per 1,000 calls (utime+stime from /proc) and its peak RSS (VmHWM).
#
# Usage: benches/sipp-load.sh [START_RATE] [STEP] [MAX_RATE] [STEP_SECONDS]
#   WITH_LIMITS=1 configures limits at 7 scopes (server, customer, ip, route, did, carrier,
#   gateway), all far above the offered load: the limiter's cost when limits are configured
#   but not hit. REDIS_URL=redis://127.0.0.1:6379/ adds [cluster]: limits kept in Redis.
#   TRANSPORT=tcp runs both legs over TCP (one connection each way, SIPp -t t1).
#   LOG_LEVEL=info logs one call.admission line per call (the shipped config's level) to a file.
#   WORKERS=N sets [server] workers (default 0: one per core).
set -euo pipefail
cd "$(dirname "$0")/.."

START=${1:-1000}
STEP=${2:-1000}
MAX=${3:-12000}
SECS=${4:-10}
WITH_LIMITS=${WITH_LIMITS:-0}
REDIS_URL=${REDIS_URL:-}
TRANSPORT=${TRANSPORT:-udp}
LOG_LEVEL=${LOG_LEVEL:-warn}
WORKERS=${WORKERS:-0}
case "$TRANSPORT" in
  udp) SIPP_T=u1 ;;
  tcp) SIPP_T=t1 ;;
  *) echo "TRANSPORT must be udp or tcp" >&2; exit 1 ;;
esac
PROXY_PORT=${PROXY_PORT:-25060}
UAS_PORT=${UAS_PORT:-25070}
UAC_PORT=${UAC_PORT:-25080}
ADMIN_PORT=${ADMIN_PORT:-25090}

command -v sipp >/dev/null || { echo "sipp not found: apt-get install sip-tester" >&2; exit 1; }
BIN=${BIN:-target/release/sluice}
[ -x "$BIN" ] || cargo build --release
TICK=$(getconf CLK_TCK)

work=$(mktemp -d)
cleanup() { kill "${UAS:-}" "${PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; [ -z "${KEEP_LOG:-}" ] || cp "$work/sluice.log" "$KEEP_LOG"; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/sluice.toml" <<TOML
[server]
listen = ["$TRANSPORT://127.0.0.1:$PROXY_PORT"]
admin = "127.0.0.1:$ADMIN_PORT"
workers = $WORKERS
[log]
format = "json"
level = "$LOG_LEVEL"
[[carrier]]
name = "uas"
gateways = ["$TRANSPORT://127.0.0.1:$UAS_PORT"]
[[route]]
prefix = ""
carriers = ["uas"]
TOML
if [ "$WITH_LIMITS" = "1" ]; then
  cat >> "$work/sluice.toml" <<TOML
[limits]
cps = 1000000
channels = 10000000
per_ip = { cps = 1000000, channels = 10000000 }
[[customer]]
name = "loadtest"
ips = ["127.0.0.0/8"]
cps = 1000000
channels = 10000000
[[did]]
number = "service"
cps = 1000000
channels = 10000000
TOML
  sed -i 's/^carriers = \["uas"\]$/carriers = ["uas"]\ncps = 1000000\nchannels = 10000000/; s/^gateways = \["'"$TRANSPORT"':\/\/127.0.0.1:'"$UAS_PORT"'"\]$/&\ncps = 1000000\nchannels = 10000000\ngateway_cps = 1000000\ngateway_channels = 10000000/' "$work/sluice.toml"
fi

if [ -n "$REDIS_URL" ]; then
  printf '[cluster]\nredis = "%s"\nnode = "load"\n' "$REDIS_URL" >> "$work/sluice.toml"
fi

"$BIN" run --config "$work/sluice.toml" 2>"$work/sluice.log" &
PID=$!
(cd "$work" && exec sipp -sn uas -t "$SIPP_T" -i 127.0.0.1 -p "$UAS_PORT" -buff_size 4194304 -nostdin >/dev/null 2>&1) &
UAS=$!
sleep 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
count() { grep -E "^ *$1" "$2" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}'; }
# A metric's value from the admin API (plain HTTP over bash's /dev/tcp: no curl needed).
metric() {
  exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT" || return 0
  printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&3
  awk -v m="$1" '$1 == m {print $2}' <&3
  exec 3<&-
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "command: WITH_LIMITS=$WITH_LIMITS REDIS_URL=$REDIS_URL TRANSPORT=$TRANSPORT LOG_LEVEL=$LOG_LEVEL WORKERS=$WORKERS benches/sipp-load.sh $START $STEP $MAX $SECS"
printf "%8s %8s %8s %8s %14s %10s %10s\n" rate calls ok failed cpu_s/1000 peak_rss unanswered
best=0
for ((rate = START; rate <= MAX; rate += STEP)); do
  calls=$((rate * SECS))
  before=$(cpu_ticks)
  late_before=$(metric sluice_cluster_unanswered_total)
  start_ns=$(date +%s%N)
  (cd "$work" && timeout $((SECS * 3 + 30)) sipp -sn uac -t "$SIPP_T" "127.0.0.1:$PROXY_PORT" -i 127.0.0.1 -p "$UAC_PORT" -r "$rate" -m "$calls" -buff_size 4194304 \
      -l $((rate * 4)) -nostdin -timeout $((SECS * 3 + 20)) >"$work/uac.out" 2>&1) || true
  elapsed_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  after=$(cpu_ticks)
  ok=$(count "Successful call" "$work/uac.out"); ok=${ok:-0}
  failed=$(count "Failed call" "$work/uac.out"); failed=${failed:-0}
  cpu=$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$ok" 'BEGIN { if (n > 0) printf "%.3f", t / hz / n * 1000; else print "-" }')
  rss=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$PID/status")
  # With [cluster]: new calls Redis did not answer in time (decided by on_failure instead).
  late_after=$(metric sluice_cluster_unanswered_total)
  late=$([ -n "$late_after" ] && echo $((late_after - ${late_before:-0})) || echo -)
  printf "%8s %8s %8s %8s %14s %10s %10s\n" "$rate" "$calls" "$ok" "$failed" "$cpu" "$rss" "$late"
  # SIPp could not generate the rate (it took far longer than planned): stop, not a proxy failure.
  if [ "$failed" != "0" ] || [ "$ok" != "$calls" ]; then
    echo "stopped: failures at $rate calls/s"
    break
  fi
  # A call Redis did not answer was limited by this node alone: not carried by the cluster.
  if [ "$late" != "-" ] && [ "$late" != "0" ]; then
    echo "stopped: $late calls unanswered by Redis in time at $rate calls/s"
    break
  fi
  if [ "$elapsed_ms" -gt $((SECS * 1000 * 3 / 2)) ]; then
    echo "stopped: SIPp needed ${elapsed_ms} ms for a ${SECS} s step (generator-bound at $rate calls/s)"
    best=$rate
    break
  fi
  best=$rate
  sleep 2
done
echo "highest rate with zero failed calls: $best calls/s"
