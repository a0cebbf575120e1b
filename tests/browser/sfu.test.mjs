// End-to-end test of the huizhen SFU with real browsers.
//
// Starts the server binary (HUIZHEN_BIN, default <repo>/target/debug/huizhen) on free ports of
// 127.0.0.1, opens three pages of Debian's headless Chromium (/usr/bin/chromium, driven by
// playwright-core; no browser download) in one room, and checks from each page's
// RTCPeerConnection stats that audio and video of every other participant arrive and decode,
// that a screen share reaches the others, that leaving removes the tracks, and that the
// forwarding counters moved. The same audio/video check runs again against a server that
// announces only its ICE-TCP (passive, RFC 4571) candidate.
//
// Run: cd tests/browser && npm install && npm test
// Env: HUIZHEN_BIN (server binary), CHROMIUM_BIN (default /usr/bin/chromium),
//      HUIZHEN_TEST_TIMEOUT_MS (whole run, default 240000), HUIZHEN_WAIT_MS (each wait, 30000),
//      HUIZHEN_TEST_KEEP_LOGS=1 (print the server log path and keep it).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '..', '..');
const SERVER_BIN = path.resolve(REPO_ROOT, process.env.HUIZHEN_BIN || 'target/debug/huizhen');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const TOTAL_TIMEOUT_MS = Number(process.env.HUIZHEN_TEST_TIMEOUT_MS || 240_000);
const WAIT_MS = Number(process.env.HUIZHEN_WAIT_MS || 30_000);

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  // Everything but localhost is unresolvable, IP literals included: pages are opened at
  // http://localhost:<port> (a secure context, so getUserMedia works).
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost',
];

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: every server started is killed on exit, whatever happens.

const servers = new Set();
let browser = null;

function killAllNow() {
  for (const s of servers) {
    try {
      s.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}

process.on('exit', killAllNow);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    killAllNow();
    process.exit(130);
  });
}

const watchdog = setTimeout(() => {
  console.error(`\nFAIL: the browser test did not finish within ${TOTAL_TIMEOUT_MS} ms; aborting`);
  for (const s of servers) printLogTail(s);
  killAllNow();
  process.exit(1);
}, TOTAL_TIMEOUT_MS);
watchdog.unref();

