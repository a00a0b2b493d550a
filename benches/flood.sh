#!/usr/bin/env bash
# A flood of INVITEs from distinct spoofed loopback sources against the release build, with
# SIPp's uas as the PBX (it answers 180/200 and never hangs up) and callers that never ACK
# (the flood sends nothing but INVITEs). Reports what sluice admitted and refused, the
# kernel's receive drops, peak RSS and RSS 40 s after, and channels in use after 64*T1.
# Loopback only, bounded in count and time. Needs root (raw socket) and sipp.
#
# Usage: benches/flood.sh [COUNT] [SECONDS]     (defaults: 300000 INVITEs, at most 30 s)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-300000}
SECS=${2:-30}
PROXY_PORT=${PROXY_PORT:-26060}
UAS_PORT=${UAS_PORT:-26070}
ADMIN_PORT=${ADMIN_PORT:-26090}
command -v sipp >/dev/null || { echo "sipp not found: apt-get install sip-tester" >&2; exit 1; }
BIN=target/release/sluice
[ -x "$BIN" ] || cargo build --release

work=$(mktemp -d)
cleanup() { kill "${UAS:-}" "${PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/sluice.toml" <<TOML
[server]
listen = ["udp://127.0.0.1:$PROXY_PORT"]
admin = "127.0.0.1:$ADMIN_PORT"
[log]
format = "json"
level = "warn"
[[carrier]]
name = "uas"
gateways = ["udp://127.0.0.1:$UAS_PORT"]
[[route]]
prefix = ""
carriers = ["uas"]
[limits]
cps = 1000
per_ip = { cps = 5, channels = 5 }
TOML

sipp -sn uas -i 127.0.0.1 -p "$UAS_PORT" -bg -nostdin >/dev/null 2>&1 &
sleep 0.5
UAS=$(pgrep -n -f "sipp -sn uas -i 127.0.0.1 -p $UAS_PORT" || true)
"$BIN" run --config "$work/sluice.toml" >"$work/log" 2>&1 &
PID=$!
sleep 1

metric() { curl -s "127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m { print $2; exit }'; }
rss() { awk '/^VmRSS/ { print int($2 / 1024) }' "/proc/$PID/status"; }
hwm() { awk '/^VmHWM/ { print int($2 / 1024) }' "/proc/$PID/status"; }
rcvbuf() { awk '/^Udp:/ && $2 ~ /^[0-9]/ { print $6 }' /proc/net/snmp; }

echo "sluice pid $PID, RSS before: $(rss) MiB"
drops_before=$(rcvbuf)
t0=$(date +%s)
python3 benches/flood_send.py "$PROXY_PORT" "$COUNT" "$SECS"
sleep 2
drops=$(( $(rcvbuf) - drops_before ))
admitted=$(metric 'sluice_calls_total{outcome="admitted"}')
cps=$(metric 'sluice_calls_total{outcome="rejected_cps"}')
chans=$(metric 'sluice_calls_total{outcome="rejected_channels"}')
echo "admitted $admitted, refused ${cps} (cps) + ${chans} (channels), kernel receive drops $drops"
echo "RSS now $(rss) MiB, peak $(hwm) MiB"
# 64*T1 after the last 2xx plus a margin: every un-ACKed call must be gone.
wait_for=$(( t0 + 45 - $(date +%s) )); [ "$wait_for" -gt 0 ] && sleep "$wait_for"
echo "after 64*T1: channels in use $(metric 'sluice_active_calls{name="",scope="server"}'), unacked calls ended $(metric sluice_calls_unacked_total)"
sleep 40
echo "RSS 40 s later: $(rss) MiB, peak $(hwm) MiB"
