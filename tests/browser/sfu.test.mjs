// End-to-end test of the huizhen SFU with real browsers.
//
// Starts the server binary (HUIZHEN_BIN, default <repo>/target/debug/huizhen; a relative path
// is taken from the repository root) on free ports of 127.0.0.1 and drives Debian's headless
// Chromium (/usr/bin/chromium, through playwright-core; no browser download). Each test has its
// own server and browser:
//   1. three participants over UDP: from each page's RTCPeerConnection stats, audio and video
//      of every other participant arrive and decode; a screen share reaches the others; stopping
//      it removes the track; sharing again works; leaving removes the leaver's tracks and
//      announces participant_left; the forwarding counters in /metrics moved;
//   2. offer glare: a client offer and a server offer cross (the test holds the server's offer
//      back in a WebSocket proxy); the browser rolls back, answers, offers again, and all media
//      still flows;
//   3. a participant without camera or microphone offers a data channel only and receives;
//   4. three participants against a server announcing only its ICE-TCP (passive, RFC 4571)
//      candidate: audio and video decode, over TCP.
// Every wait is bounded (HUIZHEN_WAIT_MS) and the whole run too (HUIZHEN_TEST_TIMEOUT_MS);
// servers are killed whatever happens.
//
// Run: cd tests/browser && npm install && npm test
// Env: HUIZHEN_BIN (server binary), CHROMIUM_BIN (default /usr/bin/chromium),
//      HUIZHEN_TEST_TIMEOUT_MS (whole run, default 180000), HUIZHEN_WAIT_MS (each wait, 30000),
//      HUIZHEN_TEST_KEEP_LOGS=1 (print the server log path and keep it),
//      HUIZHEN_TEST_STATIC_FROM_DISK=1 (serve static/*.js, *.css from the work tree, not the binary's
//      copies; for client development without rebuilding the server).

import { test, after } from 'node:test';
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
const TOTAL_TIMEOUT_MS = Number(process.env.HUIZHEN_TEST_TIMEOUT_MS || 180_000);
const WAIT_MS = Number(process.env.HUIZHEN_WAIT_MS || 30_000);
const STATIC_FROM_DISK = process.env.HUIZHEN_TEST_STATIC_FROM_DISK === '1';

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
];

// Everything but localhost is unresolvable, IP literals included: pages are opened at
// http://localhost:<port> (a secure context, so getUserMedia works). UDP media is unaffected
// (its sockets are not resolved), but Chromium opens ICE-TCP connections through the network
// service's proxy-resolving socket factory, which resolves the candidate's IP literal with
// these rules: with `MAP * ~NOTFOUND` alone the browser never connects to the server's
// passive TCP candidate 127.0.0.1 (no candidate pair is even created). The ICE-TCP test
// therefore also excludes 127.0.0.1, which keeps the browser off any other host.
const HOST_RULES = 'MAP * ~NOTFOUND, EXCLUDE localhost';
const HOST_RULES_ICE_TCP = 'MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1';

async function launchBrowser(hostRules) {
  assert.ok(fs.existsSync(CHROMIUM_BIN), `${CHROMIUM_BIN} not found: apt-get install -y chromium`);
  return chromium.launch({
    executablePath: CHROMIUM_BIN,
    args: [...CHROMIUM_ARGS, `--host-resolver-rules=${hostRules}`],
    headless: true,
  });
}

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: every server started is killed on exit, whatever happens.

const servers = new Set();
const browsers = new Set();

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
      if (err && err.fatal) throw err;
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
        if (server.exited) {
          throw Object.assign(new Error(`${name}: server exited before it was ready: ${JSON.stringify(server.exited)}`), {
            fatal: true,
          });
        }
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

