// Shared harness of the browser tests (sfu.test.mjs, clinic.test.mjs, recording.test.mjs): the
// server binary on free ports of 127.0.0.1, Debian's headless Chromium through playwright-core,
// bounded waits, the RTCPeerConnection stats the media assertions read, the bookkeeping that
// kills every server whatever happens, and the clinic pages' helpers (the demo clinic's server,
// its links and API key, page state, the seed flow into a call).
//
// Env: HUIZHEN_BIN (server binary, default <repo>/target/debug/huizhen; a relative path is taken
//      from the repository root), CHROMIUM_BIN (default /usr/bin/chromium),
//      HUIZHEN_TEST_TIMEOUT_MS (whole run, default 180000), HUIZHEN_WAIT_MS (each wait, 30000),
//      HUIZHEN_TEST_KEEP_LOGS=1 (print the server log path and keep it),
//      HUIZHEN_TEST_STATIC_FROM_DISK=1 (serve static/*.js, *.css from the work tree, not the binary's
//      copies; for client development without rebuilding the server).

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, '..', '..');
export const SERVER_BIN = path.resolve(REPO_ROOT, process.env.HUIZHEN_BIN || 'target/debug/huizhen');
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const TOTAL_TIMEOUT_MS = Number(process.env.HUIZHEN_TEST_TIMEOUT_MS || 180_000);
/** HUIZHEN_WAIT_MS as given; `startRun({waitMs})` may set a different default for the waits. */
export const WAIT_MS = Number(process.env.HUIZHEN_WAIT_MS || 30_000);
export const STATIC_FROM_DISK = process.env.HUIZHEN_TEST_STATIC_FROM_DISK === '1';

