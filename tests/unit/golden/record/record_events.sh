#!/bin/sh
# Record real ExaBGP JSON events for tests/unit/test_events*.py (run once, as root).
# ns "rec1": ExaBGP (the podbgp side, this recorder as its API process)
# ns "rec2": BIRD 2 (iBGP, 10.99.0.2) and a second ExaBGP (eBGP, 10.99.0.3 / fd00::3)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../../.." && pwd)
EXA=$REPO/.venv/bin/exabgp
PY=$REPO/.venv/bin/python
T=$(mktemp -d)
N1=rec1$$; N2=rec2$$
cleanup() {
  for p in $(cat "$T"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  ip netns del "$N1" 2>/dev/null || true; ip netns del "$N2" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
ip netns add "$N1"; ip netns add "$N2"
ip link add v1$$ type veth peer name v2$$
ip link set v1$$ netns "$N1"; ip link set v2$$ netns "$N2"
ip -n "$N1" link set lo up; ip -n "$N2" link set lo up
ip -n "$N1" addr add 10.99.0.1/24 dev v1$$; ip -n "$N1" addr add fd00::1/64 dev v1$$ nodad
ip -n "$N2" addr add 10.99.0.2/24 dev v2$$; ip -n "$N2" addr add 10.99.0.3/24 dev v2$$
ip -n "$N2" addr add fd00::3/64 dev v2$$ nodad
ip -n "$N1" link set v1$$ up; ip -n "$N2" link set v2$$ up
cat > "$T/rec.conf" <<CONF
process rec { run $PY $HERE/recorder.py; encoder json; }
template { neighbor base {
  router-id 10.99.0.1; local-as 65000; hold-time 30; passive true; adj-rib-in false;
  capability { graceful-restart 120; route-refresh; }
  api { processes [ rec ]; neighbor-changes; receive { parsed; update; notification; open; refresh; } }
} }
neighbor 10.99.0.2 { inherit base; local-address 10.99.0.1; peer-as 65000; passive false; family { ipv4 unicast; } }
neighbor 10.99.0.3 { inherit base; local-address 10.99.0.1; peer-as 65003; family { ipv4 unicast; } }
neighbor fd00::3 { inherit base; local-address fd00::1; peer-as 65003; family { ipv6 unicast; } }
CONF
sed "s#SENDER_SCRIPT#$HERE/sender_script.sh#" "$HERE/sender.conf" > "$T/sender.conf"
OUT=${1:-$HERE/../events_recorded.jsonl}
: > "$OUT"
ENV="exabgp.daemon.user=root exabgp.daemon.drop=false exabgp.api.ack=true exabgp.api.cli=false exabgp.log.level=WARNING"
ip netns exec "$N1" env $ENV exabgp.tcp.bind="10.99.0.1 fd00::1" REC_OUT="$OUT" "$EXA" server "$T/rec.conf" > "$T/rec.log" 2>&1 &
echo $! > "$T/rec.pid"
ip netns exec "$N2" bird -f -c "$HERE/bird.conf" -s "$T/bird.ctl" -P "$T/bird.pid2" > "$T/bird.log" 2>&1 &
echo $! > "$T/bird.pid"
ip netns exec "$N2" env $ENV "$EXA" server "$T/sender.conf" > "$T/sender.log" 2>&1 &
echo $! > "$T/sender.pid"
sleep 9
# The eBGP peer stops: NOTIFICATION (cease) + down events are recorded.
kill "$(cat "$T/sender.pid")" || true
sleep 2
cat "$T/rec.log" "$T/sender.log" >&2
