#!/usr/bin/env python3
"""Smoke test of a Janus started by loadtest/janus-netns.sh (stdlib only).

Run it inside the namespace:
    ip netns exec hzbench python3 loadtest/janus/probe.py [--publish] [--fresh]

It speaks the Janus API over WebSocket (subprotocol "janus-protocol") and
prints every message sent (">>") and received ("<<") as JSON:
info, create session, attach janus.plugin.videoroom, videoroom create/list.
With --publish it also joins as a publisher with a hand-written SDP offer
(trickle false, one host candidate 127.0.0.1:<udp port of this script>),
prints Janus's answer and its ICE candidates, waits for Janus's first STUN
Binding Request to arrive at that UDP port (proves 127.0.0.2 -> 127.0.0.1
media reachability inside the namespace), then subscribes to the feed on a
second handle and prints Janus's offer. No DTLS/media: ICE never completes.
Exits non-zero on any unexpected answer.
"""
import base64
import json
import os
import socket
import struct
import sys
import time

HOST, PORT = "127.0.0.2", 8188
ROOM = 1234


class WS:
    def __init__(self, host, port, proto="janus-protocol"):
        self.s = socket.create_connection((host, port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n")
        self.s.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(1)
            if not chunk:
                raise RuntimeError("closed during handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise RuntimeError(f"handshake failed: {head!r}")
        self.buf = b""

    def _recvn(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        hdr = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(hdr + mask + body)

    def send(self, obj):
        self._send_frame(0x1, json.dumps(obj).encode())

    def recv(self):
        msg = b""
        while True:
            b0, b1 = self._recvn(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._recvn(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._recvn(8))[0]
            mask = self._recvn(4) if b1 & 0x80 else None
            data = self._recvn(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, data)
                continue
            if opcode == 0x8:
                raise RuntimeError("server closed")
            if opcode in (0x1, 0x2, 0x0):
                msg += data
                if b0 & 0x80:
                    return json.loads(msg)


def show(direction, obj):
    print(direction, json.dumps(obj), flush=True)


class Janus:
    def __init__(self, ws):
        self.ws = ws
        self.n = 0
        self.pending = []  # async events not yet consumed

    def call(self, body, ack_is_reply=False):
        """Send a request; return the first reply with the same transaction
        that is not an "ack" (asynchronous plugin requests are acked, then
        answered by an "event"; keepalive is answered by an "ack" only)."""
        self.n += 1
        body = dict(body, transaction=f"t{self.n}")
        show(">>", body)
        self.ws.send(body)
        while True:
            m = self.ws.recv()
            show("<<", m)
            if m.get("transaction") != body["transaction"]:
                self.pending.append(m)
                continue
            if m.get("janus") == "ack" and not ack_is_reply:
                continue
            return m


def expect(cond, what):
    if not cond:
        print("UNEXPECTED:", what, file=sys.stderr)
        sys.exit(1)


def offer_sdp(port):
    fp = ":".join(f"{b:02X}" for b in os.urandom(32))
    ufrag, pwd = "hzpb", "hzprobepassword0123456789"
    lines = ["v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
             "a=group:BUNDLE 0 1", "a=msid-semantic: WMS hz"]
    media = [("audio", 111, "opus/48000/2", ["a=fmtp:111 minptime=10;useinbandfec=1"], 1111),
             ("video", 96, "VP8/90000", ["a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli",
                                         "a=rtcp-fb:96 ccm fir"], 2222)]
    for mid, (kind, pt, codec, extra, ssrc) in enumerate(media):
        lines += [f"m={kind} {port} UDP/TLS/RTP/SAVPF {pt}",
                  "c=IN IP4 127.0.0.1",
                  f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host",
                  "a=end-of-candidates",
                  f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}",
                  f"a=fingerprint:sha-256 {fp}", "a=setup:actpass",
                  f"a=mid:{mid}", "a=sendonly", "a=rtcp-mux",
                  f"a=msid:hz hz{kind}", f"a=rtpmap:{pt} {codec}"] + extra + [
                  f"a=ssrc:{ssrc} cname:hzprobe", f"a=ssrc:{ssrc} msid:hz hz{kind}"]
    return "\r\n".join(lines) + "\r\n"


def answer_sdp(offer, port):
    """Minimal recvonly answer to Janus's subscriber offer (mirrors its m-lines)."""
    fp = ":".join(f"{b:02X}" for b in os.urandom(32))
    out = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    mids = [l[6:] for l in offer.split("\r\n") if l.startswith("a=mid:")]
    out.append("a=group:BUNDLE " + " ".join(mids))
    sections = offer.split("\r\nm=")[1:]
    for sec, mid in zip(sections, mids):
        first = sec.split("\r\n", 1)[0].split()
        kind, pt = first[0], first[3]
        rtpmap = [l for l in sec.split("\r\n") if l.startswith(f"a=rtpmap:{pt} ")]
        out += [f"m={kind} {port} UDP/TLS/RTP/SAVPF {pt}", "c=IN IP4 127.0.0.1",
                f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host",
                "a=end-of-candidates", "a=ice-ufrag:hzsb",
                "a=ice-pwd:hzprobepassword9876543210", f"a=fingerprint:sha-256 {fp}",
                "a=setup:active", f"a=mid:{mid}", "a=recvonly", "a=rtcp-mux"] + rtpmap
    return "\r\n".join(out) + "\r\n"


def main():
    publish = "--publish" in sys.argv
    j = Janus(WS(HOST, PORT))
    r = j.call({"janus": "info"})
    expect(r.get("janus") == "server_info", r)
    r = j.call({"janus": "create"})
    expect(r.get("janus") == "success", r)
    sid = r["data"]["id"]
    r = j.call({"janus": "attach", "session_id": sid, "plugin": "janus.plugin.videoroom"})
    expect(r.get("janus") == "success", r)
    hid = r["data"]["id"]
    if "--fresh" in sys.argv:  # drop a room left over by an aborted run
        j.call({"janus": "message", "session_id": sid, "handle_id": hid,
                "body": {"request": "destroy", "room": ROOM}})
    r = j.call({"janus": "message", "session_id": sid, "handle_id": hid,
                "body": {"request": "create", "room": ROOM, "publishers": 10,
                         "description": "hz probe", "audiocodec": "opus",
                         "videocodec": "vp8", "bitrate": 1000000,
                         "permanent": False,
                         # --publish: a dummy publisher (placeholder feed,
                         # always subscribable) to see a subscriber offer
                         # without a real DTLS/RTP publisher.
                         "dummy_publisher": publish}})
    pd = r.get("plugindata", {}).get("data", {})
    expect(pd.get("videoroom") == "created", r)  # 427 = exists: rerun with --fresh
    r = j.call({"janus": "message", "session_id": sid, "handle_id": hid,
                "body": {"request": "list"}})
    expect(r.get("plugindata", {}).get("data", {}).get("videoroom") == "success", r)
    r = j.call({"janus": "keepalive", "session_id": sid}, ack_is_reply=True)
    expect(r.get("janus") == "ack", r)

    if publish:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        r = j.call({"janus": "message", "session_id": sid, "handle_id": hid,
                    "body": {"request": "join", "ptype": "publisher", "room": ROOM,
                             "display": "probe-pub"}})
        pd = r.get("plugindata", {}).get("data", {})
        expect(pd.get("videoroom") == "joined", r)
        feed = pd["id"]
        r = j.call({"janus": "message", "session_id": sid, "handle_id": hid,
                    "body": {"request": "publish", "audio": True, "video": True},
                    "jsep": {"type": "offer", "sdp": offer_sdp(port), "trickle": False}})
        expect(r.get("jsep", {}).get("type") == "answer", r)
        cands = [l for l in r["jsep"]["sdp"].split("\r\n") if l.startswith("a=candidate")]
        print("## Janus answer candidates:", cands, flush=True)
        expect(any(" 127.0.0.2 " in c for c in cands), "no 127.0.0.2 candidate")
        udp.settimeout(10)
        data, src = udp.recvfrom(2048)
        print(f"## first UDP packet from Janus: {len(data)} bytes from {src}, "
              f"STUN type 0x{int.from_bytes(data[:2], 'big'):04x}", flush=True)
        expect(data[:2] == b"\x00\x01", "not a STUN Binding Request")

        r = j.call({"janus": "attach", "session_id": sid, "plugin": "janus.plugin.videoroom"})
        hid2 = r["data"]["id"]
        r = j.call({"janus": "message", "session_id": sid, "handle_id": hid2,
                    "body": {"request": "join", "ptype": "subscriber", "room": ROOM,
                             "streams": [{"feed": feed}]}})
        # Our publisher never completes ICE+DTLS, so its feed is not active
        # yet and Janus refuses the subscription (428 "No such feed").
        err = r.get("plugindata", {}).get("data", {}).get("error_code")
        expect(r.get("jsep", {}).get("type") == "offer" or err == 428, r)
        if err == 428:
            r = j.call({"janus": "message", "session_id": sid, "handle_id": hid,
                        "body": {"request": "listparticipants", "room": ROOM}})
            parts = r["plugindata"]["data"]["participants"]
            dummy = [p["id"] for p in parts if p.get("dummy")]
            expect(dummy, r)
            r = j.call({"janus": "message", "session_id": sid, "handle_id": hid2,
                        "body": {"request": "join", "ptype": "subscriber", "room": ROOM,
                                 "streams": [{"feed": dummy[0]}]}})
        expect(r.get("jsep", {}).get("type") == "offer", r)
        offer = r["jsep"]["sdp"]
        cands = [l for l in offer.split("\r\n") if l.startswith("a=candidate")]
        print("## Janus subscriber offer candidates:", cands, flush=True)
        r = j.call({"janus": "message", "session_id": sid, "handle_id": hid2,
                    "body": {"request": "start"},
                    "jsep": {"type": "answer", "sdp": answer_sdp(offer, port),
                             "trickle": False}})
        expect(r.get("plugindata", {}).get("data", {}).get("started") == "ok", r)
        j.call({"janus": "message", "session_id": sid, "handle_id": hid2,
                "body": {"request": "leave"}})
        j.call({"janus": "message", "session_id": sid, "handle_id": hid,
                "body": {"request": "leave"}})

    r = j.call({"janus": "message", "session_id": sid, "handle_id": hid,
                "body": {"request": "destroy", "room": ROOM}})
    j.call({"janus": "destroy", "session_id": sid})
    print("## OK", flush=True)


if __name__ == "__main__":
    main()
