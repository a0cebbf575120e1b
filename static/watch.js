// huizhen watch page (/watch/<room>): a WHEP player for large audiences (a lecture, a
// health-education broadcast). It receives the room's first published audio and video through
// one RTCPeerConnection negotiated over plain HTTP (WHEP): POST an SDP offer with recvonly audio
// and video, get the answer in a 201, DELETE the session URL (Location) when leaving. No
// WebSocket and no camera: a viewer costs the server one session and nothing else.
//
// Query: ?consultation=ID&token=T uses /whep/consultation/ID with `Authorization: Bearer T`
// instead of the room path; ?ice=relay only uses the server's TURN relay.
//
// Why it waits for ICE gathering before the POST: the offer then carries every candidate, so no
// trickle PATCH is needed. The TURN servers the server names in `Link: rel="ice-server"` headers
// come with the answer, too late for this offer: they are applied to the connection (for a
// later ICE restart) and used from the first gathering of the next attempt.
//
// Retries are bounded (MAX_ATTEMPTS failed attempts in a row) and jittered, so that an audience
// that arrived before the broadcast does not hit the server in lockstep when it starts.
//
// Plain ES module, no build step, no external URLs.

import { applyTranslations, bindLanguageToggle, t } from './i18n.js';

/** Failed attempts in a row before the page gives up (a "Try again" button then starts over). */
const MAX_ATTEMPTS = 20;
/** 409 answers (nobody publishes yet) in a row before the page gives up: about an hour. */
const MAX_WAITS = 720;
/** The longest wait for ICE gathering before the offer is sent with what it has. */
const GATHER_MAX_MS = 2000;
/** Waits after a failed attempt, the last one repeated. */
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000];
/** Bounds of a server's Retry-After, in seconds. */
const RETRY_AFTER_MIN_S = 1;
const RETRY_AFTER_MAX_S = 60;
/** One HTTP request's bound. */
const HTTP_TIMEOUT_MS = 10000;
/** After `disconnected` for this long, the connection counts as failed. */
const DISCONNECTED_MS = 5000;
/** No media bytes for this long while connected: the broadcast stopped; start over. */
const STALL_MS = 10000;

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Where to connect

const params = new URLSearchParams(location.search);

function roomFromPath(pathname) {
  const m = /^\/watch\/([^/]+)\/?$/.exec(pathname);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return null;
  }
}

const ROOM = roomFromPath(location.pathname);
const CONSULTATION = params.get('consultation');
const TOKEN = params.get('token');
const ENDPOINT = CONSULTATION
  ? new URL(`/whep/consultation/${encodeURIComponent(CONSULTATION)}`, location.origin).href
  : ROOM
    ? new URL(`/whep/room/${encodeURIComponent(ROOM)}`, location.origin).href
    : null;
const ICE_POLICY = params.get('ice') === 'relay' ? 'relay' : 'all';

// ---------------------------------------------------------------------------------------------
// State, exposed for tests and debugging as window.__watch.

/**
 * 'starting' | 'connecting' (offer sent or ICE in progress) | 'waiting' (nobody publishes yet) |
 * 'playing' (connected) | 'retrying' (after a failure) | 'failed' (gave up) | 'ended' (left)
 */
let state = 'starting';
let pc = null;
/** The WHEP session URL (Location of the 201), null when there is none. */
let session = null;
let etag = null;
/** From the server's Link headers; used for the next RTCPeerConnection. */
let iceServers = [];
/** Bumped by every attempt: a stale attempt's callbacks see it changed and stop. */
let generation = 0;
let failures = 0;
let waits = 0;
let ended = false;
const events = [];
const errors = [];

function record(type, detail = {}) {
  events.push({ at: Date.now(), type, ...detail });
  if (events.length > 500) events.splice(0, 100);
}

window.__watch = {
  get pc() {
    return pc;
  },
  get state() {
    return state;
  },
  get session() {
    return session;
  },
  get etag() {
    return etag;
  },
  get iceServers() {
    return iceServers;
  },
  get attempts() {
    return { failures, waits, generation };
  },
  endpoint: ENDPOINT,
  events,
  errors,
  /** Leave: stop retrying and DELETE the session. */
  stop: () => leave('stop'),
};

