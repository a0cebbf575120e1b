// huizhen room page: joins a room over the signaling WebSocket (/ws, protocol v1, see
// signaling/PROTOCOL.md) and exchanges media with the SFU through the call module
// (static/call.js: one RTCPeerConnection, perfect negotiation with the browser as the polite
// peer).
//
// Plain ES module, no build step, no external URLs.

import { Call, MEDIA_MESSAGE_TYPES, getLocalMedia } from './call.js';

const PROTOCOL_VERSION = 1;
const PING_INTERVAL_MS = 15000;
/** Waits between attempts to take the call back on a new socket (`resume`), last repeated. */
const RESUME_DELAYS_MS = [250, 500, 1000, 2000];

// ---------------------------------------------------------------------------------------------
// Room and display name from the URL: /room/<name>?name=<display name>

function roomFromPath(pathname) {
  const m = /^\/room\/([^/]+)\/?$/.exec(pathname);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return null;
  }
}

const params = new URLSearchParams(location.search);
const ROOM = roomFromPath(location.pathname);
// The server accepts display names of up to 128 bytes of UTF-8; 32 characters never exceed it.
const DISPLAY_NAME =
  [...(params.get('name') || '').trim()].slice(0, 32).join('') ||
  `Guest-${String(Math.floor(1000 + Math.random() * 9000))}`;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// State, exposed for tests and debugging as window.huizhen.

const events = [];
const errors = [];
let ws = null;
let pingTimer = null;
let resumeAttempt = 0;
/** No reconnect before this time (tests: a signaling outage of a given length). */
let holdReconnectUntil = 0;

function record(dir, msg) {
  events.push({ dir, type: msg.type, at: Date.now(), msg });
  if (events.length > 5000) events.splice(0, 1000);
}

const call = new Call({
  // ?ice=relay: media only through the server's TURN (tests, networks that need it).
  iceTransportPolicy: params.get('ice') === 'relay' ? 'relay' : 'all',
  // ?recover=restart: a stalled path gets an ICE restart instead of a fresh peer connection.
  pathRecovery: params.get('recover') === 'restart' ? 'restart' : 'renew',
  send,
  record,
  onError: fail,
  onChange: () => {
    updateButtons();
    updateConnectionStatus();
  },
  onBye: (reason, expected) => {
    if (expected) {
      ws?.close(1000, 'leave');
      return;
    }
    setStatus(`Removed by server: ${reason}`, true);
    clearInterval(pingTimer);
  },
  onPathStalled: () => reconnectSignaling('media path stalled'),
  log: logLine,
  tiles: $('tiles'),
  localVideo: $('local-video'),
  localScreen: $('local-screen'),
});
call.state = 'starting';

const huizhen = {
  /** The RTCPeerConnection (null until joined). */
  get pc() {
    return call.pc;
  },
  /** How many peer connections the call has had (a renewal after a change of network adds one). */
  get generation() {
    return call.generation;
  },
  /** Our participant id, from `joined`. */
  get participantId() {
    return call.participantId;
  },
  room: ROOM,
  displayName: DISPLAY_NAME,
  /** 'starting' | 'connecting' | 'joined' | 'resuming' | 'left' | 'closed' | 'failed' */
  get state() {
    return call.state;
  },
  /** participant id -> {id, display_name} of the others in the room. */
  get participants() {
    return call.participants;
  },
  /** track_id -> {participant_id, kind, mid} of the tracks we receive. */
  get remoteTracks() {
    return call.remoteTracks;
  },
  /** Every signaling frame and notable local event: {dir: 'in'|'out'|'local', type, at, msg}. */
  events,
  /** `error` frames and local failures: {code, message}. */
  errors,
  get localStream() {
    return call.localStream;
  },
  get screenStream() {
    return call.screenStream;
  },
  call,
  startScreenShare: () => call.startScreenShare(),
  /** New ICE credentials now (as after a failed path). */
  restartIce: () => call.restartIce('requested'),
  stopScreenShare: () => call.stopScreenShare(),
  toggleMicrophone: () => call.toggleMicrophone(),
  toggleCamera: () => call.toggleCamera(),
  leave,
  /** Tests: drop the signaling socket and stay away from the server for `ms` (the call goes on). */
  dropSignaling(ms) {
    holdReconnectUntil = Date.now() + ms;
    ws?.close(4000, 'signaling outage (test)');
  },
};
window.huizhen = huizhen;