async function openParticipant(browser, server, room, name, { beforeGoto } = {}) {
  const context = await browser.newContext({ viewport: { width: 960, height: 640 } });
  if (STATIC_FROM_DISK) {
    // Development aid: serve static/*.js and *.css from the work tree instead of the copies
    // compiled into the binary, so client changes can be tried without rebuilding the server.
    // (Not the document: Chromium's local network access checks block the WebSocket of a page
    // whose document was fulfilled by the test.)
    await context.route(/\/static\/[^/?]+(\?.*)?$/, (route) => {
      const url = new URL(route.request().url());
      const file = path.basename(url.pathname);
      const full = path.join(REPO_ROOT, 'static', file);
      if (!fs.existsSync(full)) return route.fulfill({ status: 404, body: 'not found' });
      const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };
      return route.fulfill({
        contentType: `${types[path.extname(file)] || 'application/octet-stream'}; charset=utf-8`,
        body: fs.readFileSync(full),
      });
    });
  }
  if (beforeGoto) await beforeGoto(context);
  const page = await context.newPage();
  const participant = { name, context, page, console: [] };
  page.on('console', (msg) => {
    participant.console.push(`${msg.type()}: ${msg.text()}`);
    if (participant.console.length > 300) participant.console.shift();
  });
  page.on('pageerror', (err) => participant.console.push(`pageerror: ${err.message}`));
  await page.goto(`${server.pageBase}/room/${encodeURIComponent(room)}?name=${encodeURIComponent(name)}`);
  try {
    participant.id = await waitFor(`${name} to join room ${room}`, async () => {
      const s = await page.evaluate(() =>
        window.huizhen
          ? { id: window.huizhen.participantId, state: window.huizhen.state, errors: window.huizhen.errors }
          : null,
      );
      return { ok: !!(s && s.id && s.state === 'joined'), value: s && s.id, detail: s };
    });
  } catch (err) {
    await dumpEvents([participant]);
    dumpParticipants([participant]);
    await context.close().catch(() => {});
    throw err;
  }
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
/**
 * Check that `snap` (one receiver) gets, from each of `publishers`, audio packets and decoded
 * video frames: counters above those of the same mid in `baseline` (a snapshot taken earlier;
 * none means above 0), so a stream that stalled does not pass on old counts. `filter(track)`
 * narrows the tracks looked at.
 */
function mediaFromPublishers(snap, publishers, { videoTracksEach = 1, audio = true, filter = () => true, baseline = null } = {}) {
  const problems = [];
  const detail = {};
  const count = (s, mid, field) => (s ? inboundForMid(s, mid).reduce((a, x) => a + x[field], 0) : 0);
  for (const pub of publishers) {
    const tracks = snap.remoteTracks.filter((t) => t.participant_id === pub.id && filter(t));
    const video = tracks.filter((t) => t.kind === 'video');
    const audioTracks = tracks.filter((t) => t.kind === 'audio');
    detail[pub.name] = { tracks, stats: tracks.map((t) => ({ mid: t.mid, kind: t.kind, stats: inboundForMid(snap, t.mid) })) };
    if (video.length < videoTracksEach) problems.push(`${pub.name}: ${video.length} video tracks announced, want ${videoTracksEach}`);
    for (const t of video) {
      const frames = count(snap, t.mid, 'framesDecoded');
      const before = count(baseline, t.mid, 'framesDecoded');
      if (!(frames > before)) problems.push(`${pub.name}: video track ${t.track_id} (mid ${t.mid}) has framesDecoded ${frames} (before: ${before})`);
    }
    if (audio) {
      if (audioTracks.length < 1) problems.push(`${pub.name}: no audio track announced`);
      for (const t of audioTracks) {
        const packets = count(snap, t.mid, 'packetsReceived');
        const before = count(baseline, t.mid, 'packetsReceived');
        if (!(packets > before)) problems.push(`${pub.name}: audio track ${t.track_id} (mid ${t.mid}) has packetsReceived ${packets} (before: ${before})`);
      }
    }
  }
  return { ok: problems.length === 0, problems, detail };
}

/**
 * Wait until every participant receives audio and decodes video from every other one. With
 * `{fresh: true}`, counters must grow past their values at the call, i.e. media flows now.
 */