// ---------------------------------------------------------------------------------------------
// UI

let statusKey = 'watch_starting';
let statusVars = {};

function setState(next, key, vars = {}, isError = false) {
  state = next;
  statusKey = key;
  statusVars = vars;
  record('state', { state: next });
  renderStatus(isError);
  $('btn-retry').hidden = next !== 'failed';
}

function renderStatus(isError = state === 'failed') {
  const el = $('status');
  const key = statusKey === 'watch_playing' && !$('player').muted ? 'watch_playing_sound' : statusKey;
  el.textContent = t(key, statusVars);
  el.classList.toggle('error', isError);
}

function renderSound() {
  const video = $('player');
  const btn = $('btn-sound');
  btn.hidden = !video.muted;
  renderStatus();
}

function enableSound() {
  const video = $('player');
  video.muted = false;
  video.play().catch(() => {});
  renderSound();
}

// ---------------------------------------------------------------------------------------------
// HTTP

/** `Link` header values (fetch joins repeated headers with ", ") to RTCIceServer entries. */
export function parseIceServerLinks(header) {
  if (!header) return [];
  // Split at commas outside <...> and "...".
  const parts = [];
  let cur = '';
  let inAngle = false;
  let inQuote = false;
  for (const ch of header) {
    if (ch === '<' && !inQuote) inAngle = true;
    else if (ch === '>' && !inQuote) inAngle = false;
    else if (ch === '"' && !inAngle) inQuote = !inQuote;
    if (ch === ',' && !inAngle && !inQuote) {
      parts.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  parts.push(cur);
  const servers = [];
  for (const part of parts) {
    const m = /^\s*<([^>]*)>(.*)$/.exec(part);
    if (!m) continue;
    const attrs = {};
    for (const p of m[2].split(';')) {
      const kv = /^\s*([A-Za-z0-9_-]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]*)))?\s*$/.exec(p);
      if (kv) attrs[kv[1].toLowerCase()] = (kv[2] !== undefined ? kv[2].replace(/\\(.)/g, '$1') : kv[3]) ?? '';
    }
    if (!(attrs.rel || '').split(/\s+/).includes('ice-server')) continue;
    const entry = { urls: m[1] };
    if (attrs.username !== undefined) entry.username = attrs.username;
    if (attrs.credential !== undefined) entry.credential = attrs.credential;
    servers.push(entry);
  }
  return servers;
}

/** Retry-After (delta seconds or an HTTP date) in ms, bounded; `fallbackS` when absent. */
function retryAfterMs(header, fallbackS) {
  let s = fallbackS;
  if (header) {
    const n = Number(header.trim());
    if (Number.isFinite(n)) s = n;
    else {
      const at = Date.parse(header);
      if (Number.isFinite(at)) s = (at - Date.now()) / 1000;
    }
  }
  s = Math.min(RETRY_AFTER_MAX_S, Math.max(RETRY_AFTER_MIN_S, s));
  return s * 1000;
}

/** Up to +50 % of `ms`, so that many viewers do not retry together. */
function jitter(ms) {
  return Math.round(ms * (1 + Math.random() * 0.5));
}

function authHeaders() {
  return TOKEN ? { authorization: `Bearer ${TOKEN}` } : {};
}

/** DELETE the session, if any; never throws. `keepalive` for pagehide. */
function deleteSession({ keepalive = false } = {}) {
  const url = session;
  session = null;
  etag = null;
  if (!url) return Promise.resolve();
  record('delete', { keepalive });
  return fetch(url, {
    method: 'DELETE',
    headers: authHeaders(),
    keepalive,
    signal: keepalive ? undefined : AbortSignal.timeout(HTTP_TIMEOUT_MS),
  })
    .then((res) => record('deleted', { status: res.status }))
    .catch((err) => record('delete_failed', { message: String(err && err.message ? err.message : err) }));
}

// ---------------------------------------------------------------------------------------------
// One attempt

