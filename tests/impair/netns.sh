#!/usr/bin/env bash
# Impairment harness: one network namespace per impaired participant, joined to the root
# namespace by a veth pair addressed inside 127.0.0.0/8, so all traffic stays on this machine.
#
#   root namespace                                   namespace hzi-NAME
#   server, good participants                        weak participant (its own Chromium)
#   hzr-NAME 127.77.X.1/24  <------- veth ------->   hzn-NAME 127.77.X.2/24
#            egress: tc tbf (rate)                            INPUT: iptables statistic DROP (loss)
#                                                             INPUT: NFQUEUE -> nfq_delay (delay)
#
# Only the namespace's DOWNLINK is impaired: the rate limit shapes the root side's egress toward
# the namespace; loss and delay act on what the namespace receives (a DROP on the sender's own
# OUTPUT would make its sendmmsg fail instead of losing the packet). The kernel here has no
# sch_netem, hence tbf + iptables + the user-space delay helper (nfq_delay.c, built on first use).
#
# 127/8 on a non-loopback interface needs: route_localnet=1 on both ends, and a /32 route in the
# `local` table of each side (that table's `local 127.0.0.0/8 dev lo` would otherwise swallow the
# peer's address). Packets the namespace sends from 127.0.0.1 toward the root side are dropped by
# the root side as martians, so only the veth address is usable across: good.
#
# Usage (as root):
#   netns.sh up NAME            create (idempotent); prints KEY=VALUE lines: NS ROOT_IF NS_IF
#                               ROOT_ADDR NS_ADDR
#   netns.sh info NAME          the same KEY=VALUE lines for an existing namespace
#   netns.sh shape NAME [--rate 300kbit] [--loss 0.10] [--delay 50] [--burst BYTES] [--queue-ms MS]
#                               replace the impairment (clear first); rate as tc understands it
#                               (bit, kbit, mbit), loss a probability, delay in ms (or "50ms")
#   netns.sh clear NAME         remove every impairment (idempotent)
#   netns.sh down NAME          stop what runs in the namespace, delete it and the veth pair
#                               (idempotent)
#   netns.sh exec NAME CMD...   run CMD inside the namespace
#   netns.sh link2 NAME         a second network for the namespace (a phone's 4G beside its
#                               Wi-Fi): veth hzs-NAME 127.78.X.1/24 <-> hzt-NAME 127.78.X.2/24,
#                               with a source rule so 127.78.X.2 reaches ROOT_ADDR through it;
#                               prints LINK2_ROOT_IF LINK2_NS_IF LINK2_ADDR (idempotent)
#   netns.sh link NAME 1|2 up|down
#                               take the namespace side of network 1 (the first veth) or 2 down
#                               (its address removed, then the link: the phone leaves the Wi-Fi)
#                               or up again
#   netns.sh prefer NAME 1|2     which network new connections use (the default route)
#   netns.sh blackhole NAME 1|2 on|off [up]
#                               drop everything network 1 or 2 carries, on both receiving sides
#                               (a path that goes dark without the interface going down); with
#                               `up`, only what the namespace sends (its uplink breaks, its
#                               downlink works)
#   netns.sh rebind NAME prepare|now
#                               a NAT rebinding on network 1 (a carrier's NAT gives the phone's
#                               UDP flows a new public port mid-call; the phone does not know):
#                               `prepare`, before the call, leaves the namespace's UDP untracked so
#                               no NAT state pins a flow; `now` maps every UDP flow leaving through
#                               network 1 to a new source port (61000-61999). What is sent to the
#                               old port still arrives.
#   netns.sh check              exit 0 if this machine can run the harness, else print why, exit 3
# NAME: 1-10 characters [a-z0-9]. State lives in /run/huizhen-impair/.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE_DIR=/run/huizhen-impair
CACHE_DIR="${HUIZHEN_IMPAIR_CACHE:-/tmp/huizhen-impair-cache}"
DELAY_BIN="$CACHE_DIR/nfq_delay"
QUEUE_NUM=0 # NFQUEUE numbers are per network namespace: 0 in each of ours.