async function waitForMediaFromOthers(all, label, { fresh = false, ...opts } = {}) {
  const baselines = new Map();
  if (fresh) {
    for (const receiver of all) baselines.set(receiver, await snapshot(receiver));
  }
  for (const receiver of all) {
    const publishers = all.filter((p) => p !== receiver);
    await waitFor(`${label}: ${receiver.name} to receive and decode media from ${publishers.map((p) => p.name).join(', ')}`, async () => {
      const snap = await snapshot(receiver);
      const res = mediaFromPublishers(snap, publishers, { ...opts, baseline: baselines.get(receiver) || null });
      return {
        ok: res.ok,
        value: snap,
        detail: { problems: res.problems, pc: [snap.connectionState, snap.signalingState], errors: snap.errors, tracks: snap.remoteTracks, inbound: snap.inbound },
      };
    });
  }
}

/** `sharer` starts a screen share; each of `viewers` must decode it. Returns viewer -> track id. */
async function shareScreen(sharer, viewers, label) {
  const known = new Map();
  for (const p of viewers) {
    const snap = await snapshot(p);
    known.set(p, new Set(snap.remoteTracks.map((t) => t.track_id)));
  }
  await sharer.page.evaluate(() => window.huizhen.startScreenShare());
  const trackIds = new Map();
  for (const p of viewers) {
    const seen = known.get(p);
    const snap = await waitFor(`${label}: ${p.name} to decode ${sharer.name}'s screen share`, async () => {
      const s = await snapshot(p);
      const res = mediaFromPublishers(s, [sharer], { audio: false, filter: (t) => !seen.has(t.track_id) });
      return { ok: res.ok, value: s, detail: { problems: res.problems, errors: s.errors, tracks: s.remoteTracks, inbound: s.inbound } };
    });
    const screen = snap.remoteTracks.filter((t) => t.participant_id === sharer.id && !seen.has(t.track_id));
    assert.equal(screen.length, 1, `${label}: ${p.name} got exactly one new track from ${sharer.name}`);
    assert.equal(screen[0].kind, 'video');
    trackIds.set(p, screen[0].track_id);
  }
  return trackIds;
}

