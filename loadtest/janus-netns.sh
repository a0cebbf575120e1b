#!/usr/bin/env bash
# Run Janus Gateway (Debian package "janus", 1.1.2) as a comparison SFU inside
# a private network namespace, for the load benchmark. Needs root.
#
# Usage:
#   loadtest/janus-netns.sh install          apt-get install janus if missing
#   loadtest/janus-netns.sh up   [NAME]      namespace + veth + start Janus, wait for ws
#   loadtest/janus-netns.sh exec NAME -- CMD...   run CMD inside the namespace
#                                            (same as: ip netns exec NAME CMD...)
#   loadtest/janus-netns.sh pid  [NAME]      print Janus's pid (for /proc/PID/stat)
#   loadtest/janus-netns.sh down [NAME]      stop Janus, delete the namespace
#
# NAME defaults to "hzbench". Inside the namespace:
#   lo    127.0.0.1/8 (and ::1)
#   hzj0  127.0.0.2/8, one end of the veth pair hzj0<->hzj1. Both ends stay in
#         the namespace; hzj1 has no address. libnice refuses to gather on
#         "lo", hence 127.0.0.2 on a veth. Janus pins its media sockets to
#         hzj0, so its packets to 127.0.0.1 (or any other 127/8 address not on
#         hzj0) go out hzj0 and come back in on hzj1: that needs the
#         route_localnet/accept_local sysctls set in net_up below.
# The namespace has no other interface and no default route, so nothing
# Janus or a load generator does can leave 127.0.0.0/8.
# Janus signalling: ws://127.0.0.2:8188/ (subprotocol "janus-protocol"),
# reachable only from inside the namespace. Media: host candidates
# 127.0.0.2:20000-40000/udp.
#
# Environment:
#   HZ_JANUS_STATE   state dir for NAME.pid and NAME.log (default /tmp/hz-janus)
#   HZ_JANUS_DEBUG   Janus debug level 0-7 (default 3 = warnings; 4 = info)
#   HZ_JANUS_CONF    config folder (default: loadtest/janus next to this script)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF="${HZ_JANUS_CONF:-$HERE/janus}"
STATE="${HZ_JANUS_STATE:-/tmp/hz-janus}"
DEBUG_LEVEL="${HZ_JANUS_DEBUG:-3}"
IFACE=hzj0
PEER=hzj1
ADDR=127.0.0.2
WS_PORT=8188

die() { echo "janus-netns: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (ip netns)"; }

cmd_install() {
	command -v janus >/dev/null 2>&1 && return 0
	need_root
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq janus >/dev/null 2>&1; then
		apt-get update -qq >/dev/null
		apt-get install -y -qq janus >/dev/null
	fi
	command -v janus >/dev/null 2>&1 || die "janus still missing after apt-get install"
}

pidfile() { echo "$STATE/$1.pid"; }
logfile() { echo "$STATE/$1.log"; }

# Prints the pid if the pid file names a live janus process.
live_pid() {
	local f pid
	f="$(pidfile "$1")"
	[ -f "$f" ] || return 1
	pid="$(cat "$f")"
	[ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = janus ] || return 1
	echo "$pid"
}

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }

# WebSocket handshake against Janus from inside the namespace; true on "101".
ws_ready() {
	ip netns exec "$1" timeout 3 bash -c '
		exec 3<>/dev/tcp/'"$ADDR"'/'"$WS_PORT"' || exit 1
		printf "GET / HTTP/1.1\r\nHost: '"$ADDR"':'"$WS_PORT"'\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: janus-protocol\r\n\r\n" >&3
		IFS= read -r line <&3
		case "$line" in *" 101 "*) exit 0;; *) exit 1;; esac
	' 2>/dev/null
}