// ---------------------------------------------------------------------------------------------
// Helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `probe` until it returns {ok: true, value}; fail with `what` and the last detail. */
async function waitFor(what, probe, timeoutMs = WAIT_MS, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await probe();
    } catch (err) {
      last = { ok: false, detail: `probe threw: ${err && err.message ? err.message : err}` };
    }
    if (last && last.ok) return last.value;
    if (Date.now() >= deadline) {
      const detail = last && last.detail !== undefined ? last.detail : last;
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}; last state: ${JSON.stringify(detail, null, 1)}`,
      );
    }
    await sleep(intervalMs);
  }
}

async function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

function printLogTail(server, lines = 80) {
  try {
    const text = fs.readFileSync(server.logPath, 'utf8').trimEnd().split('\n');
    console.error(`--- last ${Math.min(lines, text.length)} lines of ${server.name} log (${server.logPath}) ---`);
    console.error(text.slice(-lines).join('\n'));
    console.error('--- end of server log ---');
  } catch (err) {
    console.error(`(no server log: ${err.message})`);
  }
}

// ---------------------------------------------------------------------------------------------
// Server

async function startServer(name, { announceUdp = true, announceTcp = true } = {}) {
  assert.ok(
    fs.existsSync(SERVER_BIN),
    `server binary ${SERVER_BIN} not found: build it with \`cargo build --bin huizhen\` or set HUIZHEN_BIN`,
  );
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `huizhen-browser-${name}-`));
  const httpPort = await freeTcpPort();
  const udpPort = await freeUdpPort();
  let tcpPort = await freeTcpPort();
  while (tcpPort === httpPort) tcpPort = await freeTcpPort();
  const configPath = path.join(dir, 'huizhen.toml');
  fs.writeFileSync(
    configPath,
    [
      '[http]',
      `listen = "127.0.0.1:${httpPort}"`,
      '',
      '[media]',
      `udp_listen = "127.0.0.1:${udpPort}"`,
      `tcp_listen = "127.0.0.1:${tcpPort}"`,
      'announce = ["127.0.0.1"]',
      `announce_udp = ${announceUdp}`,
      `announce_tcp = ${announceTcp}`,
      '',
    ].join('\n'),
  );
  const logPath = path.join(dir, 'server.log');
  const logFd = fs.openSync(logPath, 'a');
  const proc = spawn(SERVER_BIN, ['serve', '--config', configPath], {
    cwd: REPO_ROOT,
    stdio: ['ignore', logFd, logFd],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  fs.closeSync(logFd);
  const server = {
    name,
    proc,
    dir,
    logPath,
    httpPort,
    udpPort,
    tcpPort,
    // localhost, not 127.0.0.1: the host resolver rules make IP literals unresolvable.
    pageBase: `http://localhost:${httpPort}`,
    apiBase: `http://127.0.0.1:${httpPort}`,
    exited: null,
  };
  servers.add(server);
  proc.on('exit', (code, signal) => {
    server.exited = { code, signal };
  });
  proc.on('error', (err) => {
    server.exited = { error: err.message };
  });
  try {
    await waitFor(
      `${name}: GET /readyz = 200`,
      async () => {
        if (server.exited) throw new Error(`server exited early: ${JSON.stringify(server.exited)}`);
        const res = await fetch(`${server.apiBase}/readyz`, { signal: AbortSignal.timeout(2000) });
        return { ok: res.status === 200, detail: `status ${res.status}` };
      },
      WAIT_MS,
      100,
    );
  } catch (err) {
    printLogTail(server);
    await stopServer(server);
    throw err;
  }
  return server;
}

async function stopServer(server, { failed = false } = {}) {
  if (!server) return;
  if (failed) printLogTail(server);
  if (!server.exited) {
    server.proc.kill('SIGTERM');
    const deadline = Date.now() + 5000;
    while (!server.exited && Date.now() < deadline) await sleep(50);
    if (!server.exited) {
      server.proc.kill('SIGKILL');
      while (!server.exited) await sleep(20);
    }
  }
  servers.delete(server);
  if (!failed && !process.env.HUIZHEN_TEST_KEEP_LOGS) {
    fs.rmSync(server.dir, { recursive: true, force: true });
  } else {
    console.error(`${server.name}: logs kept in ${server.dir}`);
  }
}

async function fetchMetrics(server) {
  const res = await fetch(`${server.apiBase}/metrics`, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200, 'GET /metrics status');
  return res.text();
}

/** Sum of all samples of a Prometheus metric, over all label sets. */
function metricSum(text, name) {
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) {
      found = true;
      sum += Number(m[3]);
    }
  }
  return found ? sum : null;
}

// ---------------------------------------------------------------------------------------------
// Pages

async function openParticipant(server, room, name) {
  const context = await browser.newContext({ viewport: { width: 960, height: 640 } });
  const page = await context.newPage();
  const participant = { name, context, page, console: [] };
  page.on('console', (msg) => {
    participant.console.push(`${msg.type()}: ${msg.text()}`);
    if (participant.console.length > 300) participant.console.shift();
  });
  page.on('pageerror', (err) => participant.console.push(`pageerror: ${err.message}`));
  await page.goto(`${server.pageBase}/room/${encodeURIComponent(room)}?name=${encodeURIComponent(name)}`);
  participant.id = await waitFor(`${name} to join room ${room}`, async () => {
    const s = await page.evaluate(() =>
      window.huizhen
        ? { id: window.huizhen.participantId, state: window.huizhen.state, errors: window.huizhen.errors }
        : null,
    );
    return { ok: !!(s && s.id && s.state === 'joined'), value: s && s.id, detail: s };
  });
  return participant;
}

async function closeParticipants(participants) {
  await Promise.all(participants.map((p) => p.context.close().catch(() => {})));
}