/** `sharer` stops sharing; each viewer must get track_removed for the screen track. */
async function stopSharing(sharer, trackIds) {
  await sharer.page.evaluate(() => window.huizhen.stopScreenShare());
  for (const [p, trackId] of trackIds) {
    await waitFor(`${p.name} to get track_removed for ${sharer.name}'s screen track ${trackId}`, async () => {
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
}

/** Counts of the client's negotiation incidents (glare, stale answers, offer timeouts). */
async function negotiationIncidents(participants) {
  const out = {};
  for (const p of participants) {
    out[p.name] = await p.page.evaluate(() => {
      const counts = {};
      for (const e of window.huizhen.events) {
        if (e.dir === 'local' && ['offer_collision', 'stale_answer', 'offer_timeout'].includes(e.type)) {
          counts[e.type] = (counts[e.type] || 0) + 1;
        }
      }
      counts.offers_sent = window.huizhen.events.filter((e) => e.dir === 'out' && e.type === 'offer').length;
      counts.offers_received = window.huizhen.events.filter((e) => e.dir === 'in' && e.type === 'offer').length;
      return counts;
    });
  }
  return out;
}

/**
 * Proxy a page's signaling socket through the test so that server frames can be held back.
 * `hold()` arms it: from the next server `offer` on, server frames are queued until the page
 * sends an `offer` of its own, which is forwarded first; then the queue is delivered. That makes
 * the offers cross deterministically (glare).
 */
function glareProxy() {
  const proxy = { armed: false, holding: false, queue: [], crossed: 0 };
  proxy.install = (context) =>
    context.routeWebSocket(/\/ws$/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((frame) => {
        server.send(frame);
        if (proxy.holding && typeof frame === 'string' && JSON.parse(frame).type === 'offer') {
          proxy.holding = false;
          proxy.crossed += 1;
          for (const f of proxy.queue.splice(0)) ws.send(f);
        }
      });
      server.onMessage((frame) => {
        if (proxy.armed && typeof frame === 'string' && JSON.parse(frame).type === 'offer') {
          proxy.armed = false;
          proxy.holding = true;
        }
        if (proxy.holding) proxy.queue.push(frame);
        else ws.send(frame);
      });
    });
  proxy.hold = () => {
    proxy.armed = true;
  };
  return proxy;
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

after(async () => {
  for (const b of [...browsers]) await b.close().catch(() => {});
  for (const s of [...servers]) await stopServer(s);
});

async function withBrowser(hostRules, fn) {
  const browser = await launchBrowser(hostRules);
  browsers.add(browser);
  try {
    return await fn(browser);
  } finally {
    browsers.delete(browser);
    await browser.close().catch(() => {});
  }
}

test('three participants over UDP: audio/video, screen share, leave, metrics', (t) =>
  withBrowser(HOST_RULES, async (browser) => {
    const server = await startServer('udp', { announceUdp: true, announceTcp: true });
    const room = 'room-x';
    const participants = [];
    let ok = false;
    try {
      for (const name of ['Alice', 'Bob', 'Carol']) {
        participants.push(await openParticipant(browser, server, room, name));
      }
      const [alice, bob, carol] = participants;
      const ids = new Set(participants.map((p) => p.id));
      assert.equal(ids.size, 3, 'participant ids are distinct');

      // 1. Everyone decodes everyone else's camera and receives their microphone.
      await waitForMediaFromOthers(participants, 'camera+microphone');
      await assertNoErrors(participants);

      // 2. Alice shares her screen; Bob and Carol decode it on the newly announced mid.
      const firstShare = await shareScreen(alice, [bob, carol], 'first screen share');
      // The camera tracks keep flowing alongside the share.
      await waitForMediaFromOthers(participants, 'camera+microphone during screen share', { fresh: true });

      // 3. Alice stops sharing: the screen track is removed for Bob and Carol.
      await stopSharing(alice, firstShare);
      await assertNoErrors(participants);

      // 3b. Sharing again reuses the (now inactive) transceiver: a new track reaches the others.
      const secondShare = await shareScreen(alice, [bob, carol], 'second screen share');
      for (const [p, id] of secondShare) {
        assert.notEqual(id, firstShare.get(p), `${p.name}: the second share has a new track id`);
      }
      await stopSharing(alice, secondShare);
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
      await waitFor('Carol to get bye {reason: "left"}', async () => {
        const byes = await carol.page.evaluate(() =>
          window.huizhen.events.filter((e) => e.dir === 'in' && e.type === 'bye').map((e) => e.msg.reason),
        );
        return { ok: byes.includes('left'), detail: byes };
      });
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
      await waitForMediaFromOthers(remaining, 'camera+microphone after Carol left', { fresh: true });
      await assertNoErrors(remaining);

      // 5. The forwarding counters moved.
      const metrics = await fetchMetrics(server);
      for (const name of ['huizhen_sfu_rtp_packets_received_total', 'huizhen_sfu_rtp_packets_sent_total']) {
        const sum = metricSum(metrics, name);
        assert.notEqual(sum, null, `metric ${name} is exported`);
        assert.ok(sum > 0, `metric ${name} = ${sum}, want > 0`);
      }
      t.diagnostic(`negotiation: ${JSON.stringify(await negotiationIncidents(participants.filter((p) => p.name !== 'Carol')))}`);
      ok = true;
    } finally {
      if (!ok) {
        await dumpEvents(participants);
        dumpParticipants(participants);
      }
      await closeParticipants(participants);
      await stopServer(server, { failed: !ok });
    }
  })
);

test('offer glare: a client offer crossing a server offer is resolved (browser polite, server impolite)', (t) =>
  withBrowser(HOST_RULES, async (browser) => {
    const server = await startServer('glare', { announceUdp: true, announceTcp: false });
    const room = 'room-glare';
    const participants = [];
    let ok = false;
    try {
      const proxy = glareProxy();
      const gina = await openParticipant(browser, server, room, 'Gina');
      participants.push(gina);
      const hal = await openParticipant(browser, server, room, 'Hal', { beforeGoto: proxy.install });
      participants.push(hal);
      await waitForMediaFromOthers(participants, 'camera+microphone before glare');

      // Gina's share makes the server offer Hal a new track; the proxy holds that offer until
      // Hal has sent an offer for his own share, so both offers are in flight at once.
      proxy.hold();
      await gina.page.evaluate(() => window.huizhen.startScreenShare());
      await waitFor('the server offer to Hal to be held', async () => ({ ok: proxy.holding, detail: proxy }));
      await hal.page.evaluate(() => window.huizhen.startScreenShare());
      await waitFor('the offers to cross', async () => ({ ok: proxy.crossed === 1 && !proxy.holding, detail: proxy }));

      // Hal rolled back, answered, and offered again; both shares arrive.
      await waitForMediaFromOthers(participants, 'camera+microphone+screen after glare', { videoTracksEach: 2, fresh: true });
      const collisions = await hal.page.evaluate(() =>
        window.huizhen.events.filter((e) => e.dir === 'local' && e.type === 'offer_collision').length,
      );
      assert.ok(collisions >= 1, `Hal saw the offer collision (${collisions})`);
      await assertNoErrors(participants);
      t.diagnostic(`negotiation: ${JSON.stringify(await negotiationIncidents(participants))}`);
      ok = true;
    } finally {
      if (!ok) {
        await dumpEvents(participants);
        dumpParticipants(participants);
      }
      await closeParticipants(participants);
      await stopServer(server, { failed: !ok });
    }
  })
);

test('a participant without camera or microphone still offers and receives the others', () =>
  withBrowser(HOST_RULES, async (browser) => {
    const server = await startServer('nodevices', { announceUdp: true, announceTcp: false });
    const room = 'room-no-devices';
    const participants = [];
    let ok = false;
    try {
      const ivy = await openParticipant(browser, server, room, 'Ivy');
      participants.push(ivy);
      const noDevices = (context) =>
        context.addInitScript(() => {
          navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException('no camera or microphone', 'NotFoundError'));
        });
      const jon = await openParticipant(browser, server, room, 'Jon', { beforeGoto: noDevices });
      participants.push(jon);
      // Jon publishes nothing: his first offer carries only a data channel.
      const firstOffer = await waitFor("Jon's first offer", async () => {
        const sdp = await jon.page.evaluate(
          () => window.huizhen.events.find((e) => e.dir === 'out' && e.type === 'offer')?.msg.sdp,
        );
        return { ok: !!sdp, value: sdp };
      });
      assert.match(firstOffer, /^m=application /m, 'the offer of a client without devices has a data channel');
      assert.doesNotMatch(firstOffer, /^m=(audio|video) /m, 'and no media sections');
      await waitFor('Jon to decode Ivy', async () => {
        const snap = await snapshot(jon);
        const res = mediaFromPublishers(snap, [ivy]);
        return { ok: res.ok, detail: res.problems };
      });
      const ivySnap = await snapshot(ivy);
      assert.equal(ivySnap.remoteTracks.filter((x) => x.participant_id === jon.id).length, 0, 'Ivy receives no track from Jon');
      await assertNoErrors(participants);
      ok = true;
    } finally {
      if (!ok) {
        await dumpEvents(participants);
        dumpParticipants(participants);
      }
      await closeParticipants(participants);
      await stopServer(server, { failed: !ok });
    }
  })
);

test('three participants over ICE-TCP only: audio/video', (t) =>
  withBrowser(HOST_RULES_ICE_TCP, async (browser) => {
    const server = await startServer('tcp', { announceUdp: false, announceTcp: true });
    const room = 'room-tcp';
    const participants = [];
    let ok = false;
    try {
      for (const name of ['Dana', 'Eli', 'Fay']) {
        participants.push(await openParticipant(browser, server, room, name));
      }
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
      t.diagnostic(`negotiation: ${JSON.stringify(await negotiationIncidents(participants.filter((p) => p.name !== 'Carol')))}`);
      ok = true;
    } finally {
      if (!ok) {
        await dumpEvents(participants);
        dumpParticipants(participants);
      }
      await closeParticipants(participants);
      await stopServer(server, { failed: !ok });
    }
  })
);