function waitForGathering(conn) {
  if (conn.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      conn.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (conn.iceGatheringState === 'complete') done();
    };
    const timer = setTimeout(done, GATHER_MAX_MS);
    conn.addEventListener('icegatheringstatechange', check);
  });
}

function closePc() {
  if (!pc) return;
  try {
    pc.close();
  } catch {
    // closed already
  }
  pc = null;
}

/**
 * Returns {retryInMs, key} when the caller should try again, or null once connected (the
 * connection's watchers call `restart` from then on).
 */
async function attempt(gen) {
  // While waiting for the broadcast to start, the status keeps saying so.
  if (state !== 'waiting') setState('connecting', 'watch_connecting');
  const hadServers = iceServers.length > 0;
  const conn = new RTCPeerConnection({ iceServers, iceTransportPolicy: ICE_POLICY, bundlePolicy: 'max-bundle' });
  pc = conn;
  conn.addTransceiver('audio', { direction: 'recvonly' });
  conn.addTransceiver('video', { direction: 'recvonly' });
  const stream = new MediaStream();
  conn.addEventListener('track', (e) => {
    if (gen !== generation) return;
    stream.addTrack(e.track);
    const video = $('player');
    if (video.srcObject !== stream) video.srcObject = stream;
    video.play().catch(() => {});
  });
  await conn.setLocalDescription(await conn.createOffer());
  await waitForGathering(conn);
  if (gen !== generation) return null;

  let res;
  try {
    res = await fetch(ENDPOINT, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', ...authHeaders() },
      body: conn.localDescription.sdp,
      signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
    });
  } catch (err) {
    record('post_failed', { message: String(err && err.message ? err.message : err) });
    return { retry: 'failure', key: 'watch_retry_network' };
  }
  if (gen !== generation) return null;
  record('post', { status: res.status });
  if (res.status === 409) {
    return { retry: 'wait', ms: retryAfterMs(res.headers.get('retry-after'), 5), key: 'watch_waiting' };
  }
  if (res.status === 401 || res.status === 403 || res.status === 404) {
    // Retrying will not help: a wrong link or token, or a room or consultation that is gone.
    errors.push({ status: res.status });
    return { retry: 'never', key: res.status === 404 ? 'watch_not_found' : 'watch_forbidden' };
  }
  if (res.status !== 201) {
    errors.push({ status: res.status });
    const ms = res.status === 503 || res.status === 429 ? retryAfterMs(res.headers.get('retry-after'), 5) : null;
    return { retry: 'failure', ms, key: 'watch_retry_server', vars: { status: res.status } };
  }
  const answer = await res.text();
  const loc = res.headers.get('location');
  session = loc ? new URL(loc, ENDPOINT).href : null;
  etag = res.headers.get('etag');
  const servers = parseIceServerLinks(res.headers.get('link'));
  if (servers.length) {
    iceServers = servers;
    try {
      conn.setConfiguration({ ...conn.getConfiguration(), iceServers: servers });
    } catch (err) {
      record('set_configuration_failed', { message: String(err && err.message ? err.message : err) });
    }
  }
  if (ICE_POLICY === 'relay' && !hadServers && servers.length) {
    // Relay only and nothing gathered yet: start again at once, now with the TURN servers.
    record('relay_servers_learned', { count: servers.length });
    return { retry: 'now', key: 'watch_connecting' };
  }
  try {
    await conn.setRemoteDescription({ type: 'answer', sdp: answer });
  } catch (err) {
    errors.push({ message: `answer: ${err.message}` });
    return { retry: 'failure', key: 'watch_retry_server', vars: { status: res.status } };
  }
  watchConnection(conn, gen);
  return null;
}