// ---------------------------------------------------------------------------------------------
// UI helpers

function setStatus(text, isError = false) {
  const el = $('status');
  if (!el) return;
  el.textContent = text;
  el.classList.toggle('error', isError);
}

function logLine(text, isError = false) {
  const list = $('log');
  if (!list) return;
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (isError) li.className = 'error';
  list.append(li);
  while (list.children.length > 200) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

function fail(code, err) {
  const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  errors.push({ code, message });
  record('local', { type: 'local_error', code, message });
  setStatus(`Error (${code}): ${message}`, true);
  logLine(`error ${code}: ${message}`, true);
  console.error('huizhen', code, err);
}

let lastConnectionState = null;

function updateConnectionStatus() {
  const state = call.pc?.connectionState;
  if (!state || state === lastConnectionState || call.state !== 'joined') return;
  lastConnectionState = state;
  if (state === 'failed') {
    setStatus('Media connection failed', true);
  } else if (state === 'connected' && !errors.length) {
    setStatus(`In room “${ROOM}” as ${DISPLAY_NAME}`);
  }
}

function updateButtons() {
  const joined = call.state === 'joined';
  const audio = call.localStream?.getAudioTracks()[0];
  const video = call.localStream?.getVideoTracks()[0];
  const mic = $('btn-mic');
  mic.disabled = !joined || !audio;
  mic.textContent = audio && !audio.enabled ? 'Unmute microphone' : 'Mute microphone';
  mic.setAttribute('aria-pressed', String(!!audio && !audio.enabled));
  const cam = $('btn-cam');
  cam.disabled = !joined || !video;
  cam.textContent = video && !video.enabled ? 'Turn camera on' : 'Turn camera off';
  cam.setAttribute('aria-pressed', String(!!video && !video.enabled));
  const screen = $('btn-screen');
  screen.disabled = !joined || !navigator.mediaDevices?.getDisplayMedia;
  screen.textContent = call.screenStream ? 'Stop sharing' : 'Share screen';
  screen.setAttribute('aria-pressed', String(!!call.screenStream));
  $('btn-leave').disabled = !joined;
}

// ---------------------------------------------------------------------------------------------
// Signaling socket

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  record('out', msg);
  ws.send(JSON.stringify(msg));
  return true;
}

function connect(onOpen = null) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  ws = socket;
  const resuming = call.state === 'resuming';
  if (!resuming) {
    call.state = 'connecting';
    setStatus('Connecting…');
  }
  ws.addEventListener('open', () => {
    record('local', { type: 'socket_open', resuming });
    onOpen?.();
    const token = resuming ? call.resumeToken() : null;
    if (resuming && !token) {
      // The server's grace is over: the participant is gone.
      call.close('closed');
      setStatus('Disconnected from server', true);
      socket.close(1000, 'grace over');
      return;
    }
    if (token) send({ type: 'resume', token });
    else send({ type: 'join', v: PROTOCOL_VERSION, room: ROOM, display_name: DISPLAY_NAME });
    clearInterval(pingTimer);
    pingTimer = setInterval(() => send({ type: 'ping' }), PING_INTERVAL_MS);
  });
  ws.addEventListener('message', (event) => {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch (err) {
      fail('bad_json', `unparseable frame from server: ${err}`);
      return;
    }
    record('in', msg);
    call.enqueue(() => handleServerMessage(msg));
  });
  ws.addEventListener('close', (event) => {
    if (ws !== socket) return;
    clearInterval(pingTimer);
    if (call.state === 'left' || call.state === 'closed') return;
    const wasFailed = call.state === 'failed';
    record('local', { type: 'socket_closed', code: event.code, reason: event.reason });
    // The media session outlives the socket for the server's grace: take it back on a new
    // socket while the call goes on.
    if (call.suspend() || (call.state === 'resuming' && call.resumeToken())) {
      const backoff = RESUME_DELAYS_MS[Math.min(resumeAttempt, RESUME_DELAYS_MS.length - 1)];
      const delay = Math.max(backoff, holdReconnectUntil - Date.now());
      resumeAttempt += 1;
      setStatus('Connection to the server lost; reconnecting (the call goes on)…', true);
      logLine(`socket closed (${event.code}); resuming`, true);
      setTimeout(connect, delay);
      return;
    }
    if (!wasFailed) {
      setStatus(`Disconnected from server (code ${event.code}${event.reason ? `: ${event.reason}` : ''})`, true);
    }
    logLine(`socket closed (${event.code})`, true);
    call.close('closed');
  });
  ws.addEventListener('error', () => logLine('socket error', true));
}