/** Everything the assertions need from one page, read from pc.getStats() and window.huizhen. */
async function snapshot(participant) {
  return participant.page.evaluate(async () => {
    const h = window.huizhen;
    const out = {
      participantId: h.participantId,
      state: h.state,
      errors: h.errors,
      remoteTracks: [...h.remoteTracks].map(([track_id, t]) => ({ track_id, ...t })),
      participants: [...h.participants.keys()],
      inbound: [],
      outbound: [],
      pair: null,
      connectionState: h.pc ? h.pc.connectionState : null,
      signalingState: h.pc ? h.pc.signalingState : null,
    };
    if (!h.pc || h.pc.signalingState === 'closed') return out;
    const midByTrack = {};
    for (const t of h.pc.getTransceivers()) {
      if (t.mid != null) midByTrack[t.receiver.track.id] = t.mid;
    }
    const stats = await h.pc.getStats();
    let selectedPairId = null;
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        out.inbound.push({
          mid: s.mid != null ? s.mid : midByTrack[s.trackIdentifier],
          kind: s.kind,
          ssrc: s.ssrc,
          packetsReceived: s.packetsReceived || 0,
          framesDecoded: s.framesDecoded || 0,
        });
      } else if (s.type === 'outbound-rtp') {
        out.outbound.push({ mid: s.mid, kind: s.kind, packetsSent: s.packetsSent || 0 });
      } else if (s.type === 'transport' && s.selectedCandidatePairId) {
        selectedPairId = s.selectedCandidatePairId;
      }
    });
    const pair = selectedPairId ? stats.get(selectedPairId) : null;
    if (pair) {
      const local = stats.get(pair.localCandidateId) || {};
      const remote = stats.get(pair.remoteCandidateId) || {};
      out.pair = {
        state: pair.state,
        local: { protocol: local.protocol, address: local.address, port: local.port, type: local.candidateType, tcpType: local.tcpType },
        remote: { protocol: remote.protocol, address: remote.address, port: remote.port, type: remote.candidateType, tcpType: remote.tcpType },
      };
    }
    return out;
  });
}

function inboundForMid(snap, mid) {
  return snap.inbound.filter((s) => s.mid === mid);
}

/**
 * Check that `receiver` receives, from each of `publishers`, audio packets and decoded video
 * frames. `filter(track)` narrows the tracks looked at. Returns the per-publisher detail.
 */
function mediaFromPublishers(snap, publishers, { videoTracksEach = 1, audio = true, filter = () => true } = {}) {
  const problems = [];
  const detail = {};
  for (const pub of publishers) {
    const tracks = snap.remoteTracks.filter((t) => t.participant_id === pub.id && filter(t));
    const video = tracks.filter((t) => t.kind === 'video');
    const audioTracks = tracks.filter((t) => t.kind === 'audio');
    detail[pub.name] = { tracks, stats: tracks.map((t) => ({ mid: t.mid, kind: t.kind, stats: inboundForMid(snap, t.mid) })) };
    if (video.length < videoTracksEach) problems.push(`${pub.name}: ${video.length} video tracks announced, want ${videoTracksEach}`);
    for (const t of video) {
      const frames = inboundForMid(snap, t.mid).reduce((a, s) => a + s.framesDecoded, 0);
      if (!(frames > 0)) problems.push(`${pub.name}: video track ${t.track_id} (mid ${t.mid}) has framesDecoded ${frames}`);
    }
    if (audio) {
      if (audioTracks.length < 1) problems.push(`${pub.name}: no audio track announced`);
      for (const t of audioTracks) {
        const packets = inboundForMid(snap, t.mid).reduce((a, s) => a + s.packetsReceived, 0);
        if (!(packets > 0)) problems.push(`${pub.name}: audio track ${t.track_id} (mid ${t.mid}) has packetsReceived ${packets}`);
      }
    }
  }
  return { ok: problems.length === 0, problems, detail };
}

async function waitForMediaFromOthers(all, label, opts = {}) {
  for (const receiver of all) {
    const publishers = all.filter((p) => p !== receiver);
    await waitFor(`${label}: ${receiver.name} to receive and decode media from ${publishers.map((p) => p.name).join(', ')}`, async () => {
      const snap = await snapshot(receiver);
      const res = mediaFromPublishers(snap, publishers, opts);
      return {
        ok: res.ok,
        value: snap,
        detail: { problems: res.problems, pc: [snap.connectionState, snap.signalingState], errors: snap.errors, tracks: snap.remoteTracks, inbound: snap.inbound },
      };
    });
  }
}

