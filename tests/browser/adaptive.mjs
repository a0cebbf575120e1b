// Adaptive-media scenarios (issue 9): three Chromium participants in one room, one of them
// ("weak") in a network namespace of its own whose downlink is impaired (tests/impair/netns.sh:
// tc tbf for the rate, iptables statistic for loss, an NFQUEUE helper for delay), and the
// figures each scenario produces, read from every page's RTCPeerConnection stats once a second.
//
// Used by adaptive.test.mjs (assertions) and, as a CLI, to measure:
//   node adaptive.mjs bench [SCENARIO...]   run the scenarios (default: all), print a markdown
//                                           table and the JSON (also written to
//                                           HUIZHEN_ADAPTIVE_JSON when set)
//   node adaptive.mjs list                  the scenarios and the issue's targets
//
// Topology (all inside 127.0.0.0/8, on this machine):
//   root namespace: the server, bound to the veth's root address 127.77.X.1 (HTTP, WebSocket and
//   its one UDP media port; it announces 127.77.X.1 as its only, UDP, candidate) and the two
//   good participants ("alice", "bob") in one Chromium, which reach 127.77.X.1 over loopback;
//   namespace hzi-NAME: the weak participant's Chromium (launched through
//   tests/impair/chromium-netns.sh), which reaches 127.77.X.1 over the veth from 127.77.X.2.
//   Pages are opened at http://127.77.X.1:PORT, made a secure context (getUserMedia) with
//   --unsafely-treat-insecure-origin-as-secure; every other host name is unresolvable.
//
// Media: a generated 640x480 20 fps y4m (testsrc2 with temporal noise, so that VP8 needs its
// full ~1.7 Mbit/s like a real camera) and a speech-like wav (a voiced tone with syllable
// modulation and pauses), made once with ffmpeg into HUIZHEN_ADAPTIVE_MEDIA_DIR
// (default /tmp/huizhen-adaptive-media). HUIZHEN_ADAPTIVE_VIDEO=fake uses Chromium's built-in
// fake camera pattern instead (far too easy to encode: it does not reach 1.7 Mbit/s).
//
// Timeline of a scenario: everyone joins and decodes everyone; the clock starts; after PRE_S
// (10 s) the impairment starts; MEASURE_S (45 s) are measured. "After adaptation" means the
// window minus its first ADAPT_S (5 s).
//
// Env: HUIZHEN_BIN (server binary, see harness.mjs), CHROMIUM_BIN,
//      HUIZHEN_ADAPTIVE_PRE_S (10), HUIZHEN_ADAPTIVE_MEASURE_S (45),
//      HUIZHEN_ADAPTIVE_WARMUP_S (40: at most this long for the cameras to reach ~1.7 Mbit/s),
//      HUIZHEN_ADAPTIVE_JSON (bench: write the results there),
//      HUIZHEN_ADAPTIVE_VIDEO (file | fake), HUIZHEN_ADAPTIVE_MEDIA_DIR,
//      HUIZHEN_ADAPTIVE_MEDIA_TOML ("key = value; key = value": more lines of the server's [media]),
//      HUIZHEN_ADAPTIVE_EXTRA_TOML (more config sections, appended verbatim),
//      HUIZHEN_TEST_KEEP_LOGS=1 (keep the server's log directory).

import { execFile, execFileSync, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, CHROMIUM_BIN, REPO_ROOT, SERVER_BIN, sleep, waitFor } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const NETNS_SH = path.join(REPO_ROOT, 'tests', 'impair', 'netns.sh');
const CHROMIUM_NETNS = path.join(REPO_ROOT, 'tests', 'impair', 'chromium-netns.sh');

const env = process.env;
export const PRE_S = Number(env.HUIZHEN_ADAPTIVE_PRE_S || 10);
export const MEASURE_S = Number(env.HUIZHEN_ADAPTIVE_MEASURE_S || 45);
/** Seconds at the start of the measured window given to adaptation. */
export const ADAPT_S = 5;
/** A video announced paused for at least this share of the time after adaptation counts as paused in the figures (not as a shown video with a long stall). */
const PAUSED_SHARE = 0.9;
/** After adaptation, the weak participant must decode something in every window of this length. */
export const WINDOW_S = 5;
/** Bound of every wait for a state (join, media flowing). */
const WAIT_MS = 30_000;
/** Warm-up: every camera at 480p and at least this bitrate, waited for at most WARMUP_MAX_S. */
const WARMUP_KBPS = 1300;
export const WARMUP_MAX_S = Number(env.HUIZHEN_ADAPTIVE_WARMUP_S || 40);
/** Stats sampling period. */
const SAMPLE_MS = 1000;

// ---------------------------------------------------------------------------------------------
// Scenarios and the issue's targets, as data. `shape` is what netns.sh shape gets; `targets`
// are issue 9's figures (reported by the bench, not asserted: adaptive.test.mjs asserts what
// proves adaptation happened).

export const SCENARIOS = [
  { id: 'unimpaired', label: 'unimpaired', shape: null, targets: {} },
  {
    id: '300k',
    label: '300 kbit/s',
    shape: { rate: '300kbit' },
    // "at least 12 fps of the others' video (or of the active speaker's, with the rest
    // paused: say which)": the shown videos, with any other announced paused throughout.
    targets: { weakFpsMin: 12, restMayPause: true, maxStallS: 1, concealedMaxPct: 2 },
  },
  {
    id: '800k-50ms',
    label: '800 kbit/s + 50 ms',
    shape: { rate: '800kbit', delay: 50 },
    targets: { weakFpsMin: 18, concealedMaxPct: 1 },
  },
  { id: 'loss10', label: '10 % random loss', shape: { loss: 0.1 }, targets: { weakFpsMin: 18, concealedMaxPct: 3 } },
  {
    id: '120k',
    label: '120 kbit/s',
    shape: { rate: '120kbit' },
    targets: { audioOnlyAnnounced: true, concealedMaxPct: 3 },
  },
  {
    id: 'join-300k',
    label: 'joins at 300 kbit/s',
    shape: { rate: '300kbit' },
    joinImpaired: true,
    targets: { firstFrameS: 3, weakFpsMin: 12, restMayPause: true, concealedMaxPct: 2 },
  },
  {
    id: 'recovery',
    label: '300 kbit/s for 30 s, then clear',
    shape: { rate: '300kbit' },
    recoverAfterS: 30,
    targets: { recoveryS: 10 },
  },
];

/** Targets for the good participants in every scenario (issue 9). */
export const GOOD_TARGETS = { fpsWithinPct: 5, heightWithinPct: 5, extraKeyframesPer10s: 1 };