/**
 * Move signaling to a new socket now (resume), without waiting for the old one to close: after
 * a change of network the old TCP connection is dead but does not know it.
 */
function reconnectSignaling(reason) {
  if (!ws || call.state !== 'joined') return;
  const old = ws;
  ws = null; // its close event, whenever it comes, is ignored
  clearInterval(pingTimer);
  record('local', { type: 'socket_replaced', reason });
  // Closed once the new socket is open, not before: Chromium held a new WebSocket to the
  // server back by ~0.8 s while the old one, on a network gone dark, was closing.
  const closeOld = () => {
    try {
      old.close(4000, reason);
    } catch {
      // already closing
    }
  };
  if (call.suspend()) {
    resumeAttempt = 0;
    setStatus('Network changed; reconnecting (the call goes on)…', true);
    connect(closeOld);
  } else {
    closeOld();
  }
}

async function handleServerMessage(msg) {
  switch (msg.type) {
    case 'joined':
      await call.process(msg);
      $('local-name').textContent = DISPLAY_NAME;
      setStatus(`Joined room “${msg.room}” as ${DISPLAY_NAME}`);
      return;
    case 'resumed':
      await call.process(msg);
      resumeAttempt = 0;
      setStatus(`Back in room “${msg.room}” as ${DISPLAY_NAME}`);
      return;
    case 'error':
      return onServerError(msg);
    case 'pong':
      return;
    default:
      if (!(await processMedia(msg))) logLine(`ignored unknown server message type ${JSON.stringify(msg.type)}`);
  }
}

async function processMedia(msg) {
  if (!MEDIA_MESSAGE_TYPES.has(msg.type)) return false;
  await call.process(msg);
  return true;
}

function onServerError(msg) {
  errors.push({ code: msg.code, message: msg.message });
  setStatus(`Server error (${msg.code}): ${msg.message}`, true);
  logLine(`server error ${msg.code}: ${msg.message}`, true);
  if (call.state === 'resuming') {
    // The resume was refused (the grace ended, the call ended): the session is gone.
    call.close('closed');
    setStatus(`Disconnected from server (${msg.code})`, true);
    return;
  }
  if (call.state !== 'joined') {
    // The join itself was refused (room_full, unsupported_version, ...): nothing more to do.
    call.state = 'failed';
    return;
  }
  call.onServerError(msg);
}

// ---------------------------------------------------------------------------------------------
// Controls

function leave() {
  if (call.state === 'left') return;
  const sent = call.leave();
  setStatus('You left the room');
  // The server answers `leave` with `bye` and closes the socket; close it ourselves if that
  // does not happen soon.
  const socket = ws;
  setTimeout(() => socket?.close(1000, 'leave'), sent ? 2000 : 0);
}

function bindControls() {
  $('btn-mic').addEventListener('click', () => call.toggleMicrophone());
  $('btn-cam').addEventListener('click', () => call.toggleCamera());
  $('btn-screen').addEventListener('click', () => {
    const action = call.screenStream ? call.stopScreenShare() : call.startScreenShare();
    action.catch((err) => fail('screen_share', err));
  });
  $('btn-leave').addEventListener('click', () => leave());
  window.addEventListener('pagehide', () => {
    if (call.state === 'joined') send({ type: 'leave' });
  });
}

// ---------------------------------------------------------------------------------------------

async function main() {
  bindControls();
  updateButtons();
  if (!ROOM) {
    call.state = 'failed';
    setStatus('No room in the address: open /room/<name>', true);
    return;
  }
  $('room-name').textContent = ROOM;
  document.title = `${ROOM} · huizhen`;
  $('local-name').textContent = DISPLAY_NAME;
  setStatus('Starting camera and microphone…');
  call.localStream = await getLocalMedia(logLine);
  call.showLocalStream();
  connect();
}

main().catch((err) => fail('internal', err));
