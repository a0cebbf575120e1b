#!/usr/bin/env python3
"""A huizhen participant built on aiortc, a third WebRTC stack next to webrtc-rs and Chromium.

Why: the server's SDP must work for every RFC-conforming client, not only for the two stacks
the other tests use. aiortc reads things differently from a browser (with max-bundle it takes
the remote candidates and `a=end-of-candidates` from the *last* m-section of each description,
it fires its "track" event for every m-line whose remote direction sends), so it catches SDP
that only happens to work in Chromium. tests/browser/interop.test.mjs runs it against a
Chromium page in one consultation and asserts on what this client prints.

What it does, over the WebSocket signaling of signaling/PROTOCOL.md:
  * signs in (`auth` with a token) and enters a call: as the patient of an appointment
    (`check_in`, waits for `ringing`, `accept_invitation`, `consultation_ready`,
    `join_consultation`), straight into a consultation (`join_consultation`), or an open room
    (`join`);
  * publishes a synthetic camera (a VideoStreamTrack drawing moving bars, VP8 only) and a tone
    (Opus) on transceivers offered **sendrecv** (aiortc's addTrack default), so that the server's
    answer direction for publish lines is exercised;
  * sends the first `offer` (with `sources`), applies the `answer`, sends its candidates as
    `candidate` messages and the empty end-of-candidates one, answers every server `offer`;
  * counts the decoded video and audio frames of each remote track and the mids of aiortc's
    "track" events, and keeps every SDP the server sent;
  * stops on "stop" (or EOF) on stdin, SIGTERM/SIGINT, or the hard --timeout, sends `leave`,
    and prints ONE JSON line with the results on stdout. Progress goes to stderr as lines
    `@@ {json}` (states, then counters every second) for the test driving it; logs go to stderr.

Network rule: loopback only. No STUN or TURN server is configured (aiortc's default is a public
STUN server, so `iceServers=[]` is passed explicitly; the TURN servers in `joined` are ignored),
aioice's host address discovery (`aioice.ice.get_host_addresses`, which leaves 127.0.0.1 out)
is replaced by one returning only 127.0.0.1, mDNS is disabled (aioice only uses it to resolve
remote `.local` candidates; here it raises instead of opening a multicast socket), and the
client checks that every local candidate it offers is 127.x before sending anything.

Usage (see tests/browser/interop.test.mjs):
  python aiortc_client.py --ws ws://127.0.0.1:PORT/ws --token JWT --appointment ID [--timeout 60]
"""

import argparse
import array
import asyncio
import fractions
import json
import math
import re
import signal
import sys
import threading
import time

import aioice.ice
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import AudioFrame, VideoFrame
import websockets

# ------------------------------------------------------------------------------------------
# Loopback only (see the module docstring).

LOOPBACK = "127.0.0.1"


def _loopback_host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list:
    return [LOOPBACK]


async def _no_mdns(*args, **kwargs):
    raise RuntimeError("mDNS is disabled in the huizhen interop client (loopback only)")


# aioice.ice.Connection.gather_candidates calls the module-level get_host_addresses by name.
aioice.ice.get_host_addresses = _loopback_host_addresses
aioice.ice.get_or_create_mdns_protocol = _no_mdns


def log(*parts):
    print("[aiortc-client]", *parts, file=sys.stderr, flush=True)