net_up() {
	local ns="$1"
	ns_exists "$ns" || ip netns add "$ns"
	ip -n "$ns" link set lo up
	if ! ip -n "$ns" link show "$IFACE" >/dev/null 2>&1; then
		ip -n "$ns" link add "$IFACE" type veth peer name "$PEER"
	fi
	if ! ip -n "$ns" -4 addr show dev "$IFACE" | grep -q "inet $ADDR/"; then
		ip -n "$ns" addr add "$ADDR/8" dev "$IFACE"
	fi
	# No IPv6 (no link-local address, no ND/MLD chatter) and no multicast on
	# the veth: it only exists to carry 127.0.0.2.
	local dev
	for dev in "$IFACE" "$PEER"; do
		ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=1"
		ip -n "$ns" link set "$dev" multicast off
	done
	# libnice pins each media socket to its interface (IP_UNICAST_IF = hzj0).
	# Without the sysctls below Janus can then only send to addresses that are
	# on hzj0 itself: sendmsg() from 127.0.0.2 to e.g. 127.0.0.1 fails with
	# EINVAL (loopback source leaving a non-loopback device). With them, such
	# packets leave hzj0, cross the veth, and hzj1 delivers them locally:
	#   route_localnet on hzj0  - allow 127/8 to be routed out of hzj0
	#   route_localnet on hzj1  - accept 127/8 destinations (and ARP) on hzj1
	#   accept_local   on hzj1  - accept packets whose source (127.0.0.2) is local
	#   rp_filter=0    on hzj1  - no reverse-path check (already 0 by default)
	ip netns exec "$ns" sysctl -qw \
		"net.ipv4.conf.$IFACE.route_localnet=1" \
		"net.ipv4.conf.$PEER.route_localnet=1" \
		"net.ipv4.conf.$PEER.accept_local=1" \
		"net.ipv4.conf.$PEER.rp_filter=0"
	ip -n "$ns" link set "$PEER" up
	ip -n "$ns" link set "$IFACE" up
}

cmd_up() {
	local ns="${1:-hzbench}" pid log i
	need_root
	cmd_install
	[ -f "$CONF/janus.jcfg" ] || die "no $CONF/janus.jcfg"
	[ -d /usr/lib/x86_64-linux-gnu/janus/plugins ] ||
		die "janus plugins not in /usr/lib/x86_64-linux-gnu/janus (edit the *_folder paths in $CONF/janus.jcfg)"
	mkdir -p "$STATE"
	net_up "$ns"
	if pid="$(live_pid "$ns")"; then
		echo "janus already running in $ns (pid $pid)"
		return 0
	fi
	log="$(logfile "$ns")"
	: >"$log"
	# Many handles = many sockets and timers.
	ulimit -n 65536 2>/dev/null || true
	# ip netns exec and setsid both exec (no fork: a background job of a
	# script is no process-group leader), so $! is Janus's own pid.
	setsid ip netns exec "$ns" janus \
		--configs-folder="$CONF" --config="$CONF/janus.jcfg" \
		--debug-level="$DEBUG_LEVEL" --disable-colors --debug-timestamps \
		--disable-stdout --log-file="$log" \
		</dev/null >>"$log.stdout" 2>&1 &
	pid=$!
	echo "$pid" >"$(pidfile "$ns")"
	for i in $(seq 1 100); do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 30 "$log" "$log.stdout" >&2 || true
			die "janus exited during startup (log: $log)"
		fi
		if ws_ready "$ns"; then
			echo "janus up in netns $ns: pid $pid, ws://$ADDR:$WS_PORT/ (janus-protocol), log $log"
			return 0
		fi
		sleep 0.2
	done
	tail -n 30 "$log" >&2 || true
	die "janus websocket transport did not answer within 20s (log: $log)"
}

cmd_down() {
	local ns="${1:-hzbench}" pid f i
	f="$(pidfile "$ns")"
	if pid="$(live_pid "$ns")"; then
		kill -TERM "$pid" 2>/dev/null || true
		for i in $(seq 1 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$f"
	if ns_exists "$ns"; then
		need_root
		ip netns del "$ns"
	fi
	return 0
}

cmd_pid() {
	local ns="${1:-hzbench}"
	live_pid "$ns" || die "janus not running for $ns"
}

cmd_exec() {
	local ns="${1:-}"
	[ -n "$ns" ] || die "usage: $0 exec NAME -- CMD..."
	shift
	[ "${1:-}" = "--" ] && shift
	[ $# -gt 0 ] || die "usage: $0 exec NAME -- CMD..."
	exec ip netns exec "$ns" "$@"
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
	install) cmd_install ;;
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	pid) cmd_pid "$@" ;;
	exec) cmd_exec "$@" ;;
	*) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