export const CHROMIUM_ARGS = [
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
export const HOST_RULES = 'MAP * ~NOTFOUND, EXCLUDE localhost';
export const HOST_RULES_ICE_TCP = 'MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1';

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: every server started is killed on exit, whatever happens.

const servers = new Set();
const browsers = new Set();
let defaultWaitMs = WAIT_MS;

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

/**
 * Call once, at the top of a test file: bounds the whole run by TOTAL_TIMEOUT_MS (`what` names
 * the run in the failure message) and sets the default bound of each wait (`waitFor`, the
 * server's start).
 */
export function startRun({ what = 'the browser test', waitMs = WAIT_MS } = {}) {
  defaultWaitMs = waitMs;
  const watchdog = setTimeout(() => {
    console.error(`\nFAIL: ${what} did not finish within ${TOTAL_TIMEOUT_MS} ms; aborting`);
    for (const s of servers) printLogTail(s);
    killAllNow();
    process.exit(1);
  }, TOTAL_TIMEOUT_MS);
  watchdog.unref();
}

/** For `after()`: close the browsers and stop the servers still open. */
export async function closeAll() {
  for (const b of [...browsers]) await b.close().catch(() => {});
  for (const s of [...servers]) await stopServer(s);
}

// ---------------------------------------------------------------------------------------------
// Helpers

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `probe` until it returns {ok: true, value}; fail with `what` and the last detail. */
export async function waitFor(what, probe, timeoutMs = defaultWaitMs, intervalMs = 250) {
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

export async function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

export function printLogTail(server, lines = 80) {
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

/** Throw (fatally for `waitFor`) if the server process is gone. */
export function assertRunning(server) {
  if (server.exited) {
    throw Object.assign(new Error(`${server.name}: server exited before it was ready: ${JSON.stringify(server.exited)}`), {
      fatal: true,
    });
  }
}

/**
 * Start the server binary on free ports of 127.0.0.1 with a temporary config and wait for
 * GET /readyz = 200. `extraConfig(dir)` returns more config lines (`dir` is the server's temp
 * dir); `whenReady(server)` runs after /readyz answered, still under the start's failure
 * handling (log tail printed, server stopped).
 */
export async function startServer(
  name,
  {
    tmpPrefix = 'huizhen-browser',
    announceUdp = true,
    announceTcp = true,
    turnTransports = ['udp', 'tcp'],
    extraConfig = () => [],
    whenReady,
  } = {},
) {
  assert.ok(
    fs.existsSync(SERVER_BIN),
    `server binary ${SERVER_BIN} not found: build it with \`cargo build --bin huizhen\` or set HUIZHEN_BIN`,
  );
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${tmpPrefix}-${name}-`));
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
      // State, archive and spool stay in the test's own temp directory.
      '[storage]',
      `data_dir = ${JSON.stringify(path.join(dir, 'data'))}`,
      '',
      '[archive]',
      `local_dir = ${JSON.stringify(path.join(dir, 'archive'))}`,
      '',
      // The embedded TURN on loopback ports of the kernel's choice (the URLs in `joined` name
      // the bound ports); over TLS with a self-signed certificate for localhost if asked.
      '[turn]',
      `transports = ${JSON.stringify(turnTransports)}`,
      'udp_listen = "127.0.0.1:0"',
      'tcp_listen = "127.0.0.1:0"',
      'tls_listen = "127.0.0.1:0"',
      ...(turnTransports.includes('tls') ? turnTlsLines() : []),
      '',
      ...extraConfig(dir),
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
        assertRunning(server);
        const res = await fetch(`${server.apiBase}/readyz`, { signal: AbortSignal.timeout(2000) });
        return { ok: res.status === 200, detail: `status ${res.status}` };
      },
      defaultWaitMs,
      100,
    );
    if (whenReady) await whenReady(server);
  } catch (err) {
    printLogTail(server);
    await stopServer(server);
    throw err;
  }
  return server;
}

/**
 * One self-signed certificate for localhost and 127.0.0.1 per test run (openssl), for TURN over
 * TLS: `{cert, key, spki}`, `spki` the base64 SHA-256 of its public key, which browsers of
 * `withBrowser(..., {trustTurnCert: true})` trust (and nothing else beyond the usual roots).
 */
let turnCert = null;
export function turnTlsCert() {
  if (turnCert) return turnCert;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'huizhen-turn-cert-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-days', '2', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', key, '-out', cert,
    ],
    { stdio: 'ignore' },
  );
  const pub = execFileSync('openssl', ['x509', '-pubkey', '-noout', '-in', cert]);
  const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pub });
  const spki = crypto.createHash('sha256').update(der).digest('base64');
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  turnCert = { cert, key, spki };
  return turnCert;
}

/** The [turn] lines for TLS with the run's certificate. */
function turnTlsLines() {
  const { cert, key } = turnTlsCert();
  return [
    `tls_cert = ${JSON.stringify(cert)}`,
    `tls_key = ${JSON.stringify(key)}`,
    'tls_host = "localhost"',
  ];
}

export async function stopServer(server, { failed = false } = {}) {
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

/**
 * Run `fn(server, people)` against the server `start()` returns; `fn` pushes the pages it opens
 * onto `people`. If it fails, `dump(people)` is awaited and the server log kept (unless `quiet`:
 * a failure that is expected, e.g. of a `todo` test); the pages are closed and the server stopped
 * whatever happens.
 */
export async function withServer(start, dump, fn, { quiet = false } = {}) {
  const server = await start();
  const people = [];
  let ok = false;
  try {
    const result = await fn(server, people);
    ok = true;
    return result;
  } finally {
    if (!ok && !quiet) await dump(people);
    await closeContexts(people);
    await stopServer(server, { failed: !ok && !quiet });
  }
}

// ---------------------------------------------------------------------------------------------
// Browser and pages

export async function launchBrowser(hostRules, { trustTurnCert = false } = {}) {
  assert.ok(fs.existsSync(CHROMIUM_BIN), `${CHROMIUM_BIN} not found: apt-get install -y chromium`);
  const trust = trustTurnCert ? [`--ignore-certificate-errors-spki-list=${turnTlsCert().spki}`] : [];
  return chromium.launch({
    executablePath: CHROMIUM_BIN,
    args: [...CHROMIUM_ARGS, `--host-resolver-rules=${hostRules}`, ...trust],
    headless: true,
  });
}

/** Run `fn(browser)` with a browser of its own, closed afterwards. */
export async function withBrowser(hostRules, fn, launchOptions = {}) {
  const browser = await launchBrowser(hostRules, launchOptions);
  browsers.add(browser);
  try {
    return await fn(browser);
  } finally {
    browsers.delete(browser);
    await browser.close().catch(() => {});
  }
}

/**
 * A fresh browser context (one person) with one page, not navigated yet: returns
 * {name, context, page, console, id: null}, `console` holding the page's last console lines.
 * `beforePage(context)` runs before the page is created.
 */
export async function newPerson(browser, name, contextOptions, { beforePage } = {}) {
  const context = await browser.newContext(contextOptions);
  if (STATIC_FROM_DISK) {
    // Development aid: serve static/*.js and *.css from the work tree instead of the copies
    // compiled into the binary, so client changes can be tried without rebuilding the server.
    // (Not the document: Chromium's local network access checks block the WebSocket of a page
    // whose document was fulfilled by the test.)
    await context.route(/\/static\/[^/?]+(\?.*)?$/, (route) => {
      const file = path.basename(new URL(route.request().url()).pathname);
      const full = path.join(REPO_ROOT, 'static', file);
      if (!fs.existsSync(full)) return route.fulfill({ status: 404, body: 'not found' });
      const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };
      return route.fulfill({
        contentType: `${types[path.extname(file)] || 'application/octet-stream'}; charset=utf-8`,
        body: fs.readFileSync(full),
      });
    });
  }
  if (beforePage) await beforePage(context);
  const page = await context.newPage();
  const person = { name, context, page, console: [], id: null };
  page.on('console', (msg) => {
    person.console.push(`${msg.type()}: ${msg.text()}`);
    if (person.console.length > 300) person.console.shift();
  });
  page.on('pageerror', (err) => person.console.push(`pageerror: ${err.message}`));
  return person;
}

export async function closeContexts(people) {
  await Promise.all(people.map((p) => p.context.close().catch(() => {})));
}

/** The page's signaling events (window.huizhen.events), one line each, SDPs and tokens elided. */
export function eventLines(person) {
  return person.page.evaluate(() =>
    window.huizhen.events.map((e) => {
      const m = { ...e.msg };
      if (typeof m.sdp === 'string') m.sdp = `<${m.sdp.length} bytes>`;
      if (typeof m.token === 'string') m.token = '<token>';
      return `${e.dir} ${JSON.stringify(m)}`;
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Media, from pc.getStats()

/** Everything the media assertions need from one page, read from pc.getStats() and window.huizhen. */
export async function snapshot(person) {
  return person.page.evaluate(async () => {
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
        local: {
          protocol: local.protocol,
          address: local.address,
          port: local.port,
          type: local.candidateType,
          tcpType: local.tcpType,
          relayProtocol: local.relayProtocol,
          url: local.url,
        },
        remote: { protocol: remote.protocol, address: remote.address, port: remote.port, type: remote.candidateType, tcpType: remote.tcpType },
      };
    }
    return out;
  });
}

export function inboundForMid(snap, mid) {
  return snap.inbound.filter((s) => s.mid === mid);
}

/**
 * Check that `snap` (one receiver) gets, from each of `publishers`, audio packets and decoded
 * video frames: counters above those of the same mid in `baseline` (a snapshot taken earlier;
 * none means above 0), so a stream that stalled, or an old stream on a reused mid, does not pass
 * on old counts. `videoTracksEach` video tracks are wanted from each publisher; `audio: false`
 * skips audio; `filter(track)` narrows the tracks looked at.
 */
export function mediaFromPublishers(snap, publishers, { videoTracksEach = 1, audio = true, filter = () => true, baseline = null } = {}) {
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

/** Everyone receives everyone else: [receiver, publishers] pairs for `waitForMedia`. */
export function allPairs(people) {
  return people.map((p) => [p, people.filter((q) => q !== p)]);
}

/**
 * Wait until each receiver receives audio and decodes video from each of its publishers
 * (`pairs`: [receiver, publishers]; `opts` as for `mediaFromPublishers`). With `{fresh: true}`,
 * counters must grow past their values at the call, i.e. media flows now. Returns a summary of
 * the counters, by receiver name.
 */
export async function waitForMedia(label, pairs, { fresh = false, ...opts } = {}) {
  const baselines = new Map();
  if (fresh) {
    for (const [receiver] of pairs) baselines.set(receiver, await snapshot(receiver));
  }
  const summary = {};
  for (const [receiver, publishers] of pairs) {
    const snap = await waitFor(`${label}: ${receiver.name} to receive and decode media from ${publishers.map((p) => p.name).join(', ')}`, async () => {
      const snap = await snapshot(receiver);
      const res = mediaFromPublishers(snap, publishers, { ...opts, baseline: baselines.get(receiver) || null });
      return {
        ok: res.ok,
        value: snap,
        detail: { problems: res.problems, pc: [snap.connectionState, snap.signalingState], errors: snap.errors, tracks: snap.remoteTracks, inbound: snap.inbound },
      };
    });
    summary[receiver.name] = snap.inbound.map((s) => `${s.kind}:${s.kind === 'video' ? s.framesDecoded : s.packetsReceived}`).join(' ');
  }
  return summary;
}

// ---------------------------------------------------------------------------------------------
// Clinic pages (clinic.test.mjs, recording.test.mjs)

/**
 * Start the server with the demo clinic seeded (development mode) and read the demo links and
 * the generated API key it prints; the links are rewritten to http://localhost:<port> (see
 * HOST_RULES). `extraConfig` lines are added to the config (after `[clinic] seed_demo`).
 */
export function startClinicServer(name, { extraConfig = [] } = {}) {
  return startServer(name, {
    tmpPrefix: 'huizhen-clinic',
    announceUdp: true,
    announceTcp: false,
    extraConfig: (dir) => ['[clinic]', 'seed_demo = true', '', ...(typeof extraConfig === 'function' ? extraConfig(dir) : extraConfig)],
    whenReady: async (server) => {
      // Development mode prints the demo links and the generated API key on stdout.
      const printed = await waitFor(
        `${name}: the demo links and API key on stdout`,
        async () => {
          assertRunning(server);
          const log = fs.readFileSync(server.logPath, 'utf8');
          const grab = (label) => new RegExp(`^\\s*${label}:\\s+(\\S+)`, 'm').exec(log)?.[1];
          const value = { doctor: grab('Doctor'), patient: grab('Patient'), companion: grab('Companion'), apiKey: grab('API key') };
          return { ok: Object.values(value).every(Boolean), value, detail: value };
        },
        defaultWaitMs,
        100,
      );
      server.configPath = path.join(server.dir, 'huizhen.toml');
      server.apiKey = printed.apiKey;
      server.links = {};
      for (const who of ['doctor', 'patient', 'companion']) {
        const url = new URL(printed[who]);
        url.host = `localhost:${server.httpPort}`;
        server.links[who] = url.href;
      }
    },
  });
}

/**
 * One clinic server of its own for `fn(server, people)` (see withServer); `opts` as for
 * startClinicServer, and `quiet` as for withServer.
 */
export function withClinicServer(name, fn, { quiet = false, ...opts } = {}) {
  return withServer(() => startClinicServer(name, opts), dumpPages, fn, { quiet });
}

/** Call the REST API with the server's key; returns the parsed JSON body. */
export async function api(server, method, route, body) {
  const res = await fetch(`${server.apiBase}/api/v1${route}`, {
    method,
    headers: { authorization: `Bearer ${server.apiKey}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(5000),
  });
  const json = await res.json().catch(() => null);
  assert.ok(res.ok, `${method} ${route}: HTTP ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** Open `url` in a fresh browser context (one person); clicks and navigations bounded like every wait. */
export async function openPage(browser, name, url) {
  const person = await newPerson(
    browser,
    name,
    { viewport: { width: 1100, height: 800 }, locale: 'en-US' },
    {
      beforePage: (context) => {
        context.setDefaultTimeout(defaultWaitMs);
        context.setDefaultNavigationTimeout(defaultWaitMs);
      },
    },
  );
  await person.page.goto(url);
  return person;
}

/** The page state tests look at. */
export function pageState(person) {
  return person.page.evaluate(() => {
    const h = window.huizhen;
    if (!h) return null;
    return {
      state: h.state,
      connection: h.connection,
      callState: h.callState,
      participantId: h.participantId,
      position: h.position,
      consultation: h.consultation,
      recording: h.recording,
      consent: h.consent,
      consents: h.consents,
      consentDialogOpen: h.consentDialogOpen,
      errors: h.errors,
      error: document.getElementById('error')?.hidden ? null : document.getElementById('error')?.textContent,
    };
  });
}

/** Wait until `pred(state)` holds for the page's window.huizhen state. */
export async function waitForState(person, what, pred) {
  return waitFor(`${person.name}: ${what}`, async () => {
    const s = await pageState(person);
    return { ok: !!s && pred(s), value: s, detail: s };
  });
}

/** Wait for an element to be visible. */
export async function waitVisible(person, selector) {
  await person.page.locator(selector).first().waitFor({ state: 'visible', timeout: defaultWaitMs });
}

/** Wait for an element to be hidden (or absent). */
export async function waitHidden(person, selector) {
  await person.page.locator(selector).first().waitFor({ state: 'hidden', timeout: defaultWaitMs });
}

export async function textOf(person, selector) {
  return (await person.page.locator(selector).first().textContent()).trim();
}

/** Wait until the page is in the call; remembers its participant id. */
export async function waitInCall(person) {
  const s = await waitForState(person, 'to be in the call', (x) => x.state === 'in_call' && x.callState === 'joined' && !!x.participantId);
  person.id = s.participantId;
  return s;
}

/** On failure: each page's state, last signaling events and console lines. */
export async function dumpPages(people) {
  for (const p of people) {
    try {
      const events = await eventLines(p);
      console.error(`--- ${p.name} (${p.id}) state ${JSON.stringify(await pageState(p))} ---`);
      console.error(events.filter((l) => !l.includes('"candidate"')).slice(-50).join('\n'));
    } catch {
      // page closed
    }
    console.error(`--- ${p.name} browser console, last lines ---`);
    console.error(p.console.slice(-30).join('\n'));
  }
}

/** The messages of `type` the page received. */
export function inbound(person, type) {
  return person.page.evaluate((t) => window.huizhen.events.filter((e) => e.dir === 'in' && e.type === t).map((e) => e.msg), type);
}

/** The patient page: device check passes, then "Enter the waiting room". */
export async function passDeviceCheckAndEnter(patient) {
  await waitForState(patient, 'the device check with a live connection', (s) => s.state === 'device_check' && s.connection === 'authenticated');
  await waitVisible(patient, '#view-check');
  await waitFor(`${patient.name}: camera preview and microphone`, async () => {
    const s = await patient.page.evaluate(() => ({
      camera: document.getElementById('camera-result').dataset.result,
      mic: document.getElementById('mic-result').dataset.result,
      width: document.getElementById('preview').videoWidth,
      connection: document.getElementById('connection-result').dataset.result,
      enter: !document.getElementById('btn-enter').disabled,
    }));
    return { ok: s.camera === 'ok' && s.mic === 'ok' && s.width > 0 && s.connection === 'ok' && s.enter, detail: s };
  });
  await patient.page.click('#btn-speaker');
  assert.equal(await patient.page.evaluate(() => window.huizhen.speakerTested), true, 'the speaker test tone played');
  await patient.page.click('#btn-enter');
}

/**
 * The seed flow, short: the demo patient checks in, the doctor invites the next patient, the
 * patient answers, and both are in the call decoding each other's video and receiving audio.
 * The pages are pushed onto `people`; returns {patient, doctor, consultation, media}.
 */
export async function seedCall(browser, server, people) {
  const patient = await openPage(browser, 'patient', server.links.patient);
  people.push(patient);
  await passDeviceCheckAndEnter(patient);
  await waitForState(patient, 'place 1 in the waiting room', (s) => s.state === 'waiting' && s.position === 1);
  const doctor = await openPage(browser, 'doctor', server.links.doctor);
  people.push(doctor);
  await waitForState(doctor, 'the console', (s) => s.state === 'idle' && s.connection === 'authenticated');
  await waitFor('the patient in the doctor’s queue', async () => {
    const rows = await doctor.page.locator('#queue-body tr').allTextContents();
    return { ok: rows.length === 1 && !(await doctor.page.locator('#btn-invite-next').isDisabled()), detail: rows };
  });
  await doctor.page.click('#btn-invite-next');
  await waitForState(patient, 'ringing', (s) => s.state === 'ringing');
  await waitVisible(patient, '#btn-answer');
  await patient.page.click('#btn-answer');
  await waitInCall(patient);
  await waitInCall(doctor);
  const consultation = (await pageState(doctor)).consultation;
  assert.ok(consultation, 'the doctor knows the consultation');
  assert.equal((await pageState(patient)).consultation, consultation, 'both are in the same consultation');
  const media = await waitForMedia('patient and doctor', allPairs([patient, doctor]));
  return { patient, doctor, consultation, media };
}