export function scenario(id) {
  const sc = SCENARIOS.find((s) => s.id === id);
  if (!sc) throw new Error(`unknown scenario ${id}; known: ${SCENARIOS.map((s) => s.id).join(', ')}`);
  return sc;
}

// ---------------------------------------------------------------------------------------------
// Capability and the namespace

/** null if this machine can run the harness, else why not (not root, no namespaces, ...). */
export function impairmentUnavailable() {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return `not root (uid ${process.getuid()}): network namespaces need root`;
  try {
    execFileSync(NETNS_SH, ['check'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
    return null;
  } catch (err) {
    return ((err.stdout || '') + (err.stderr || '')).trim() || `netns.sh check failed: ${err.message}`;
  }
}

export function netnsLog(args) {
  try {
    const r = execFileSync(NETNS_SH, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    return r;
  } catch (err) {
    throw new Error(`netns.sh ${args.join(' ')} failed: ${(err.stderr || '').trim() || err.message}`);
  }
}

/**
 * `netnsLog` without blocking the event loop: what samples a page while the network changes
 * goes on sampling (a synchronous call left a hole in the samples as long as the command).
 */
export function netnsAsync(args) {
  return new Promise((resolve, reject) => {
    execFile(NETNS_SH, args, { encoding: 'utf8', timeout: 60_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`netns.sh ${args.join(' ')} failed: ${(stderr || '').trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

// Namespaces still up are taken down whatever happens (exit, Ctrl-C).
const liveNamespaces = new Set();
const liveServers = new Set();
function cleanupNow() {
  for (const s of liveServers) {
    try {
      s.proc.kill('SIGKILL');
    } catch {
      // gone
    }
  }
  for (const name of liveNamespaces) {
    try {
      execFileSync(NETNS_SH, ['down', name], { stdio: 'ignore', timeout: 20_000 });
    } catch {
      // best effort
    }
  }
  liveNamespaces.clear();
}
process.on('exit', cleanupNow);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    cleanupNow();
    process.exit(130);
  });
}

let nsCounter = 0;
function uniqueName() {
  // 1-10 characters [a-z0-9]: pid and a counter in base 36.
  return `w${process.pid.toString(36)}${(nsCounter++).toString(36)}`.slice(0, 10);
}

export async function namespaceUp() {
  const name = uniqueName();
  liveNamespaces.add(name);
  const out = netnsLog(['up', name]);
  const info = Object.fromEntries(
    out
      .trim()
      .split('\n')
      .map((l) => l.split('='))
      .filter((kv) => kv.length === 2),
  );
  return { name, ns: info.NS, rootAddr: info.ROOT_ADDR, nsAddr: info.NS_ADDR, rootIf: info.ROOT_IF };
}

export function namespaceDown(name) {
  try {
    netnsLog(['down', name]);
  } finally {
    liveNamespaces.delete(name);
  }
}

function shapeArgs(shape) {
  const a = [];
  if (shape.rate) a.push('--rate', shape.rate);
  if (shape.loss) a.push('--loss', String(shape.loss));
  if (shape.delay) a.push('--delay', String(shape.delay));
  return a;
}

// ---------------------------------------------------------------------------------------------
// Media files

export function mediaFiles() {
  if (env.HUIZHEN_ADAPTIVE_VIDEO === 'fake') return { video: null, audio: null };
  const dir = env.HUIZHEN_ADAPTIVE_MEDIA_DIR || path.join(os.tmpdir(), 'huizhen-adaptive-media');
  fs.mkdirSync(dir, { recursive: true });
  const video = path.join(dir, 'camera-640x480-20fps.y4m');
  const audio = path.join(dir, 'speech-like-48k.wav');
  const make = (out, args) => {
    if (fs.existsSync(out) && fs.statSync(out).size > 0) return;
    const tmp = `${out}.tmp${process.pid}`;
    execFileSync('ffmpeg', ['-nostdin', '-v', 'error', '-y', ...args, tmp], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
    fs.renameSync(tmp, out);
  };
  // 8 s loop, 640x480 at 20 fps; temporal noise like a real camera's sensor, so the encoder needs
  // its whole budget.
  make(video, ['-f', 'lavfi', '-i', 'testsrc2=size=640x480:rate=20', '-vf', 'noise=alls=10:allf=t+u', '-t', '8', '-pix_fmt', 'yuv420p', '-f', 'yuv4mpegpipe']);
  // Speech-like: a voiced tone gliding around 180 Hz, 3 syllables/s, a pause every 4 s, a faint
  // noise floor (never digital silence).
  const expr =
    '0.35*sin(2*PI*(180+60*sin(2*PI*0.7*t))*t)*(0.55+0.45*sin(2*PI*3*t))*gt(mod(t\\,4)\\,0.6)' +
    '+0.12*sin(2*PI*(720+200*sin(2*PI*0.9*t))*t)*(0.5+0.5*sin(2*PI*3*t))*gt(mod(t\\,4)\\,0.6)' +
    '+0.01*(random(0)-0.5)';
  make(audio, ['-f', 'lavfi', '-i', `aevalsrc=${expr}:s=48000:d=8`, '-ac', '1', '-f', 'wav']);
  return { video, audio };
}

// ---------------------------------------------------------------------------------------------
// Server, bound to the veth's root-side address

async function freePort(host, kind) {
  return new Promise((resolve, reject) => {
    if (kind === 'udp') {
      const s = dgram.createSocket('udp4');
      s.once('error', reject);
      s.bind(0, host, () => {
        const { port } = s.address();
        s.close(() => resolve(port));
      });
    } else {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, host, () => {
        const { port } = s.address();
        s.close(() => resolve(port));
      });
    }
  });
}

/**
 * The server on `addr` (the veth's root address): HTTP/WebSocket and UDP media bound there, the
 * one announced candidate `addr` over UDP (no ICE-TCP), state in a temp directory.
 */
export async function startServerAt(addr, name) {
  if (!fs.existsSync(SERVER_BIN)) throw new Error(`server binary ${SERVER_BIN} not found: set HUIZHEN_BIN`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `huizhen-adaptive-${name}-`));
  const httpPort = await freePort(addr, 'tcp');
  const udpPort = await freePort(addr, 'udp');
  let tcpPort = await freePort(addr, 'tcp');
  while (tcpPort === httpPort) tcpPort = await freePort(addr, 'tcp');
  const configPath = path.join(dir, 'huizhen.toml');
  fs.writeFileSync(
    configPath,
    [
      '[http]',
      `listen = "${addr}:${httpPort}"`,
      '',
      '[media]',
      `udp_listen = "${addr}:${udpPort}"`,
      `tcp_listen = "${addr}:${tcpPort}"`,
      `announce = ["${addr}"]`,
      'announce_udp = true',
      'announce_tcp = false',
      '',
      // HUIZHEN_ADAPTIVE_MEDIA_TOML: more [media] lines (e.g. to try a setting of the adaptive server).
      ...(env.HUIZHEN_ADAPTIVE_MEDIA_TOML ? env.HUIZHEN_ADAPTIVE_MEDIA_TOML.split(';').map((l) => l.trim()) : []),
      '',
      '[turn]',
      `udp_listen = "${addr}:0"`,
      `tcp_listen = "${addr}:0"`,
      '',
      '[storage]',
      `data_dir = ${JSON.stringify(path.join(dir, 'data'))}`,
      '',
      '[archive]',
      `local_dir = ${JSON.stringify(path.join(dir, 'archive'))}`,
      '',
      // HUIZHEN_ADAPTIVE_EXTRA_TOML: more sections, appended (not [http], [media], [storage], [archive]).
      ...(env.HUIZHEN_ADAPTIVE_EXTRA_TOML ? [env.HUIZHEN_ADAPTIVE_EXTRA_TOML] : []),
    ].join('\n'),
  );
  const logPath = path.join(dir, 'server.log');
  const logFd = fs.openSync(logPath, 'a');
  const proc = spawn(SERVER_BIN, ['serve', '--config', configPath], {
    cwd: REPO_ROOT,
    stdio: ['ignore', logFd, logFd],
    env: { ...env, RUST_LOG: env.RUST_LOG || 'info' },
  });
  fs.closeSync(logFd);
  const server = { name, proc, dir, logPath, addr, httpPort, udpPort, base: `http://${addr}:${httpPort}`, exited: null };
  liveServers.add(server);
  proc.on('exit', (code, signal) => {
    server.exited = { code, signal };
  });
  await waitFor(`${name}: GET /readyz = 200`, async () => {
    if (server.exited) throw Object.assign(new Error(`server exited: ${JSON.stringify(server.exited)}\n${logTail(server)}`), { fatal: true });
    const res = await fetch(`${server.base}/readyz`, { signal: AbortSignal.timeout(2000) });
    return { ok: res.status === 200, detail: `status ${res.status}` };
  }, WAIT_MS, 100);
  return server;
}

function logTail(server, lines = 40) {
  try {
    return fs.readFileSync(server.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

export async function stopServerAt(server, { keep = false } = {}) {
  if (!server.exited) {
    server.proc.kill('SIGTERM');
    const deadline = Date.now() + 5000;
    while (!server.exited && Date.now() < deadline) await sleep(50);
    if (!server.exited) server.proc.kill('SIGKILL');
  }
  liveServers.delete(server);
  if (keep || env.HUIZHEN_TEST_KEEP_LOGS) console.error(`${server.name}: server log kept in ${server.logPath}`);
  else fs.rmSync(server.dir, { recursive: true, force: true });
}

/** /metrics as {name: sum over label sets} for the huizhen_* samples. */
export async function metrics(server) {
  try {
    const res = await fetch(`${server.base}/metrics`, { signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    const out = {};
    for (const line of text.split('\n')) {
      const m = /^(huizhen_[a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[3]);
    }
    return out;
  } catch {
    return {};
  }
}

// ---------------------------------------------------------------------------------------------
// Browsers and pages

function browserArgs(server, media) {
  const args = [
    ...CHROMIUM_ARGS,
    // Only the server's address resolves (IP literals go through these rules too).
    `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE ${server.addr}`,
    `--unsafely-treat-insecure-origin-as-secure=${server.base}`,
  ];
  if (media.video) args.push(`--use-file-for-fake-video-capture=${media.video}`);
  if (media.audio) args.push(`--use-file-for-fake-audio-capture=${media.audio}`);
  return args;
}

export async function launch(server, media, ns = null) {
  return chromium.launch({
    executablePath: ns ? CHROMIUM_NETNS : CHROMIUM_BIN,
    args: browserArgs(server, media),
    headless: true,
    env: ns ? { ...env, HUIZHEN_IMPAIR_NS: ns, CHROMIUM_BIN } : env,
    timeout: WAIT_MS,
  });
}

export async function join(browser, server, room, name, query = '') {
  const context = await browser.newContext({ viewport: { width: 960, height: 640 } });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  const person = { name, context, page, id: null, console: [] };
  page.on('console', (m) => {
    person.console.push(`${m.type()}: ${m.text()}`);
    if (person.console.length > 200) person.console.shift();
  });
  await page.goto(`${server.base}/room/${encodeURIComponent(room)}?name=${encodeURIComponent(name)}${query}`);
  person.id = await waitFor(`${name} to join room ${room}`, async () => {
    const s = await page.evaluate(() => (window.huizhen ? { id: window.huizhen.participantId, state: window.huizhen.state, errors: window.huizhen.errors } : null));
    return { ok: !!(s && s.id && s.state === 'joined'), value: s && s.id, detail: s };
  }, WAIT_MS);
  person.joinedAt = Date.now();
  return person;
}

/** One stats sample of a page: remote tracks, inbound/outbound RTP, the selected pair, pause events. */
export function sample(person) {
  return person.page.evaluate(async () => {
    const h = window.huizhen;
    const out = {
      t: Date.now(),
      state: h.state,
      tracks: [...h.remoteTracks].map(([track_id, x]) => ({ track_id, participant_id: x.participant_id, kind: x.kind, mid: x.mid })),
      pauses: h.events
        .filter((e) => e.dir === 'in' && (e.type === 'track_paused' || e.type === 'track_resumed'))
        .map((e) => ({ type: e.type, at: e.at, track_id: e.msg.track_id })),
      speakers: h.events
        .filter((e) => e.dir === 'in' && e.type === 'active_speaker')
        .map((e) => ({ at: e.at, participant_id: e.msg.participant_id ?? null })),
      inbound: [],
      outbound: [],
      pair: null,
    };
    if (!h.pc || h.pc.signalingState === 'closed') return out;
    const stats = await h.pc.getStats();
    const pick = (s, keys) => Object.fromEntries(keys.filter((k) => s[k] !== undefined).map((k) => [k, s[k]]));
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        out.inbound.push(
          pick(s, [
            'mid', 'kind', 'ssrc', 'packetsReceived', 'packetsLost', 'bytesReceived', 'headerBytesReceived', 'framesDecoded', 'keyFramesDecoded',
            'frameHeight', 'frameWidth', 'framesPerSecond', 'freezeCount', 'totalFreezesDuration', 'pliCount', 'nackCount',
            'concealedSamples', 'silentConcealedSamples', 'totalSamplesReceived', 'concealmentEvents', 'jitter',
          ]),
        );
        // The codec of the last packets (audio/red when RED arrives).
        out.inbound[out.inbound.length - 1].codec = stats.get(s.codecId)?.mimeType;
      } else if (s.type === 'outbound-rtp') {
        out.outbound.push(
          pick(s, [
            'mid', 'kind', 'rid', 'ssrc', 'packetsSent', 'bytesSent', 'framesEncoded', 'keyFramesEncoded', 'qpSum', 'frameHeight',
            'framesPerSecond', 'pliCount', 'firCount', 'nackCount', 'targetBitrate', 'qualityLimitationReason', 'encoderImplementation',
          ]),
        );
        out.outbound[out.outbound.length - 1].codec = stats.get(s.codecId)?.mimeType;
      } else if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        out.pair = pick(s, ['availableOutgoingBitrate', 'availableIncomingBitrate', 'currentRoundTripTime', 'bytesReceived', 'bytesSent']);
      }
    });
    return out;
  });
}

/** Samples every `SAMPLE_MS` of each person into person.samples until stop() (bounded by maxMs). */
function startSampler(people, maxMs) {
  let stopped = false;
  const end = Date.now() + maxMs;
  const loop = (async () => {
    while (!stopped && Date.now() < end) {
      const tick = Date.now();
      await Promise.all(
        people.map(async (p) => {
          if (!p.page || p.page.isClosed()) return;
          try {
            (p.samples ||= []).push(await sample(p));
          } catch {
            // page busy or closing: a missing sample only widens an interval
          }
        }),
      );
      await sleep(Math.max(0, SAMPLE_MS - (Date.now() - tick)));
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Analysis of samples over a window [a, b] (ms since the epoch)

function inWindow(samples, a, b) {
  return (samples || []).filter((s) => s.t >= a && s.t <= b);
}

function inboundOf(s, mid) {
  return s.inbound.find((x) => x.mid === mid) || null;
}

/** get(s1) - get(s0); a counter missing at s0 (its track arrived later) counts from 0. */
function delta(s0, s1, get) {
  const a = s0 ? get(s0) : undefined;
  const b = s1 ? get(s1) : undefined;
  return b === undefined ? null : b - (a ?? 0);
}

const round = (x, d = 1) => (x == null || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
const median = (xs) => {
  const v = xs.filter((x) => x != null).sort((p, q) => p - q);
  return v.length ? v[Math.floor(v.length / 2)] : null;
};

/** Concealed and received audio samples (all tracks) per sample interval over [a, b]. */
function audioTimeline(receiver, a, b) {
  const ss = inWindow(receiver.samples, a, b);
  const sum = (s, field) =>
    s.inbound.filter((x) => x.kind === 'audio').reduce((acc, x) => acc + (x[field] || 0), 0);
  const out = [];
  for (let i = 1; i < ss.length; i++) {
    out.push({
      t: round((ss[i].t - a) / 1000),
      concealed: sum(ss[i], 'concealedSamples') - sum(ss[i - 1], 'concealedSamples'),
      total: sum(ss[i], 'totalSamplesReceived') - sum(ss[i - 1], 'totalSamplesReceived'),
      lost: sum(ss[i], 'packetsLost') - sum(ss[i - 1], 'packetsLost'),
      // kbit/s: everything the transport received, and the RTP (payload + headers) in it.
      transportKbps: ss[i].pair && ss[i - 1].pair ? round(((ss[i].pair.bytesReceived - ss[i - 1].pair.bytesReceived) * 8) / (ss[i].t - ss[i - 1].t)) : null,
      rtpKbps: round(
        ((ss[i].inbound.reduce((x, v) => x + (v.bytesReceived || 0) + (v.headerBytesReceived || 0), 0) -
          ss[i - 1].inbound.reduce((x, v) => x + (v.bytesReceived || 0) + (v.headerBytesReceived || 0), 0)) * 8) /
          (ss[i].t - ss[i - 1].t),
      ),
    });
  }
  return out;
}

/** Whether `trackId` stands paused (track_paused without a later track_resumed) at time t. */
function pausedAt(pauses, trackId, t) {
  let paused = false;
  for (const e of pauses) if (e.track_id === trackId && e.at <= t) paused = e.type === 'track_paused';
  return paused;
}

/**
 * What `receiver` got from `publisherId`'s video and from everyone's audio over [a, b]:
 * fps per video track, frame height, longest stall (1 s samples: a lower bound), freezes per
 * Chromium, windows without progress, audio concealment, loss.
 */
export function receiverFigures(receiver, a, b, { windowS = WINDOW_S, adaptS = ADAPT_S, existingOnly = false } = {}) {
  const ss = inWindow(receiver.samples, a, b);
  const out = { samples: ss.length, video: [], audio: [] };
  if (ss.length < 2) return out;
  const s0 = ss[0];
  const s1 = ss[ss.length - 1];
  const dt = (s1.t - s0.t) / 1000;
  const last = s1;
  // existingOnly: only the tracks received since the window's start (the good participants'
  // figures when the weak one joins during the window).
  const tracks = existingOnly ? last.tracks.filter((tr) => inboundOf(s0, tr.mid)) : last.tracks;
  for (const tr of tracks) {
    const get = (field) => (s) => inboundOf(s, tr.mid)?.[field];
    if (tr.kind === 'video') {
      const frames = delta(s0, s1, get('framesDecoded'));
      // Longest run of samples without a decoded frame (lower bound of the gap).
      let maxStall = 0;
      let since = null;
      for (let i = 1; i < ss.length; i++) {
        const f0 = get('framesDecoded')(ss[i - 1]) || 0;
        const f1 = get('framesDecoded')(ss[i]) || 0;
        if (f1 > f0) since = null;
        else {
          since ??= ss[i - 1].t;
          maxStall = Math.max(maxStall, ss[i].t - since);
        }
      }
      // Windows after adaptation in which nothing was decoded (and the track was not announced paused).
      const dead = [];
      for (let w = a + adaptS * 1000; w + windowS * 1000 <= b + 500; w += windowS * 1000) {
        const ws = inWindow(ss, w, w + windowS * 1000);
        if (ws.length < 2) continue;
        const d = delta(ws[0], ws[ws.length - 1], get('framesDecoded')) || 0;
        if (d <= 0 && !pausedAt(last.pauses, tr.track_id, ws[ws.length - 1].t)) dead.push(Math.round((w - a) / 1000));
      }
      const after = inWindow(ss, a + adaptS * 1000, b);
      let maxStallAfter = 0;
      since = null;
      for (let i = 1; i < after.length; i++) {
        const f0 = get('framesDecoded')(after[i - 1]) || 0;
        const f1 = get('framesDecoded')(after[i]) || 0;
        if (f1 > f0) since = null;
        else {
          since ??= after[i - 1].t;
          maxStallAfter = Math.max(maxStallAfter, after[i].t - since);
        }
      }
      out.video.push({
        track_id: tr.track_id,
        from: tr.participant_id,
        fps: frames == null ? 0 : round(frames / dt),
        framesDecoded: frames || 0,
        height: median(ss.map((s) => get('frameHeight')(s))),
        lastHeight: get('frameHeight')(s1) ?? null,
        maxStallS: round(maxStall / 1000),
        maxStallAfterAdaptS: round(maxStallAfter / 1000),
        deadWindowsAfterAdapt: dead,
        freezes: delta(s0, s1, get('freezeCount')),
        freezesS: round(delta(s0, s1, get('totalFreezesDuration'))),
        packetsLost: delta(s0, s1, get('packetsLost')),
        packetsReceived: delta(s0, s1, get('packetsReceived')),
        kbps: round(((delta(s0, s1, get('bytesReceived')) || 0) * 8) / dt / 1000, 0),
        keyFramesDecoded: delta(s0, s1, get('keyFramesDecoded')),
        pliSent: delta(s0, s1, get('pliCount')),
        paused: pausedAt(last.pauses, tr.track_id, b),
        // Announced paused from the end of adaptation to the end of the window: audio only
        // for this person, by the server's choice and told to the page.
        pausedAfterAdapt: after.length > 0 && after.every((s) => pausedAt(last.pauses, tr.track_id, s.t)),
        // The share of that time it stood announced paused (resume attempts of a second or two
        // interrupt a pause that lasts the window).
        pausedShareAfterAdapt: after.length ? round(after.filter((s) => pausedAt(last.pauses, tr.track_id, s.t)).length / after.length, 2) : 0,
        pauseEvents: last.pauses.filter((e) => e.track_id === tr.track_id && e.at >= a && e.at <= b).map((e) => e.type),
      });
    } else if (tr.kind === 'audio') {
      const concealed = delta(s0, s1, get('concealedSamples'));
      const total = delta(s0, s1, get('totalSamplesReceived'));
      out.audio.push({
        track_id: tr.track_id,
        from: tr.participant_id,
        concealedPct: total ? round((100 * (concealed || 0)) / total, 2) : null,
        concealedSamples: concealed,
        totalSamples: total,
        concealmentEvents: delta(s0, s1, get('concealmentEvents')),
        codec: get('codec')(s1),
        packetsLost: delta(s0, s1, get('packetsLost')),
        packetsReceived: delta(s0, s1, get('packetsReceived')),
        kbps: round(((delta(s0, s1, get('bytesReceived')) || 0) * 8) / dt / 1000, 0),
      });
    }
  }
  const tot = out.audio.reduce((acc, x) => ({ c: acc.c + (x.concealedSamples || 0), t: acc.t + (x.totalSamples || 0) }), { c: 0, t: 0 });
  out.audioConcealedPct = tot.t ? round((100 * tot.c) / tot.t, 2) : null;
  out.videoFpsMin = out.video.length ? Math.min(...out.video.map((v) => v.fps)) : null;
  out.videoHeightMin = out.video.length ? Math.min(...out.video.map((v) => v.height ?? 0)) : null;
  out.maxStallAfterAdaptS = out.video.length ? Math.max(...out.video.map((v) => v.maxStallAfterAdaptS)) : null;
  // The videos shown after adaptation (the others stood paused and announced throughout, or
  // for at least PAUSED_SHARE of it, with resume attempts that did not hold: the table says so).
  const shown = out.video.filter((v) => !v.pausedAfterAdapt && v.pausedShareAfterAdapt < PAUSED_SHARE);
  out.shownFrom = shown.map((v) => v.from);
  out.shownFpsMin = shown.length ? Math.min(...shown.map((v) => v.fps)) : null;
  out.shownStallAfterAdaptS = shown.length ? Math.max(...shown.map((v) => v.maxStallAfterAdaptS)) : null;
  // Who the server named active speaker for the longest time over [a, b].
  const speakers = last.speakers || [];
  const held = {};
  let cur = null;
  let since = a;
  for (const e of speakers) {
    if (e.at <= a) cur = e.participant_id;
    else if (e.at <= b) {
      if (cur) held[cur] = (held[cur] || 0) + (e.at - since);
      cur = e.participant_id;
      since = e.at;
    }
  }
  if (cur) held[cur] = (held[cur] || 0) + (b - since);
  out.speakerMostly = Object.keys(held).sort((x, y) => held[y] - held[x])[0] ?? null;
  const lost = [...out.video, ...out.audio].reduce((x, v) => x + (v.packetsLost || 0), 0);
  const recv = [...out.video, ...out.audio].reduce((x, v) => x + (v.packetsReceived || 0), 0);
  out.packetsLost = lost;
  out.lossPct = recv + lost > 0 ? round((100 * lost) / (recv + lost), 1) : null;
  out.rxKbps = [...out.video, ...out.audio].reduce((x, v) => x + (v.kbps || 0), 0);
  return out;
}

/**
 * What `publisher` encoded over [a, b]. With simulcast the camera has one outbound-rtp per layer
 * (rid). Chrome's VP8 simulcast encoder makes a keyframe in every active layer at once, whichever
 * layer was asked (measured: the layers' keyFramesEncoded are equal, run after run), so the
 * publisher's keyframes are counted once per event: the most of any layer (`keyframes`); the
 * sum over the layers is reported beside it (`keyframesAllLayers`). Fps, QP and height are the
 * top layer's (the largest frame height), the bitrate is the total.
 */
export function publisherFigures(publisher, a, b) {
  const ss = inWindow(publisher.samples, a, b);
  if (ss.length < 2) return null;
  const s0 = ss[0];
  const s1 = ss[ss.length - 1];
  const dt = (s1.t - s0.t) / 1000;
  const video = (s) => s.outbound.filter((o) => o.kind === 'video');
  const key = (o) => `${o.mid}/${o.rid ?? ''}`;
  const layers = video(s1).map((o1) => {
    const o0 = video(s0).find((x) => key(x) === key(o1)) || {};
    const d = (f) => (o1[f] || 0) - (o0[f] || 0);
    return {
      rid: o1.rid ?? null,
      height: o1.frameHeight || 0,
      keyframes: d('keyFramesEncoded'),
      frames: d('framesEncoded'),
      qpSum: d('qpSum'),
      kbps: round((d('bytesSent') * 8) / dt / 1000, 0),
      plis: d('pliCount') + d('firCount'),
      limitation: o1.qualityLimitationReason,
    };
  });
  if (!layers.length) return null;
  const top = layers.reduce((x, y) => (y.height > x.height || (y.height === x.height && y.frames > x.frames) ? y : x));
  const kf = Math.max(...layers.map((l) => l.keyframes));
  const kfAll = layers.reduce((x, l) => x + l.keyframes, 0);
  return {
    keyframes: kf,
    keyframesPer10s: round((kf * 10) / dt),
    keyframesAllLayers: kfAll,
    fps: round(top.frames / dt),
    qp: top.frames > 0 ? round(top.qpSum / top.frames) : null,
    kbps: layers.reduce((x, l) => x + l.kbps, 0),
    height: top.height,
    plisReceived: layers.reduce((x, l) => x + l.plis, 0),
    layers: layers.map(({ rid, height, keyframes, kbps }) => ({ rid, height, keyframes, kbps })),
    qualityLimitation: [...new Set(layers.map((l) => l.limitation))].join(','),
  };
}

/**
 * Publishers' encoders start low and ramp up with their bandwidth estimate: wait (at most
 * WARMUP_MAX_S) until every publisher's camera is at its steady state, so that the measured
 * window starts from what the issue describes (~1.7 Mbit/s per camera): either 480p at
 * WARMUP_KBPS or more, or (simulcast: Chromium may not send a 480p layer of a 640x480 camera)
 * no quality limitation and a bitrate that stopped rising (within 10 % of the previous 2 s).
 * Returns what was reached.
 */
async function warmUp(publishers, say) {
  const deadline = Date.now() + WARMUP_MAX_S * 1000;
  let prev = null;
  for (;;) {
    const s0 = await Promise.all(publishers.map((p) => sample(p)));
    await sleep(2000);
    const s1 = await Promise.all(publishers.map((p) => sample(p)));
    const now = publishers.map((p, i) => {
      const f = publisherFigures({ samples: [s0[i], s1[i]] }, 0, Infinity);
      return { name: p.name, kbps: f?.kbps ?? 0, height: f?.height ?? 0, limitation: f?.qualityLimitation };
    });
    const ok = now.every(
      (x, i) =>
        (x.kbps >= WARMUP_KBPS && x.height >= 480) ||
        (prev && x.kbps > 0 && /^none(,none)*$/.test(x.limitation || '') && x.height === prev[i].height && x.kbps <= prev[i].kbps * 1.1),
    );
    prev = now;
    if (ok || Date.now() >= deadline) {
      say(`warm-up ${ok ? 'reached' : `NOT reached within ${WARMUP_MAX_S} s`}: ${now.map((x) => `${x.name} ${x.kbps} kbit/s ${x.height}p (${x.limitation})`).join(', ')}`);
      return { reached: ok, publishers: now };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One scenario

/**
 * Run `sc` (one of SCENARIOS) end to end and return its figures. Everything it creates (the
 * namespace, the server, the browsers) is gone when it returns or throws.
 */
export async function runScenario(sc, { preS = PRE_S, measureS = MEASURE_S, log = (m) => console.error(m) } = {}) {
  const media = mediaFiles();
  const nsInfo = await namespaceUp();
  const started = Date.now();
  let server = null;
  const browsers = [];
  const people = [];
  let ok = false;
  const say = (m) => log(`[${sc.id} +${((Date.now() - started) / 1000).toFixed(1)}s] ${m}`);
  try {
    say(`namespace ${nsInfo.ns}: server side ${nsInfo.rootAddr}, weak participant ${nsInfo.nsAddr}`);
    server = await startServerAt(nsInfo.rootAddr, sc.id);
    const metricsStart = await metrics(server);
    const good = await launch(server, media);
    browsers.push(good);
    const weakBrowser = await launch(server, media, nsInfo.ns);
    browsers.push(weakBrowser);
    const room = `adaptive-${sc.id}`;
    const alice = await join(good, server, room, 'alice');
    people.push(alice);
    const bob = await join(good, server, room, 'bob');
    people.push(bob);
    const goods = [alice, bob];
    let weak = null;
    const result = { id: sc.id, label: sc.label, shape: sc.shape, preS, measureS, namespace: nsInfo, at: new Date().toISOString() };
    // Where the server's log is, if it is kept (HUIZHEN_TEST_KEEP_LOGS): a failed check prints
    // its allocation changes from it.
    if (env.HUIZHEN_TEST_KEEP_LOGS) result.serverLog = server.logPath;

    const mediaFlows = async (receivers, publishers) => {
      for (const r of receivers) {
        const pubs = publishers.filter((p) => p !== r);
        await waitFor(`${r.name} to decode video and receive audio from ${pubs.map((p) => p.name).join(', ')}`, async () => {
          const s = await sample(r);
          const problems = [];
          for (const p of pubs) {
            const tr = s.tracks.filter((t) => t.participant_id === p.id);
            const v = tr.find((t) => t.kind === 'video');
            const au = tr.find((t) => t.kind === 'audio');
            if (!v || !(inboundOf(s, v.mid)?.framesDecoded > 0)) problems.push(`${p.name}: no decoded video`);
            if (!au || !(inboundOf(s, au.mid)?.packetsReceived > 0)) problems.push(`${p.name}: no audio`);
          }
          return { ok: problems.length === 0, detail: problems };
        }, WAIT_MS);
      }
    };

    if (!sc.joinImpaired) {
      weak = await join(weakBrowser, server, room, 'weak');
      people.push(weak);
      await mediaFlows(people, people);
    } else {
      await mediaFlows(goods, goods);
    }
    result.warmup = await warmUp(people, say);
    say('everyone decodes everyone; clock starts');
    const total = preS + measureS + (sc.recoverAfterS ? 40 : 0) + 30;
    const sampler = startSampler(people, total * 1000);
    const t0 = Date.now();
    await sleep(preS * 1000);
    const tImpair = Date.now();
    if (sc.shape) {
      netnsLog(['shape', nsInfo.name, ...shapeArgs(sc.shape)]);
      say(`impairment on: ${JSON.stringify(sc.shape)}`);
    }
    result.t0 = t0;
    result.tImpair = tImpair;

    if (sc.joinImpaired) {
      await sleep(2000);
      say('weak joins while impaired');
      weak = await join(weakBrowser, server, room, 'weak');
      people.push(weak);
      weak.samples = [];
      // First decoded frame of each remote video, polled every 250 ms for at most 30 s.
      const first = {};
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        const s = await sample(weak).catch(() => null);
        if (s) {
          for (const tr of s.tracks.filter((x) => x.kind === 'video')) {
            if (first[tr.participant_id] == null && inboundOf(s, tr.mid)?.framesDecoded > 0) first[tr.participant_id] = (s.t - weak.joinedAt) / 1000;
          }
          if (goods.every((g) => first[g.id] != null)) break;
        }
        await sleep(250);
      }
      result.firstFrameS = Object.fromEntries(goods.map((g) => [g.name, first[g.id] != null ? round(first[g.id], 2) : null]));
      say(`first decoded frames after join (s): ${JSON.stringify(result.firstFrameS)}`);
      // The measured window starts at the join, so that the weak participant's figures cover it.
    }

    const a = sc.joinImpaired ? weak.joinedAt : tImpair;
    if (sc.recoverAfterS) {
      await sleep(Math.max(0, a + sc.recoverAfterS * 1000 - Date.now()));
      netnsLog(['clear', nsInfo.name]);
      const tClear = Date.now();
      say('impairment off; waiting for the top resolution');
      // Top resolution: what the good participants receive from each publisher now.
      const top = {};
      for (const g of goods) {
        const s = await sample(g);
        for (const tr of s.tracks.filter((x) => x.kind === 'video')) {
          top[tr.participant_id] = Math.max(top[tr.participant_id] || 0, inboundOf(s, tr.mid)?.frameHeight || 0);
        }
      }
      let recovered = null;
      let prev = null;
      const deadline = tClear + 30_000;
      while (Date.now() < deadline) {
        const s = await sample(weak).catch(() => null);
        if (s && prev) {
          const vids = s.tracks.filter((x) => x.kind === 'video');
          const allTop = vids.length > 0 && vids.every((tr) => {
            const now = inboundOf(s, tr.mid);
            const before = inboundOf(prev, tr.mid);
            return now && before && now.framesDecoded > before.framesDecoded && (now.frameHeight || 0) >= (top[tr.participant_id] || 1);
          });
          if (allTop) {
            recovered = (s.t - tClear) / 1000;
            break;
          }
        }
        prev = s || prev;
        await sleep(500);
      }
      result.tClear = tClear;
      result.recoveryS = recovered == null ? null : round(recovered, 1);
      result.topHeight = top;
      say(`recovery to the top resolution: ${recovered == null ? 'not within 30 s' : `${round(recovered, 1)} s`}`);
      await sleep(3000);
    } else {
      await sleep(Math.max(0, a + measureS * 1000 - Date.now()));
    }
    await sampler.stop();
    const b = sc.recoverAfterS ? result.tClear : a + measureS * 1000;
    result.window = { startS: round((a - t0) / 1000), endS: round((b - t0) / 1000) };

    const names = new Map(people.map((p) => [p.id, p.name]));
    const named = (fig) => {
      for (const v of [...fig.video, ...fig.audio]) v.from = names.get(v.from) || v.from;
      if (fig.shownFrom) fig.shownFrom = fig.shownFrom.map((x) => names.get(x) || x);
      if (fig.speakerMostly) fig.speakerMostly = names.get(fig.speakerMostly) || fig.speakerMostly;
      return fig;
    };
    result.weak = named(receiverFigures(weak, a, b));
    // Where the weak participant's audio was concealed, second by second from the impairment
    // (JSON only: where a figure comes from).
    result.weakAudioTimeline = audioTimeline(weak, result.tImpair ?? a, b);
    result.good = {};
    result.goodPre = {};
    for (const g of goods) {
      result.good[g.name] = named(receiverFigures(g, a, b, { existingOnly: true }));
      result.goodPre[g.name] = named(receiverFigures(g, t0, tImpair, { adaptS: 0 }));
    }
    result.publishers = {};
    result.publishersPre = {};
    for (const p of people) {
      result.publishers[p.name] = publisherFigures(p, a, b);
      result.publishersPre[p.name] = publisherFigures(p, t0, tImpair);
    }
    const metricsEnd = await metrics(server);
    result.serverMetrics = Object.fromEntries(
      Object.keys(metricsEnd)
        .filter((k) => /_total$/.test(k) && metricsEnd[k] - (metricsStart[k] || 0) !== 0)
        .map((k) => [k, metricsEnd[k] - (metricsStart[k] || 0)]),
    );
    result.pauseAnnounced = result.weak.video.length > 0 && result.weak.video.every((v) => v.pauseEvents.includes('track_paused') || v.paused);
    result.loadavg = os.loadavg().map((x) => round(x, 2));
    ok = true;
    say(`done: weak fps ${result.weak.video.map((v) => `${v.from}=${v.fps}`).join(' ')}, audio concealed ${result.weak.audioConcealedPct} %`);
    return result;
  } catch (err) {
    for (const p of people) {
      const ev = await p.page
        .evaluate(() => window.huizhen?.events.filter((e) => e.type !== 'candidate').slice(-15).map((e) => `${e.dir} ${e.type}`))
        .catch(() => null);
      log(`--- ${p.name}: last events ${JSON.stringify(ev)}; console: ${p.console.slice(-10).join(' | ')}`);
    }
    if (server) log(`--- server log tail ---\n${logTail(server)}`);
    throw err;
  } finally {
    for (const p of people) await p.context.close().catch(() => {});
    for (const br of browsers) await br.close().catch(() => {});
    if (server) await stopServerAt(server, { keep: !ok });
    namespaceDown(nsInfo.name);
  }
}

// ---------------------------------------------------------------------------------------------
// Judging against the issue's targets, and the table

/** The issue's targets that `r` meets or misses, relative to `ref` (the unimpaired run) if given. */
export function judge(sc, r, ref = null) {
  const t = sc.targets || {};
  const out = [];
  const add = (name, met, value) => out.push({ name, met, value });
  const w = r.weak;
  if (t.weakFpsMin != null && t.restMayPause) {
    const paused = w.video.length - (w.shownFrom?.length ?? 0);
    add(`weak >= ${t.weakFpsMin} fps (videos shown; ${paused} paused and announced)`, w.shownFpsMin != null && w.shownFpsMin >= t.weakFpsMin, w.shownFpsMin);
  } else if (t.weakFpsMin != null) add(`weak >= ${t.weakFpsMin} fps`, w.videoFpsMin != null && w.videoFpsMin >= t.weakFpsMin, w.videoFpsMin);
  if (t.maxStallS != null && t.restMayPause) add(`weak: no stall > ${t.maxStallS} s after ${ADAPT_S} s (videos shown)`, w.shownStallAfterAdaptS != null && w.shownStallAfterAdaptS <= t.maxStallS, w.shownStallAfterAdaptS);
  else if (t.maxStallS != null) add(`weak: no stall > ${t.maxStallS} s after ${ADAPT_S} s`, w.maxStallAfterAdaptS != null && w.maxStallAfterAdaptS <= t.maxStallS, w.maxStallAfterAdaptS);
  if (t.concealedMaxPct != null) add(`weak audio concealed <= ${t.concealedMaxPct} %`, w.audioConcealedPct != null && w.audioConcealedPct <= t.concealedMaxPct, w.audioConcealedPct);
  if (t.audioOnlyAnnounced) add('video paused and announced (audio only)', !!r.pauseAnnounced, r.pauseAnnounced);
  if (t.firstFrameS != null) {
    // The videos shown: one paused from the start (announced) has no first frame to wait for.
    const shown = Object.entries(r.firstFrameS || {}).filter(([who, x]) => x != null || !(t.restMayPause && r.weak?.video?.find((w) => w.from === who)?.pauseEvents?.includes('track_paused')));
    const v = shown.length ? Math.max(...shown.map(([, x]) => (x == null ? Infinity : x))) : Infinity;
    add(`first frame <= ${t.firstFrameS} s after joining`, v <= t.firstFrameS, Number.isFinite(v) ? v : null);
  }
  if (t.recoveryS != null) add(`top resolution <= ${t.recoveryS} s after recovery`, r.recoveryS != null && r.recoveryS <= t.recoveryS, r.recoveryS);
  if (sc.id !== 'unimpaired') {
    const kf = goodKeyframesPer10s(r);
    const base = ref ? goodKeyframesPer10s(ref) : 0;
    add(`good publishers: <= ${GOOD_TARGETS.extraKeyframesPer10s} extra keyframe / 10 s`, kf - base <= GOOD_TARGETS.extraKeyframesPer10s, round(kf - base));
    if (ref) {
      const fps = goodFpsMin(r);
      const fpsRef = goodFpsMin(ref);
      add(`good participants' fps within ${GOOD_TARGETS.fpsWithinPct} % of unimpaired`, fps >= fpsRef * (1 - GOOD_TARGETS.fpsWithinPct / 100), `${fps} vs ${fpsRef}`);
    }
  }
  return out;
}

/** Keyframes per 10 s of the good publishers (the most of the two). */
export function goodKeyframesPer10s(r) {
  return Math.max(...['alice', 'bob'].map((n) => r.publishers[n]?.keyframesPer10s ?? 0));
}

export function goodFpsMin(r) {
  return Math.min(...Object.values(r.good).map((g) => g.videoFpsMin ?? 0));
}

export function table(results) {
  const ref = results.find((r) => r.id === 'unimpaired') || null;
  const rows = [
    '| weak participant\'s downlink | weak: video fps (per publisher) | weak: longest stall after 5 s (videos shown) | weak: height | weak: audio concealed | weak: packets lost | others: video fps (min) | others: height (min) | keyframes / 10 s (good publishers, max) | QP (good publishers) | issue 9 targets missed |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const r of results) {
    const sc = scenario(r.id);
    const w = r.weak;
    const extra = [];
    if (w.speakerMostly) extra.push(`active speaker mostly ${w.speakerMostly}`);
    if (r.firstFrameS) extra.push(`first frame ${Object.entries(r.firstFrameS).map(([k, v]) => `${k} ${v == null ? 'never (30 s)' : `${v} s`}`).join(', ')}`);
    if (r.id === 'recovery') extra.push(`top resolution ${r.recoveryS == null ? 'not within 30 s' : `after ${r.recoveryS} s`}`);
    const missed = judge(sc, r, ref && r !== ref ? ref : null).filter((j) => !j.met).map((j) => `${j.name} (${j.value})`);
    const goodFps = Object.values(r.good).map((g) => g.videoFpsMin);
    const goodH = Object.values(r.good).map((g) => g.videoHeightMin);
    const qp = ['alice', 'bob'].map((n) => r.publishers[n]?.qp).filter((x) => x != null);
    rows.push(
      `| ${r.label}${extra.length ? ` (${extra.join('; ')})` : ''} | ${w.video.map((v) => (v.pausedAfterAdapt ? `${v.fps} (paused)` : v.pausedShareAfterAdapt >= PAUSED_SHARE ? `${v.fps} (paused ${Math.round(v.pausedShareAfterAdapt * 100)} % of the time)` : `${v.fps}`)).join(' / ')} | ${w.shownStallAfterAdaptS ?? '-'} s | ${w.video.map((v) => (v.framesDecoded > 0 ? v.height ?? '-' : '-')).join(' / ')} | ${w.audioConcealedPct ?? '-'} % | ${w.lossPct ?? '-'} % (${w.packetsLost}) | ${Math.min(...goodFps)} | ${Math.min(...goodH)} | ${['alice', 'bob'].map((n) => r.publishers[n]?.keyframesPer10s ?? '-').join(' / ')} | ${qp.join(' / ')} | ${missed.length ? missed.join('; ') : 'none'} |`,
    );
  }
  return rows.join('\n');
}

// ---------------------------------------------------------------------------------------------
// CLI

async function main(argv) {
  const [cmd, ...ids] = argv;
  if (cmd === 'list') {
    for (const s of SCENARIOS) console.log(`${s.id.padEnd(12)} ${s.label.padEnd(34)} shape ${JSON.stringify(s.shape)} targets ${JSON.stringify(s.targets)}`);
    console.log(`good participants, every scenario: ${JSON.stringify(GOOD_TARGETS)}`);
    return 0;
  }
  if (cmd !== 'bench') {
    console.error('usage: node adaptive.mjs bench [SCENARIO...] | list');
    return 2;
  }
  const why = impairmentUnavailable();
  if (why) {
    console.error(`cannot run: ${why}`);
    return 3;
  }
  const chosen = ids.length ? ids.map(scenario) : SCENARIOS;
  const results = [];
  const load = [];
  for (const sc of chosen) {
    load.push({ before: sc.id, uptime: os.loadavg().map((x) => round(x, 2)) });
    try {
      results.push(await runScenario(sc));
    } catch (err) {
      console.error(`scenario ${sc.id} failed: ${err.stack || err}`);
      results.push({ id: sc.id, label: sc.label, error: String(err.message || err) });
    }
  }
  const good = results.filter((r) => !r.error);
  const doc = { server: SERVER_BIN, chromium: CHROMIUM_BIN, preS: PRE_S, measureS: MEASURE_S, load, results, loadAfter: os.loadavg() };
  if (env.HUIZHEN_ADAPTIVE_JSON) fs.writeFileSync(env.HUIZHEN_ADAPTIVE_JSON, JSON.stringify(doc, null, 1));
  console.log(table(good));
  for (const r of results.filter((x) => x.error)) console.log(`\n${r.id}: FAILED to run: ${r.error}`);
  console.log(`\nload average (1/5/15 min) before each scenario: ${load.map((l) => `${l.before} ${l.uptime.join('/')}`).join(', ')}`);
  if (!env.HUIZHEN_ADAPTIVE_JSON) console.log(`\n${JSON.stringify(doc, null, 1)}`);
  return results.some((r) => r.error) ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => {
      cleanupNow();
      process.exit(code);
    },
    (err) => {
      console.error(err);
      cleanupNow();
      process.exit(1);
    },
  );
}