say() { printf 'netns.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

check_name() {
  [[ "${1:-}" =~ ^[a-z0-9]{1,10}$ ]] || die "NAME must be 1-10 characters [a-z0-9], got '${1:-}'"
}

names() {
  NS="hzi-$1"
  ROOT_IF="hzr-$1"
  NS_IF="hzn-$1"
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$NS"; }

print_info() {
  local x
  x="$(cat "$STATE_DIR/$1.subnet")"
  printf 'NS=%s\nROOT_IF=%s\nNS_IF=%s\nROOT_ADDR=127.77.%s.1\nNS_ADDR=127.77.%s.2\n' "$NS" "$ROOT_IF" "$NS_IF" "$x" "$x"
}

# A free 127.77.X.0/24 (X in 1..254): not on any interface of the root namespace. Called under
# the state lock, so parallel `up`s do not pick the same X.
free_subnet() {
  local used x
  used="$(ip -o -4 addr show | awk '{print $4}' | sed -n 's#^127\.77\.\([0-9]*\)\..*#\1#p' | sort -u)"
  for x in $(cat "$STATE_DIR"/*.subnet 2>/dev/null) ; do used="$used"$'\n'"$x"; done
  for x in $(seq 1 254); do
    if ! grep -qx "$x" <<<"$used"; then echo "$x"; return 0; fi
  done
  die "no free 127.77.X.0/24 subnet"
}

cmd_up() {
  check_name "${1:-}"; names "$1"
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock -w 10 9 || die "state lock busy"
  if ns_exists && [ -f "$STATE_DIR/$1.subnet" ] && ip link show "$ROOT_IF" >/dev/null 2>&1; then
    say "up $1: exists already"
    print_info "$1"
    return 0
  fi
  # Leftovers of a half-made namespace are removed first.
  ip netns del "$NS" 2>/dev/null || true
  ip link del "$ROOT_IF" 2>/dev/null || true
  local x
  x="$(free_subnet)"
  echo "$x" >"$STATE_DIR/$1.subnet"
  local ra="127.77.$x.1" na="127.77.$x.2"
  ip netns add "$NS"
  ip link add "$ROOT_IF" type veth peer name "$NS_IF"
  ip link set "$NS_IF" netns "$NS"
  # Root side.
  sysctl -qw "net.ipv4.conf.$ROOT_IF.route_localnet=1"
  sysctl -qw "net.ipv6.conf.$ROOT_IF.disable_ipv6=1" 2>/dev/null || true
  ip addr add "$ra/24" dev "$ROOT_IF"
  ip link set "$ROOT_IF" up
  ip route replace "$na/32" dev "$ROOT_IF" src "$ra" table local
  # Namespace side.
  ip -n "$NS" link set lo up
  ip netns exec "$NS" sysctl -qw net.ipv4.conf.all.route_localnet=1 "net.ipv4.conf.$NS_IF.route_localnet=1"
  ip netns exec "$NS" sysctl -qw "net.ipv6.conf.$NS_IF.disable_ipv6=1" 2>/dev/null || true
  ip -n "$NS" addr add "$na/24" dev "$NS_IF"
  ip -n "$NS" link set "$NS_IF" up
  ip -n "$NS" route replace "$na/32" dev "$NS_IF" table local type local src "$na" 2>/dev/null || true
  ip -n "$NS" route replace "$ra/32" dev "$NS_IF" src "$na" table local
  say "up $1: namespace $NS, $ROOT_IF $ra/24 <-> $NS_IF $na/24 (route_localnet=1, /32 routes in table local)"
  print_info "$1"
}

build_delay_helper() {
  local src="$HERE/nfq_delay.c"
  if [ -x "$DELAY_BIN" ] && [ "$DELAY_BIN" -nt "$src" ]; then return 0; fi
  [ -f /usr/include/libnetfilter_queue/libnetfilter_queue.h ] ||
    die "libnetfilter_queue.h missing: apt-get install -y libnetfilter-queue-dev"
  mkdir -p "$CACHE_DIR"
  gcc -O2 -Wall -o "$DELAY_BIN.tmp.$$" "$src" -lnetfilter_queue
  mv -f "$DELAY_BIN.tmp.$$" "$DELAY_BIN"
  say "built $DELAY_BIN"
}

stop_delay_helper() {
  local pidfile="$STATE_DIR/$1.delay.pid" pid i
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  # Only our helper: the pid must still be an nfq_delay process.
  if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q nfq_delay; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    say "stopped delay helper (pid $pid)"
  fi
  rm -f "$pidfile"
}

cmd_clear() {
  check_name "${1:-}"; names "$1"
  stop_delay_helper "$1"
  if ip link show "$ROOT_IF" >/dev/null 2>&1; then
    tc qdisc del dev "$ROOT_IF" root 2>/dev/null || true
  fi
  if ns_exists; then
    ip netns exec "$NS" iptables -w 5 -F INPUT
  fi
  say "clear $1: no rate limit, loss or delay"
}

cmd_shape() {
  check_name "${1:-}"; names "$1"; local name="$1"; shift
  local rate="" loss="" delay="" burst="" queue_ms=200
  while [ $# -gt 0 ]; do
    case "$1" in
      --rate) rate="$2"; shift 2 ;;
      --loss) loss="$2"; shift 2 ;;
      --delay) delay="${2%ms}"; shift 2 ;;
      --burst) burst="$2"; shift 2 ;;
      --queue-ms) queue_ms="${2%ms}"; shift 2 ;;
      *) die "shape: unknown option $1" ;;
    esac
  done
  ns_exists || die "shape $name: namespace $NS does not exist (run up first)"
  cmd_clear "$name"
  local did=()
  if [ -n "$rate" ]; then
    local bps
    bps="$(rate_bps "$rate")"
    # Burst: 10 ms at the rate, at least two full-size packets. Queue: packets waiting longer
    # than queue_ms are dropped (a bounded bottleneck buffer, like a mobile link's).
    [ -n "$burst" ] || burst=$(( bps / 800 > 3200 ? bps / 800 : 3200 ))
    tc qdisc replace dev "$ROOT_IF" root tbf rate "$rate" burst "$burst" latency "${queue_ms}ms"
    did+=("rate $rate (tbf on $ROOT_IF egress, burst $burst B, queue ${queue_ms} ms)")
  fi
  if [ -n "$loss" ]; then
    [[ "$loss" =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] || die "shape: --loss wants a probability 0..1, got $loss"
    ip netns exec "$NS" iptables -w 5 -A INPUT -i "$NS_IF" -m statistic --mode random --probability "$loss" -j DROP
    did+=("loss $loss (iptables statistic DROP on $NS INPUT from $NS_IF)")
  fi
  if [ -n "$delay" ] && [ "$delay" != 0 ]; then
    [[ "$delay" =~ ^[0-9]+$ ]] || die "shape: --delay wants milliseconds, got $delay"
    build_delay_helper
    mkdir -p "$STATE_DIR"
    local log="$STATE_DIR/$name.delay.log" i
    : >"$log"
    ip netns exec "$NS" "$DELAY_BIN" -q "$QUEUE_NUM" -d "$delay" -t 7200 </dev/null >>"$log" 2>&1 &
    echo $! >"$STATE_DIR/$name.delay.pid"
    for i in $(seq 1 50); do grep -q 'nfq_delay: queue' "$log" && break; sleep 0.1; done
    grep -q 'nfq_delay: queue' "$log" || { cat "$log" >&2; die "delay helper did not start"; }
    # After the loss rule: dropped packets are not delayed. --queue-bypass: without a listener
    # packets pass undelayed instead of being dropped.
    ip netns exec "$NS" iptables -w 5 -A INPUT -i "$NS_IF" -j NFQUEUE --queue-num "$QUEUE_NUM" --queue-bypass
    did+=("delay ${delay} ms (NFQUEUE $QUEUE_NUM on $NS INPUT, nfq_delay pid $(cat "$STATE_DIR/$name.delay.pid"))")
  fi
  [ ${#did[@]} -gt 0 ] || did=("nothing")
  say "shape $name (downlink of $NS): $(IFS=';'; echo "${did[*]}")"
}

# tc rate -> bits per second (integer).
rate_bps() {
  local r="${1,,}"
  case "$r" in
    *gbit) echo $(( ${r%gbit} * 1000000000 )) ;;
    *mbit) echo $(( ${r%mbit} * 1000000 )) ;;
    *kbit) echo $(( ${r%kbit} * 1000 )) ;;
    *bit) echo $(( ${r%bit} )) ;;
    *) die "rate '$1': use bit, kbit, mbit or gbit with an integer (e.g. 300kbit)" ;;
  esac
}

cmd_down() {
  check_name "${1:-}"; names "$1"
  stop_delay_helper "$1"
  if ns_exists; then
    # Whatever still runs in the namespace (a browser the caller did not close) was started
    # for this namespace: stop it by pid, TERM then KILL, bounded.
    local pids i
    pids="$(ip netns pids "$NS" 2>/dev/null || true)"
    if [ -n "$pids" ]; then
      say "down $1: stopping processes left in $NS: $(echo $pids)"
      kill -TERM $pids 2>/dev/null || true
      for i in $(seq 1 30); do [ -z "$(ip netns pids "$NS" 2>/dev/null)" ] && break; sleep 0.1; done
      pids="$(ip netns pids "$NS" 2>/dev/null || true)"
      [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$NS"
  fi
  ip link del "$ROOT_IF" 2>/dev/null || true
  ip link del "hzs-$1" 2>/dev/null || true
  local n
  for n in 1 2; do
    iptables -w 5 -D INPUT -j "HZBH$n-$1" 2>/dev/null || true
    iptables -w 5 -F "HZBH$n-$1" 2>/dev/null || true
    iptables -w 5 -X "HZBH$n-$1" 2>/dev/null || true
  done
  rm -f "$STATE_DIR/$1.subnet" "$STATE_DIR/$1.delay.log"
  say "down $1: namespace $NS and veth $ROOT_IF removed"
}

cmd_link2() {
  check_name "${1:-}"; names "$1"
  ns_exists && [ -f "$STATE_DIR/$1.subnet" ] || die "link2 $1: no such namespace"
  local x; x="$(cat "$STATE_DIR/$1.subnet")"
  local ra="127.77.$x.1" ra2="127.78.$x.1" na2="127.78.$x.2"
  local rif="hzs-$1" nif="hzt-$1"
  if ! ip link show "$rif" >/dev/null 2>&1; then
    ip link add "$rif" type veth peer name "$nif"
    ip link set "$nif" netns "$NS"
    sysctl -qw "net.ipv4.conf.$rif.route_localnet=1"
    sysctl -qw "net.ipv4.conf.$rif.rp_filter=0"
    sysctl -qw "net.ipv6.conf.$rif.disable_ipv6=1" 2>/dev/null || true
    ip addr add "$ra2/24" dev "$rif"
    ip link set "$rif" up
    ip route replace "$na2/32" dev "$rif" src "$ra" table local
    ip netns exec "$NS" sysctl -qw "net.ipv4.conf.$nif.route_localnet=1"
    ip netns exec "$NS" sysctl -qw "net.ipv6.conf.$nif.disable_ipv6=1" 2>/dev/null || true
    ip -n "$NS" addr add "$na2/24" dev "$nif"
    ip -n "$NS" link set "$nif" up
    ip -n "$NS" route replace "$na2/32" dev "$nif" table local type local src "$na2" 2>/dev/null || true
    # Routing to ROOT_ADDR like a phone's: what is bound to the second address leaves over the
    # second veth (table 178); anything else prefers network 1 (table 177) while it is up or
    # preferred, else network 2 (table 179). All ahead of the local table, whose 127/8 route
    # would deliver ROOT_ADDR inside the namespace once network 1's /32 route is gone.
    local na="127.77.$x.2"
    ip -n "$NS" route replace "$ra/32" dev "$nif" src "$na2" table 178
    ip -n "$NS" route replace "$ra/32" dev "$NS_IF" src "$na" table 177 2>/dev/null || true
    ip -n "$NS" route replace "$ra/32" dev "$nif" src "$na2" table 179
    # What is bound to the first address never leaves over the second network (a carrier drops
    # a foreign source address): over network 1 or nowhere.
    ip -n "$NS" route replace "$ra/32" dev "$NS_IF" src "$na" table 176 2>/dev/null || true
    ip -n "$NS" route replace unreachable default table 176
    ip -n "$NS" rule add pref 40 from "$na" lookup 176
    ip -n "$NS" rule add pref 50 from "$na2" lookup 178
    ip -n "$NS" rule add pref 60 lookup 177
    ip -n "$NS" rule add pref 70 lookup 179
    if ip -n "$NS" rule show pref 0 | grep -q local; then
      ip -n "$NS" rule add pref 100 lookup local
      ip -n "$NS" rule del pref 0
    fi
    say "link2 $1: $rif $ra2/24 <-> $nif $na2/24, $na2 reaches $ra over $nif"
  fi
  printf 'LINK2_ROOT_IF=%s\nLINK2_NS_IF=%s\nLINK2_ADDR=%s\n' "$rif" "$nif" "$na2"
}

# The interfaces of network 1 or 2: "ROOT_IF NS_IF".
link_ifs() {
  case "$2" in
    1) echo "hzr-$1 hzn-$1" ;;
    2) echo "hzs-$1 hzt-$1" ;;
    *) die "network must be 1 or 2, got '$2'" ;;
  esac
}

# Which network new connections use (the phone's default route): network 1 while its route
# exists (it also goes when its interface goes down), else network 2.
cmd_prefer() {
  check_name "${1:-}"; names "$1"
  local x; x="$(cat "$STATE_DIR/$1.subnet")"
  case "${2:-}" in
    1)
      ip -n "$NS" route replace "127.77.$x.1/32" dev "$NS_IF" src "127.77.$x.2" table 177
      ip -n "$NS" route replace "127.77.$x.1/32" dev "$NS_IF" src "127.77.$x.2" table 176
      ;;
    2) ip -n "$NS" route del "127.77.$x.1/32" table 177 2>/dev/null || true ;;
    *) die "prefer $1: network 1 or 2" ;;
  esac
  say "prefer $1: new connections use network $2"
}

cmd_rebind() {
  check_name "${1:-}"; names "$1"
  local x; x="$(cat "$STATE_DIR/$1.subnet")"
  local nx=(ip netns exec "$NS" iptables -w 5)
  case "${2:-}" in
    prepare)
      "${nx[@]}" -t raw -C OUTPUT -o "$NS_IF" -p udp -j CT --notrack 2>/dev/null ||
        "${nx[@]}" -t raw -A OUTPUT -o "$NS_IF" -p udp -j CT --notrack
      "${nx[@]}" -t raw -C PREROUTING -i "$NS_IF" -p udp -j CT --notrack 2>/dev/null ||
        "${nx[@]}" -t raw -A PREROUTING -i "$NS_IF" -p udp -j CT --notrack
      ;;
    now)
      # The NAT rule first, then tracking: the next packet of each flow opens a NAT mapping.
      "${nx[@]}" -t nat -A POSTROUTING -o "$NS_IF" -p udp -j SNAT --to-source "127.77.$x.2:61000-61999"
      "${nx[@]}" -t raw -D OUTPUT -o "$NS_IF" -p udp -j CT --notrack 2>/dev/null || true
      # Inbound tracking once the flows' next packets have opened their mappings (media flows
      # many times a second): an inbound packet first would open the flow unmapped.
      sleep 0.2
      "${nx[@]}" -t raw -D PREROUTING -i "$NS_IF" -p udp -j CT --notrack 2>/dev/null || true
      ;;
    *) die "rebind $1: prepare or now" ;;
  esac
  say "rebind $1: $2"
}

cmd_link() {
  check_name "${1:-}"; names "$1"
  local ifs; ifs="$(link_ifs "$1" "${2:-}")"
  local nif="${ifs#* }"
  local x; x="$(cat "$STATE_DIR/$1.subnet")"
  local addr; [ "$2" = 1 ] && addr="127.77.$x.2" || addr="127.78.$x.2"
  case "${3:-}" in
    # Leaving a network takes its address too (a phone out of its Wi-Fi's reach loses the
    # lease), which is what tells the browser that the network is gone.
    down)
      ip -n "$NS" addr flush dev "$nif"
      ip -n "$NS" link set "$nif" down
      ;;
    up)
      ip -n "$NS" link set "$nif" up
      ip -n "$NS" addr replace "$addr/24" dev "$nif"
      # The routes through it went with it: back as link2 and up made them.
      local ra="127.77.$x.1"
      if [ "$2" = 1 ]; then
        ip -n "$NS" route replace "$ra/32" dev "$nif" src "$addr" table local
        ip -n "$NS" route replace "$ra/32" dev "$nif" src "$addr" table 176 2>/dev/null || true
      else
        ip -n "$NS" route replace "127.78.$x.1/32" dev "$nif" src "$addr" table local
        ip -n "$NS" route replace "$ra/32" dev "$nif" src "$addr" table 178
        ip -n "$NS" route replace "$ra/32" dev "$nif" src "$addr" table 179
      fi
      ;;
    *) die "link $1 $2: say up or down" ;;
  esac
  say "link $1: network $2 ($nif) $3"
}

cmd_blackhole() {
  check_name "${1:-}"; names "$1"
  local ifs; ifs="$(link_ifs "$1" "${2:-}")"
  local rif="${ifs% *}" nif="${ifs#* }"
  # Our own chain in each namespace, so `off` removes exactly what `on` added.
  local chain="HZBH$2-$1"
  case "${3:-}" in
    on)
      iptables -w 5 -N "$chain" 2>/dev/null || true
      iptables -w 5 -F "$chain"
      iptables -w 5 -A "$chain" -i "$rif" -j DROP
      iptables -w 5 -C INPUT -j "$chain" 2>/dev/null || iptables -w 5 -I INPUT -j "$chain"
      ip netns exec "$NS" iptables -w 5 -N "$chain" 2>/dev/null || true
      ip netns exec "$NS" iptables -w 5 -F "$chain"
      if [ "${4:-}" != up ]; then
        ip netns exec "$NS" iptables -w 5 -A "$chain" -i "$nif" -j DROP
      fi
      ip netns exec "$NS" iptables -w 5 -C INPUT -j "$chain" 2>/dev/null ||
        ip netns exec "$NS" iptables -w 5 -I INPUT -j "$chain"
      ;;
    off)
      iptables -w 5 -D INPUT -j "$chain" 2>/dev/null || true
      iptables -w 5 -F "$chain" 2>/dev/null || true
      iptables -w 5 -X "$chain" 2>/dev/null || true
      ip netns exec "$NS" iptables -w 5 -D INPUT -j "$chain" 2>/dev/null || true
      ;;
    *) die "blackhole $1 $2: say on or off" ;;
  esac
  say "blackhole $1: network $2 $3${4:+ ($4)}"
}

cmd_info() {
  check_name "${1:-}"; names "$1"
  ns_exists && [ -f "$STATE_DIR/$1.subnet" ] || die "info $1: no such namespace"
  print_info "$1"
}

cmd_exec() {
  check_name "${1:-}"; names "$1"; shift
  exec ip netns exec "$NS" "$@"
}

# Can this machine run the harness? Tries everything in a throw-away namespace.
cmd_check() {
  local why=()
  [ "$(id -u)" = 0 ] || why+=("not root (uid $(id -u))")
  local c
  for c in ip tc iptables gcc flock; do command -v "$c" >/dev/null 2>&1 || why+=("$c not installed"); done
  [ -f /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || why+=("libnetfilter-queue-dev not installed")
  if [ ${#why[@]} -eq 0 ]; then
    local ns="hzchk-$$"
    # shellcheck disable=SC2064
    trap "ip netns del $ns 2>/dev/null || true" RETURN
    if ! ip netns add "$ns" 2>/dev/null; then
      why+=("cannot create network namespaces (ip netns add failed)")
    else
      ip -n "$ns" link set lo up
      ip netns exec "$ns" tc qdisc add dev lo root tbf rate 300kbit burst 3200 latency 200ms 2>/dev/null ||
        why+=("tc tbf unavailable")
      ip netns exec "$ns" iptables -w 5 -A INPUT -m statistic --mode random --probability 0.1 -j DROP 2>/dev/null ||
        why+=("iptables statistic match unavailable")
      ip netns exec "$ns" iptables -w 5 -A INPUT -j NFQUEUE --queue-num 0 --queue-bypass 2>/dev/null ||
        why+=("iptables NFQUEUE target unavailable")
      ip link add "hzchk$$a" type veth peer name "hzchk$$b" 2>/dev/null && ip link del "hzchk$$a" ||
        why+=("cannot create veth pairs")
    fi
  fi
  if [ ${#why[@]} -gt 0 ]; then
    printf 'netns.sh check: cannot run the impairment harness: %s\n' "$(IFS=';'; echo "${why[*]}")"
    exit 3
  fi
  echo "netns.sh check: ok (root, namespaces, veth, tbf, iptables statistic, NFQUEUE, gcc + libnetfilter_queue)"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  shape) shift; cmd_shape "$@" ;;
  clear) shift; cmd_clear "$@" ;;
  info) shift; cmd_info "$@" ;;
  exec) shift; cmd_exec "$@" ;;
  link2) shift; cmd_link2 "$@" ;;
  link) shift; cmd_link "$@" ;;
  prefer) shift; cmd_prefer "$@" ;;
  blackhole) shift; cmd_blackhole "$@" ;;
  rebind) shift; cmd_rebind "$@" ;;
  check) shift; cmd_check "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