async function assertNoErrors(participants) {
  for (const p of participants) {
    const errors = await p.page.evaluate(() => window.huizhen.errors);
    assert.deepEqual(errors, [], `${p.name} saw errors: ${JSON.stringify(errors)}`);
  }
}

function dumpParticipants(participants) {
  for (const p of participants) {
    console.error(`--- ${p.name} (${p.id}) browser console, last lines ---`);
    console.error(p.console.slice(-40).join('\n'));
  }
}

async function dumpEvents(participants) {
  for (const p of participants) {
    try {
      const events = await p.page.evaluate(() =>
        window.huizhen.events.map((e) => {
          const m = { ...e.msg };
          if (typeof m.sdp === 'string') m.sdp = `<${m.sdp.length} bytes>`;
          return `${e.dir} ${JSON.stringify(m)}`;
        }),
      );
      console.error(`--- ${p.name} (${p.id}) signaling events ---`);
      console.error(events.slice(-60).join('\n'));
    } catch {
      // page closed
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tests

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM_BIN), `${CHROMIUM_BIN} not found: apt-get install -y chromium`);
  browser = await chromium.launch({ executablePath: CHROMIUM_BIN, args: CHROMIUM_ARGS, headless: true });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  for (const s of [...servers]) await stopServer(s);
});

test('three participants over UDP: audio/video, screen share, leave, metrics', async () => {
  const server = await startServer('udp', { announceUdp: true, announceTcp: true });
  const room = 'room-x';
  let participants = [];
  let ok = false;
  try {
    const alice = await openParticipant(server, room, 'Alice');
    const bob = await openParticipant(server, room, 'Bob');
    const carol = await openParticipant(server, room, 'Carol');
    participants = [alice, bob, carol];
    const ids = new Set(participants.map((p) => p.id));
    assert.equal(ids.size, 3, 'participant ids are distinct');

    // 1. Everyone decodes everyone else's camera and receives their microphone.
    await waitForMediaFromOthers(participants, 'camera+microphone');
    await assertNoErrors(participants);

    // 2. Alice shares her screen; Bob and Carol decode it on the newly announced mid.
    const before = new Map();
    for (const p of [bob, carol]) {
      const snap = await snapshot(p);
      before.set(p, new Set(snap.remoteTracks.map((t) => t.track_id)));
    }
    await alice.page.evaluate(() => window.huizhen.startScreenShare());
    const screenTrackIds = new Map();
    for (const p of [bob, carol]) {
      const known = before.get(p);
      const snap = await waitFor(`${p.name} to decode Alice's screen share`, async () => {
        const s = await snapshot(p);
        const res = mediaFromPublishers(s, [alice], { audio: false, filter: (t) => !known.has(t.track_id) });
        return { ok: res.ok, value: s, detail: { problems: res.problems, errors: s.errors, tracks: s.remoteTracks, inbound: s.inbound } };
      });
      const screen = snap.remoteTracks.filter((t) => t.participant_id === alice.id && !known.has(t.track_id));
      assert.equal(screen.length, 1, `${p.name} got exactly one new track from Alice`);
      assert.equal(screen[0].kind, 'video');
      screenTrackIds.set(p, screen[0].track_id);
    }
    // The camera tracks keep flowing alongside the share.
    await waitForMediaFromOthers(participants, 'camera+microphone during screen share');

    // 3. Alice stops sharing: the screen track is removed for Bob and Carol.
    await alice.page.evaluate(() => window.huizhen.stopScreenShare());
    for (const p of [bob, carol]) {
      const trackId = screenTrackIds.get(p);
      await waitFor(`${p.name} to get track_removed for Alice's screen track ${trackId}`, async () => {
        const s = await p.page.evaluate(
          (id) => ({
            removed: window.huizhen.events.some((e) => e.dir === 'in' && e.type === 'track_removed' && e.msg.track_id === id),
            still: window.huizhen.remoteTracks.has(id),
          }),
          trackId,
        );
        return { ok: s.removed && !s.still, detail: s };
      });
    }
    await assertNoErrors(participants);

    // 4. Carol leaves: Alice and Bob get track_removed for all her tracks, then participant_left.
    const carolTracks = new Map();
    for (const p of [alice, bob]) {
      const snap = await snapshot(p);
      const ts = snap.remoteTracks.filter((t) => t.participant_id === carol.id).map((t) => t.track_id);
      assert.ok(ts.length >= 2, `${p.name} knows Carol's audio and video tracks before she leaves: ${JSON.stringify(ts)}`);
      carolTracks.set(p, ts);
    }
    await carol.page.evaluate(() => window.huizhen.leave());
    for (const p of [alice, bob]) {
      const ts = carolTracks.get(p);
      await waitFor(`${p.name} to see Carol's tracks removed and Carol leave`, async () => {
        const s = await p.page.evaluate(
          ({ ids, carolId }) => {
            const h = window.huizhen;
            const removed = new Set(
              h.events.filter((e) => e.dir === 'in' && e.type === 'track_removed').map((e) => e.msg.track_id),
            );
            return {
              missingRemovals: ids.filter((id) => !removed.has(id)),
              left: h.events.some((e) => e.dir === 'in' && e.type === 'participant_left' && e.msg.participant_id === carolId),
              stillListed: [...h.remoteTracks.values()].filter((t) => t.participant_id === carolId).length,
            };
          },
          { ids: ts, carolId: carol.id },
        );
        return { ok: s.missingRemovals.length === 0 && s.left && s.stillListed === 0, detail: s };
      });
    }
    // Alice and Bob still get each other's media after the renegotiation that removed Carol.
    const remaining = [alice, bob];
    const framesBefore = new Map();
    for (const p of remaining) {
      const other = remaining.find((o) => o !== p);
      const snap = await snapshot(p);
      const video = snap.remoteTracks.find((t) => t.participant_id === other.id && t.kind === 'video');
      assert.ok(video, `${p.name} still has ${other.name}'s video`);
      framesBefore.set(p, { mid: video.mid, frames: inboundForMid(snap, video.mid).reduce((a, s) => a + s.framesDecoded, 0) });
    }
    for (const p of remaining) {
      const { mid, frames } = framesBefore.get(p);
      await waitFor(`${p.name} to keep decoding video on mid ${mid} after Carol left`, async () => {
        const s = await snapshot(p);
        const now = inboundForMid(s, mid).reduce((a, x) => a + x.framesDecoded, 0);
        return { ok: now > frames, detail: { before: frames, now, pc: [s.connectionState, s.signalingState] } };
      });
    }
    await assertNoErrors(remaining);

    // 5. The forwarding counters moved.
    const metrics = await fetchMetrics(server);
    for (const name of ['huizhen_sfu_rtp_packets_received_total', 'huizhen_sfu_rtp_packets_sent_total']) {
      const sum = metricSum(metrics, name);
      assert.notEqual(sum, null, `metric ${name} is exported`);
      assert.ok(sum > 0, `metric ${name} = ${sum}, want > 0`);
    }
    ok = true;
  } finally {
    if (!ok) {
      await dumpEvents(participants);
      dumpParticipants(participants);
    }
    await closeParticipants(participants);
    await stopServer(server, { failed: !ok });
  }
});

