#!/usr/bin/env bash
# Publish a test broadcast over WHIP with Debian's simple-whip-client (`whip-client`, apt package
# simple-whip-client): VP8 video (videotestsrc, 640x360 at 30 fps, a moving ball) and Opus audio
# (audiotestsrc, a 440 Hz tone), from inside a network namespace made by tests/impair/netns.sh.
#
# Usage (as root):  tests/whip/publish.sh NAME URL [whip-client options...]
#   NAME  the namespace's name as given to `netns.sh up NAME` (runs in hzi-NAME)
#   URL   the WHIP endpoint, e.g. http://127.77.3.1:8080/whip/room/lecture (the root side of the
#         namespace's veth: the only address the namespace reaches)
#   more options go to whip-client, e.g. `-t TOKEN` (Bearer token), `-n` (no trickle: the
#   candidates in the offer), `-l 4` (less logging; the default here, 5, prints the offer and
#   every candidate sent).
# The script ends in `exec`: its pid is whip-client's, which on SIGTERM/SIGINT sends the DELETE
# for its session and exits.
#
# Why a namespace: libnice gathers host candidates on every interface except loopback ones
# (IFF_LOOPBACK), so in the root namespace it would offer the machine's real addresses. In the
# namespace the only non-loopback interface is the veth, 127.77.X.2/24: that is its one host
# address (UDP, plus ICE-TCP active/passive), and no STUN or TURN server is given (whip-client
# uses none unless -S/-T/-f are given; webrtcbin's stun-server defaults to none).
#
# Why LD_LIBRARY_PATH: see gupnp_igd_stub.c (the packaged client aborts on bookworm otherwise);
# the stub is built once into HUIZHEN_WHIP_CACHE (default /tmp/huizhen-whip-cache) with gcc.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
NAME="${1:?usage: publish.sh NAME URL [whip-client options...]}"
URL="${2:?usage: publish.sh NAME URL [whip-client options...]}"
shift 2
CACHE="${HUIZHEN_WHIP_CACHE:-/tmp/huizhen-whip-cache}"
LIB="$CACHE/libgupnp-igd-1.0.so.4"

command -v whip-client >/dev/null 2>&1 || {
  echo "publish.sh: whip-client not found: apt-get install -y simple-whip-client gstreamer1.0-nice gstreamer1.0-plugins-bad gstreamer1.0-plugins-good gstreamer1.0-plugins-base" >&2
  exit 3
}
if [ ! -f "$LIB" ] || [ "$HERE/gupnp_igd_stub.c" -nt "$LIB" ]; then
  mkdir -p "$CACHE"
  gcc -O2 -Wall -shared -fPIC -Wl,-soname,libgupnp-igd-1.0.so.4 -o "$LIB.tmp.$$" "$HERE/gupnp_igd_stub.c"
  mv -f "$LIB.tmp.$$" "$LIB"
fi

VIDEO="videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 ! videoconvert ! queue ! vp8enc deadline=1 target-bitrate=800000 ! rtpvp8pay pt=96 ssrc=2 ! queue ! application/x-rtp,media=video,encoding-name=VP8,payload=96"
AUDIO="audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample ! queue ! opusenc ! rtpopuspay pt=111 ssrc=1 ! queue ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111"

exec ip netns exec "hzi-$NAME" env LD_LIBRARY_PATH="$CACHE${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  whip-client -u "$URL" -A "$AUDIO" -V "$VIDEO" -o -L -l 5 "$@"