def progress(**fields):
    print("@@ " + json.dumps(fields, separators=(",", ":")), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Synthetic media


class BarsVideoTrack(VideoStreamTrack):
    """A 320x240 camera at 30 fps: a bright bar sweeping over a background whose shade changes,
    so every frame differs from the last and the encoder sends real pictures."""

    WIDTH = 320
    HEIGHT = 240

    def __init__(self):
        super().__init__()
        self.n = 0
        half_w, half_h = self.WIDTH // 2, self.HEIGHT // 2
        self.chroma = (bytes([90]) * (half_w * half_h), bytes([160]) * (half_w * half_h))

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=self.WIDTH, height=self.HEIGHT, format="yuv420p")
        y_plane = frame.planes[0]
        stride = y_plane.line_size
        shade = 40 + (self.n * 3) % 120
        bar = (self.n * 4) % self.WIDTH
        row = bytearray([shade]) * stride
        row[bar : min(bar + 24, self.WIDTH)] = bytes([235]) * (min(bar + 24, self.WIDTH) - bar)
        y_plane.update(bytes(row) * self.HEIGHT)
        for plane, fill in zip(frame.planes[1:], self.chroma):
            if plane.line_size == self.WIDTH // 2:
                plane.update(fill)
            else:
                plane.update(bytes([fill[0]]) * (plane.line_size * (self.HEIGHT // 2)))
        frame.pts = pts
        frame.time_base = time_base
        self.n += 1
        return frame


class ToneAudioTrack(AudioStreamTrack):
    """A 440 Hz tone, 48 kHz mono, 20 ms frames (not silence, so a receiver hears something)."""

    RATE = 48000
    SAMPLES = 960

    def __init__(self):
        super().__init__()
        period = self.RATE  # one second holds a whole number (440) of periods
        self.table = array.array(
            "h", (int(6000 * math.sin(2 * math.pi * 440 * i / self.RATE)) for i in range(period))
        ).tobytes()
        self.offset = 0

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if hasattr(self, "_timestamp"):
            self._timestamp += self.SAMPLES
            wait = self._start + (self._timestamp / self.RATE) - time.time()
            await asyncio.sleep(wait)
        else:
            self._start = time.time()
            self._timestamp = 0
        frame = AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        nbytes = self.SAMPLES * 2
        start = self.offset
        chunk = self.table[start : start + nbytes]
        if len(chunk) < nbytes:
            chunk += self.table[: nbytes - len(chunk)]
        self.offset = (start + nbytes) % len(self.table)
        frame.planes[0].update(chunk)
        frame.pts = self._timestamp
        frame.sample_rate = self.RATE
        frame.time_base = fractions.Fraction(1, self.RATE)
        return frame


# ------------------------------------------------------------------------------------------
# SDP helpers


def sdp_sections(sdp: str):
    """[(mid, kind, port, lines)] for each m-section."""
    out = []
    cur = None
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            parts = line[2:].split()
            cur = {"mid": None, "kind": parts[0], "port": int(parts[1]), "lines": []}
            out.append(cur)
        elif cur is not None and line:
            cur["lines"].append(line)
            if line.startswith("a=mid:"):
                cur["mid"] = line[len("a=mid:") :].strip()
    return out


def candidate_address(candidate: str) -> str:
    # candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
    parts = candidate.split()
    return parts[4] if len(parts) > 4 else ""


# ------------------------------------------------------------------------------------------
# The client


class Client:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.ws = None
        self.pc = None
        self.state = "starting"
        self.participant_id = None
        self.consultation = None
        self.errors = []
        self.events = []  # (t, direction, type) of signaling, without bodies
        self.server_sdps = []  # {"type": "answer"|"offer", "sdp": ...} in order of arrival
        self.client_offers = []  # our offers, as sent
        self.publish_mids = {}  # mid -> kind, of the transceivers we publish on
        self.local_candidates = []
        self.track_added = []  # the server's announcements
        self.track_events = []  # aiortc "track" events: {mid, kind, at}
        self.remote = {}  # mid -> counters
        self.consumers = []
        self.stop_event = asyncio.Event()
        self.stop_reason = None
        self.joined_at = None
        self.connected_at = None

    def elapsed(self):
        return round(time.monotonic() - self.t0, 3)

    def set_state(self, state):
        self.state = state
        progress(state=state, t=self.elapsed())

    def stop(self, reason):
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    async def send(self, msg):
        self.events.append([self.elapsed(), "out", msg["type"]])
        await self.ws.send(json.dumps(msg))

    # -- media session ------------------------------------------------------------------------

    def new_peer_connection(self):
        # No ICE servers at all: aiortc would otherwise use a public STUN server.
        # max-bundle as PROTOCOL.md asks: one transport for every m-line from the first offer on.
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        pc = RTCPeerConnection(configuration=config)
        assert config.iceServers == [], "no STUN/TURN server may be configured"

        @pc.on("track")
        def on_track(track):
            mid = None
            for t in pc.getTransceivers():
                if t.receiver.track is track:
                    mid = t.mid
            self.track_events.append({"mid": mid, "kind": track.kind, "t": self.elapsed()})
            log(f"track event: {track.kind} on mid {mid}")
            counters = self.remote.setdefault(
                mid, {"kind": track.kind, "frames": 0, "first_frame_at": None, "last_frame_at": None}
            )
            self.consumers.append(asyncio.ensure_future(self.consume(track, counters)))

        @pc.on("connectionstatechange")
        def on_connection_state():
            log("connection state", pc.connectionState)
            self.events.append([self.elapsed(), "local", f"connection_{pc.connectionState}"])
            if pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = self.elapsed()
            if pc.connectionState == "failed":
                self.errors.append("peer connection failed")

        return pc

    async def consume(self, track, counters):
        """Count decoded frames (RemoteStreamTrack.recv returns decoded av frames)."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            except Exception as err:  # a decoder failure ends the count, it is reported
                self.errors.append(f"{track.kind} recv: {err!r}")
                return
            now = self.elapsed()
            counters["frames"] += 1
            if counters["first_frame_at"] is None:
                counters["first_frame_at"] = now
            counters["last_frame_at"] = now
            if track.kind == "video":
                counters["width"] = frame.width
                counters["height"] = frame.height
            elif counters["frames"] % 10 == 1:
                # The loudest sample of every tenth frame: a tone or speech is far above silence.
                try:
                    samples = array.array("h", bytes(frame.planes[0]))
                    peak = max((abs(s) for s in samples), default=0)
                    counters["peak"] = max(counters.get("peak", 0), peak)
                except Exception:
                    pass

    async def publish_and_offer(self):
        pc = self.pc = self.new_peer_connection()
        camera = pc.addTrack(BarsVideoTrack())
        microphone = pc.addTrack(ToneAudioTrack())
        video_transceiver = next(t for t in pc.getTransceivers() if t.sender is camera)
        vp8 = [
            c
            for c in RTCRtpSender.getCapabilities("video").codecs
            if c.mimeType.lower() in ("video/vp8", "video/rtx")
        ]
        video_transceiver.setCodecPreferences(vp8)
        for t in pc.getTransceivers():
            assert t.direction == "sendrecv", f"addTrack gave {t.direction}, want sendrecv"

        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)  # gathers the (loopback) candidates
        sdp = pc.localDescription.sdp
        sources = {}
        for t in pc.getTransceivers():
            self.publish_mids[t.mid] = t.kind
            sources[t.mid] = "camera" if t.kind == "video" else "microphone"
        self.check_local_candidates(sdp)
        self.client_offers.append(sdp)
        await self.send({"type": "offer", "sdp": sdp, "sources": sources})
        self.set_state("offered")
        await self.trickle(sdp)

    def check_local_candidates(self, sdp):
        cands = re.findall(r"^a=(candidate:.*)$", sdp.replace("\r\n", "\n"), re.M)
        assert cands, "aiortc gathered no candidate"
        for c in cands:
            addr = candidate_address(c)
            assert addr.startswith("127."), f"a local candidate off loopback: {c}"
        for c in cands:
            if c not in self.local_candidates:
                self.local_candidates.append(c)

    async def trickle(self, sdp):
        """aiortc gathers before the offer is made and puts the candidates in it; the protocol
        has the client send them as `candidate` messages too, then the empty end marker."""
        first_mid = sdp_sections(sdp)[0]["mid"]
        for c in self.local_candidates:
            await self.send({"type": "candidate", "candidate": c, "sdp_mid": first_mid, "sdp_m_line_index": 0})
        await self.send({"type": "candidate", "candidate": ""})

    async def on_answer(self, msg):
        self.server_sdps.append({"type": "answer", "at": self.elapsed(), "sdp": msg["sdp"]})
        if self.pc.signalingState != "have-local-offer":
            self.errors.append(f"answer in signaling state {self.pc.signalingState}")
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="answer"))
        self.set_state("answered")

    async def on_server_offer(self, msg):
        self.server_sdps.append({"type": "offer", "at": self.elapsed(), "sdp": msg["sdp"]})
        if self.pc is None:
            self.errors.append("server offer before our peer connection exists")
            return
        if self.pc.signalingState != "stable":
            # Our one offer is answered before the server offers (PROTOCOL.md, negotiation rules).
            self.errors.append(f"server offer in signaling state {self.pc.signalingState}")
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="offer"))
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        await self.send({"type": "answer", "sdp": self.pc.localDescription.sdp})
        progress(server_offer_answered=len(self.server_sdps), t=self.elapsed())

    # -- signaling ----------------------------------------------------------------------------

    async def handle(self, msg):
        kind = msg.get("type")
        self.events.append([self.elapsed(), "in", kind])
        a = self.args
        if kind == "authenticated":
            self.set_state("authenticated")
            if a.appointment:
                await self.send({"type": "check_in", "appointment": a.appointment})
            elif a.consultation:
                self.consultation = a.consultation
                await self.send({"type": "join_consultation", "consultation": a.consultation})
        elif kind == "waiting":
            if msg.get("position") is not None and self.state in ("authenticated", "waiting", "ringing"):
                if self.state != "waiting":
                    self.set_state("waiting")
        elif kind == "ringing":
            self.set_state("ringing")
            self.consultation = msg.get("consultation")
            await self.send({"type": "accept_invitation", "invitation": msg["invitation"]})
        elif kind == "consultation_ready":
            self.consultation = msg["consultation"]
            if self.participant_id is None:
                await self.send({"type": "join_consultation", "consultation": msg["consultation"]})
        elif kind == "joined":
            self.participant_id = msg["participant_id"]
            self.joined_at = self.elapsed()
            self.set_state("joined")
            progress(participant_id=self.participant_id, room=msg.get("room"), consultation=self.consultation)
            await self.publish_and_offer()
        elif kind == "answer":
            await self.on_answer(msg)
        elif kind == "offer":
            await self.on_server_offer(msg)
        elif kind == "track_added":
            self.track_added.append(
                {k: msg.get(k) for k in ("participant_id", "track_id", "mid", "kind", "source")}
            )
        elif kind == "error":
            self.errors.append(f"{msg.get('code')}: {msg.get('message')}")
            log("error from server:", msg)
        elif kind == "bye":
            self.errors.append(f"bye: {msg.get('reason')}")
            self.stop(f"bye {msg.get('reason')}")
        elif kind == "publish_layers" or kind == "publish_audio":
            pass  # one camera layer, no bitrate control: nothing to do

    async def keepalive(self):
        while True:
            await asyncio.sleep(15)
            await self.send({"type": "ping"})

    async def reader(self):
        try:
            async for raw in self.ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    self.errors.append(f"non-JSON frame: {raw[:80]!r}")
                    continue
                try:
                    await self.handle(msg)
                except Exception as err:
                    self.errors.append(f"handling {msg.get('type')}: {err!r}")
                    log("failed to handle", msg.get("type"), repr(err))
                    if isinstance(err, AssertionError):
                        self.stop(f"assertion: {err}")
                        return
        except websockets.ConnectionClosed as err:
            self.errors.append(f"socket closed: {err}")
        self.stop("socket closed")

    async def report_progress(self):
        while True:
            await asyncio.sleep(1)
            progress(
                t=self.elapsed(),
                state=self.state,
                connection=self.pc.connectionState if self.pc else None,
                frames={mid: c["frames"] for mid, c in self.remote.items()},
                announced={t["mid"]: t["kind"] for t in self.track_added},
            )

    async def run(self):
        self.set_state("connecting")
        async with websockets.connect(self.args.ws, open_timeout=10, max_size=2**20) as ws:
            self.ws = ws
            if self.args.token:
                await self.send({"type": "auth", "token": self.args.token})
            if self.args.room:
                await self.send({"type": "join", "v": 1, "room": self.args.room, "display_name": self.args.name})
            tasks = [asyncio.ensure_future(x) for x in (self.reader(), self.keepalive(), self.report_progress())]
            await self.stop_event.wait()
            for t in tasks:
                t.cancel()
            if self.participant_id is not None and self.stop_reason not in ("socket closed",) and not (
                self.stop_reason or ""
            ).startswith("bye"):
                try:
                    await asyncio.wait_for(self.send({"type": "leave"}), 2)
                except Exception:
                    pass

    async def close(self):
        for c in self.consumers:
            c.cancel()
        if self.pc is not None:
            try:
                await asyncio.wait_for(self.pc.close(), 5)
            except Exception as err:
                self.errors.append(f"close: {err!r}")

    def result(self):
        server_mids = {t["mid"] for t in self.track_added}
        return {
            "ok": not self.errors,
            "stop_reason": self.stop_reason,
            "elapsed_s": self.elapsed(),
            "participant_id": self.participant_id,
            "consultation": self.consultation,
            "joined_at": self.joined_at,
            "connected_at": self.connected_at,
            "errors": self.errors,
            "publish_mids": self.publish_mids,
            "local_candidates": self.local_candidates,
            "track_added": self.track_added,
            "track_events": self.track_events,
            "phantom_track_mids": sorted(
                str(e["mid"]) for e in self.track_events if e["mid"] not in server_mids
            ),
            "remote": self.remote,
            "frames_by_mid": {str(mid): c["frames"] for mid, c in self.remote.items()},
            "client_offers": self.client_offers,
            "server_sdps": self.server_sdps,
            "events": self.events,
        }


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ws", required=True, help="ws://127.0.0.1:PORT/ws (loopback only)")
    p.add_argument("--token", help="a signed identity (auth)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--appointment", help="patient: check in to this appointment and answer the doctor's call")
    who.add_argument("--consultation", help="join this running consultation")
    who.add_argument("--room", help="join this open room by name")
    p.add_argument("--name", default="aiortc", help="display name (open rooms)")
    p.add_argument("--timeout", type=float, default=60, help="hard limit in seconds; results are printed then")
    p.add_argument(
        "--ignore-stdin",
        action="store_true",
        help='run until --timeout or a signal (by default "stop" or EOF on stdin ends the call)',
    )
    args = p.parse_args()

    host = re.match(r"^wss?://(127\.\d+\.\d+\.\d+)[:/]", args.ws)
    if not host:
        p.error(f"--ws must name a 127.x.y.z address (loopback only): {args.ws}")

    client = Client(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, client.stop, f"signal {sig.name}")

    def watch_stdin():
        # A daemon thread: works for pipes, terminals and files alike, and never holds up exit.
        for line in sys.stdin:
            if line.strip() == "stop":
                loop.call_soon_threadsafe(client.stop, "stop requested")
                return
        loop.call_soon_threadsafe(client.stop, "stdin closed")

    if not args.ignore_stdin:
        threading.Thread(target=watch_stdin, name="stdin", daemon=True).start()
    runner = asyncio.ensure_future(client.run())
    try:
        await asyncio.wait_for(asyncio.shield(runner), args.timeout)
    except asyncio.TimeoutError:
        if not args.ignore_stdin:  # then the timeout is how the call ends, not a failure
            client.errors.append(f"hard timeout after {args.timeout} s")
        client.stop("timeout")
        try:
            await asyncio.wait_for(runner, 3)
        except Exception:
            runner.cancel()
    except Exception as err:
        client.errors.append(f"run: {err!r}")
    await client.close()
    print(json.dumps(client.result(), separators=(",", ":")), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