test('three participants over ICE-TCP only: audio/video', async () => {
  const server = await startServer('tcp', { announceUdp: false, announceTcp: true });
  const room = 'room-tcp';
  let participants = [];
  let ok = false;
  try {
    participants = [
      await openParticipant(server, room, 'Dana'),
      await openParticipant(server, room, 'Eli'),
      await openParticipant(server, room, 'Fay'),
    ];
    await waitForMediaFromOthers(participants, 'camera+microphone over TCP');
    for (const p of participants) {
      const snap = await snapshot(p);
      assert.ok(snap.pair, `${p.name} has a selected candidate pair`);
      assert.equal(snap.pair.remote.protocol, 'tcp', `${p.name} uses a TCP candidate: ${JSON.stringify(snap.pair)}`);
      assert.equal(snap.pair.remote.port, server.tcpPort, `${p.name} talks to the server's TCP port`);
    }
    await assertNoErrors(participants);
    const metrics = await fetchMetrics(server);
    assert.ok(metricSum(metrics, 'huizhen_sfu_rtp_packets_sent_total') > 0, 'packets were forwarded over TCP');
    ok = true;
  } finally {
    if (!ok) {
      await dumpEvents(participants);
      dumpParticipants(participants);
    }
    await closeParticipants(participants);
    await stopServer(server, { failed: !ok });
  }
});