/** Watch a negotiated connection: playing when connected, start over when it fails or stalls. */
function watchConnection(conn, gen) {
  let disconnectedTimer = null;
  const onState = () => {
    if (gen !== generation) return;
    const s = conn.connectionState;
    record('connection', { state: s });
    if (s === 'connected') {
      clearTimeout(disconnectedTimer);
      disconnectedTimer = null;
      failures = 0;
      waits = 0;
      setState('playing', 'watch_playing');
    } else if (s === 'disconnected') {
      if (!disconnectedTimer) disconnectedTimer = setTimeout(() => restart(gen, 'disconnected'), DISCONNECTED_MS);
    } else if (s === 'failed' || s === 'closed') {
      restart(gen, s);
    }
  };
  conn.addEventListener('connectionstatechange', onState);
  onState();

  // A broadcast that stops sending leaves the connection up: notice it from the byte counters.
  let lastBytes = -1;
  let lastChange = Date.now();
  const timer = setInterval(async () => {
    if (gen !== generation) {
      clearInterval(timer);
      return;
    }
    if (conn.connectionState !== 'connected') {
      lastChange = Date.now();
      return;
    }
    let bytes = 0;
    try {
      (await conn.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp') bytes += s.bytesReceived || 0;
      });
    } catch {
      return;
    }
    if (bytes !== lastBytes) {
      lastBytes = bytes;
      lastChange = Date.now();
    } else if (Date.now() - lastChange > STALL_MS) {
      clearInterval(timer);
      restart(gen, 'stalled');
    }
  }, 1000);
}

/** The connection of attempt `gen` failed: tear it down and try again after a pause. */
function restart(gen, why) {
  if (gen !== generation || ended) return;
  record('restart', { why });
  run({ retry: 'failure', key: why === 'stalled' ? 'watch_stalled' : 'watch_retry_network' });
}

/** Tear down what there is, then attempt until connected or out of attempts. */
async function run(outcome = null) {
  const gen = ++generation;
  for (;;) {
    if (outcome) {
      closePc();
      await deleteSession();
      if (gen !== generation || ended) return;
      let ms;
      if (outcome.retry === 'never') {
        setState('failed', outcome.key, outcome.vars, true);
        return;
      } else if (outcome.retry === 'now') {
        ms = 0;
      } else if (outcome.retry === 'wait') {
        waits += 1;
        if (waits > MAX_WAITS) {
          setState('failed', 'watch_gave_up', {}, true);
          return;
        }
        ms = jitter(outcome.ms);
        setState('waiting', outcome.key, { seconds: Math.ceil(ms / 1000) });
      } else {
        failures += 1;
        if (failures >= MAX_ATTEMPTS) {
          setState('failed', 'watch_gave_up', {}, true);
          return;
        }
        ms = jitter(outcome.ms ?? BACKOFF_MS[Math.min(failures - 1, BACKOFF_MS.length - 1)]);
        setState('retrying', outcome.key, { seconds: Math.ceil(ms / 1000), ...(outcome.vars || {}) });
      }
      await sleep(ms);
      if (gen !== generation || ended) return;
    }
    try {
      outcome = await attempt(gen);
    } catch (err) {
      errors.push({ message: String(err && err.message ? err.message : err) });
      outcome = { retry: 'failure', key: 'watch_retry_network' };
    }
    if (!outcome || gen !== generation) return;
  }
}

function leave(why) {
  if (ended) return Promise.resolve();
  ended = true;
  generation += 1;
  record('leave', { why });
  closePc();
  setState('ended', 'watch_ended');
  return deleteSession({ keepalive: why === 'pagehide' });
}

// ---------------------------------------------------------------------------------------------
// Start

applyTranslations();
bindLanguageToggle($('lang-toggle'));
$('stream-name').textContent = CONSULTATION ? t('watch_consultation') : ROOM || '';
$('btn-sound').addEventListener('click', enableSound);
$('player').addEventListener('volumechange', renderSound);
$('btn-retry').addEventListener('click', () => {
  failures = 0;
  waits = 0;
  run();
});
window.addEventListener('huizhen:langchange', () => renderStatus());
window.addEventListener('pagehide', () => leave('pagehide'));
// Back from the back-forward cache: the session was deleted on pagehide; start a new one.
window.addEventListener('pageshow', (e) => {
  if (!e.persisted || !ended || !ENDPOINT) return;
  ended = false;
  failures = 0;
  waits = 0;
  run();
});
renderSound();

if (!ENDPOINT) {
  setState('failed', 'watch_not_found', {}, true);
} else if (typeof RTCPeerConnection === 'undefined') {
  setState('failed', 'watch_unsupported', {}, true);
} else {
  run();
}
