// huizhen browser client: joins a room over the signaling WebSocket (/ws, protocol v1, see
// signaling/PROTOCOL.md) and exchanges media with the SFU over one RTCPeerConnection.
//
// Negotiation follows "perfect negotiation" with the browser as the POLITE peer: the client
// sends the first offer; afterwards the server offers whenever tracks of other participants
// come or go, and the client offers when it adds or removes its own tracks (screen share).
// If a server offer collides with a pending local offer, the local offer is rolled back
// (implicitly, by setRemoteDescription) and re-sent once the connection is stable again.
//
// Plain ES module, no build step, no external URLs.

const PROTOCOL_VERSION = 1;
const PING_INTERVAL_MS = 15000;
// A local offer the server neither answered nor superseded with its own offer within this time
// is rolled back, so that negotiationneeded fires and the offer is sent again.
const OFFER_TIMEOUT_MS = 10000;
const MAX_OFFER_FAILURES = 3;

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

// ---------------------------------------------------------------------------------------------
// State, exposed for tests and debugging as window.huizhen.

const huizhen = {
  /** The RTCPeerConnection (null until joined). */
  pc: null,
  /** Our participant id, from `joined`. */
  participantId: null,
  room: ROOM,
  displayName: DISPLAY_NAME,
  /** 'starting' | 'connecting' | 'joined' | 'left' | 'closed' | 'failed' */
  state: 'starting',
  /** participant id -> {id, display_name} of the others in the room. */
  participants: new Map(),
  /** track_id -> {participant_id, kind, mid} of the tracks we receive. */
  remoteTracks: new Map(),
  /** Every signaling frame and notable local event: {dir: 'in'|'out'|'local', type, at, msg}. */
  events: [],
  /** `error` frames and local failures: {code, message}. */
  errors: [],
  localStream: null,
  screenStream: null,
  startScreenShare,
  stopScreenShare,
  toggleMicrophone,
  toggleCamera,
  leave,
};
window.huizhen = huizhen;

let ws = null;
let pingTimer = null;
let offerTimer = null;
let offerFailures = 0;
let makingOffer = false;
let screenTransceiver = null;
// Serializes signaling work (incoming frames and local offers) so that SDP operations never
// interleave.
let queue = Promise.resolve();

function enqueue(task) {
  queue = queue.then(task).catch((err) => fail('internal', err));
  return queue;
}

// ---------------------------------------------------------------------------------------------
// UI helpers

const $ = (id) => document.getElementById(id);

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

function record(dir, msg) {
  huizhen.events.push({ dir, type: msg.type, at: Date.now(), msg });
  if (huizhen.events.length > 5000) huizhen.events.splice(0, 1000);
}

function fail(code, err) {
  const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  huizhen.errors.push({ code, message });
  record('local', { type: 'local_error', code, message });
  setStatus(`Error (${code}): ${message}`, true);
  logLine(`error ${code}: ${message}`, true);
  console.error('huizhen', code, err);
}

function updateButtons() {
  const joined = huizhen.state === 'joined';
  const audio = huizhen.localStream?.getAudioTracks()[0];
  const video = huizhen.localStream?.getVideoTracks()[0];
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
  screen.textContent = huizhen.screenStream ? 'Stop sharing' : 'Share screen';
  screen.setAttribute('aria-pressed', String(!!huizhen.screenStream));
  $('btn-leave').disabled = !joined;
}

function tileFor(participantId) {
  let tile = document.querySelector(`section.tile[data-participant="${CSS.escape(participantId)}"]`);
  if (tile) return tile;
  tile = document.createElement('section');
  tile.className = 'tile remote';
  tile.dataset.participant = participantId;
  const media = document.createElement('div');
  media.className = 'tile-media';
  const name = document.createElement('div');
  name.className = 'tile-name';
  tile.append(media, name);
  $('tiles').append(tile);
  updateTileName(participantId);
  return tile;
}

function updateTileName(participantId) {
  const tile = document.querySelector(`section.tile[data-participant="${CSS.escape(participantId)}"]`);
  if (!tile) return;
  const p = huizhen.participants.get(participantId);
  tile.querySelector('.tile-name').textContent = p ? p.display_name || '(no name)' : participantId;
  tile.setAttribute('aria-label', tile.querySelector('.tile-name').textContent);
}

function removeTile(participantId) {
  document.querySelector(`section.tile[data-participant="${CSS.escape(participantId)}"]`)?.remove();
}

// ---------------------------------------------------------------------------------------------
// Signaling socket

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  record('out', msg);
  ws.send(JSON.stringify(msg));
  return true;
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  ws = new WebSocket(`${scheme}://${location.host}/ws`);
  huizhen.state = 'connecting';
  setStatus('Connecting…');
  ws.addEventListener('open', () => {
    send({ type: 'join', v: PROTOCOL_VERSION, room: ROOM, display_name: DISPLAY_NAME });
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
    enqueue(() => handleServerMessage(msg));
  });
  ws.addEventListener('close', (event) => {
    clearInterval(pingTimer);
    if (huizhen.state === 'left' || huizhen.state === 'closed') return;
    const wasFailed = huizhen.state === 'failed';
    huizhen.state = 'closed';
    record('local', { type: 'socket_closed', code: event.code, reason: event.reason });
    if (!wasFailed) {
      setStatus(`Disconnected from server (code ${event.code}${event.reason ? `: ${event.reason}` : ''})`, true);
    }
    logLine(`socket closed (${event.code})`, true);
    teardown();
  });
  ws.addEventListener('error', () => logLine('socket error', true));
}

async function handleServerMessage(msg) {
  if (huizhen.state === 'left' && msg.type !== 'bye') return; // late frames after our `leave`
  switch (msg.type) {
    case 'joined':
      return onJoined(msg);
    case 'participant_joined':
      huizhen.participants.set(msg.participant.id, msg.participant);
      tileFor(msg.participant.id);
      updateTileName(msg.participant.id);
      logLine(`${msg.participant.display_name} joined`);
      return;
    case 'participant_left':
      return onParticipantLeft(msg.participant_id);
    case 'offer':
      return onServerOffer(msg.sdp);
    case 'answer':
      return onServerAnswer(msg.sdp);
    case 'track_added':
      huizhen.remoteTracks.set(msg.track_id, {
        participant_id: msg.participant_id,
        kind: msg.kind,
        mid: msg.mid,
      });
      tileFor(msg.participant_id);
      renderRemoteTracks();
      return;
    case 'track_removed':
      return removeRemoteTrack(msg.track_id);
    case 'error':
      return onServerError(msg);
    case 'bye':
      if (huizhen.state === 'left') {
        // The expected reply to our `leave`.
        ws?.close(1000, 'leave');
        return;
      }
      huizhen.state = 'closed';
      setStatus(`Removed by server: ${msg.reason}`, true);
      logLine(`bye: ${msg.reason}`, true);
      teardown();
      return;
    case 'pong':
      return;
    default:
      logLine(`ignored unknown server message type ${JSON.stringify(msg.type)}`);
  }
}

function onServerError(msg) {
  huizhen.errors.push({ code: msg.code, message: msg.message });
  setStatus(`Server error (${msg.code}): ${msg.message}`, true);
  logLine(`server error ${msg.code}: ${msg.message}`, true);
  const pc = huizhen.pc;
  if (huizhen.state !== 'joined') {
    // The join itself was refused (room_full, unsupported_version, ...): nothing more to do.
    huizhen.state = 'failed';
    return;
  }
  if (msg.code === 'invalid_sdp' && pc && pc.signalingState === 'have-local-offer') {
    // Our offer was refused; roll back. Retrying is bounded so a persistently bad offer does
    // not loop.
    offerFailures += 1;
    clearTimeout(offerTimer);
    return pc
      .setLocalDescription({ type: 'rollback' })
      .then(() => reattachSenders(pc))
      .catch((err) => fail('rollback', err));
  }
}

// ---------------------------------------------------------------------------------------------
// Peer connection

function onJoined(msg) {
  huizhen.participantId = msg.participant_id;
  huizhen.state = 'joined';
  for (const p of msg.participants) {
    if (p.id === msg.participant_id) continue;
    huizhen.participants.set(p.id, p);
    tileFor(p.id);
  }
  $('local-name').textContent = DISPLAY_NAME;
  setStatus(`Joined room “${msg.room}” as ${DISPLAY_NAME}`);
  logLine(`joined ${msg.room} as ${msg.participant_id}`);
  createPeerConnection();
  updateButtons();
}

function createPeerConnection() {
  const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle' });
  huizhen.pc = pc;

  pc.addEventListener('negotiationneeded', () => enqueue(makeOffer));
  pc.addEventListener('icecandidate', ({ candidate }) => {
    if (candidate && !candidate.candidate) return; // per-generation end marker; null follows
    const msg = { type: 'candidate', candidate: candidate ? candidate.candidate : '' };
    if (candidate?.sdpMid != null) msg.sdp_mid = candidate.sdpMid;
    if (candidate?.sdpMLineIndex != null) msg.sdp_m_line_index = candidate.sdpMLineIndex;
    send(msg);
  });
  pc.addEventListener('track', () => renderRemoteTracks());
  pc.addEventListener('signalingstatechange', () => {
    if (pc.signalingState === 'stable') clearTimeout(offerTimer);
  });
  pc.addEventListener('connectionstatechange', () => {
    record('local', { type: 'connection_state', state: pc.connectionState });
    logLine(`media connection ${pc.connectionState}`, pc.connectionState === 'failed');
    if (pc.connectionState === 'failed') {
      setStatus('Media connection failed', true);
    } else if (pc.connectionState === 'connected' && !huizhen.errors.length) {
      setStatus(`In room “${ROOM}” as ${DISPLAY_NAME}`);
    }
  });

  const stream = huizhen.localStream;
  const tracks = stream ? stream.getTracks() : [];
  for (const track of tracks) {
    pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
  }
  if (tracks.length === 0) {
    // Nothing to send: a data channel still gives the first offer a transport to negotiate.
    pc.createDataChannel('huizhen');
  }
}

async function makeOffer() {
  const pc = huizhen.pc;
  if (!pc || pc.signalingState !== 'stable' || huizhen.state !== 'joined') return;
  if (offerFailures >= MAX_OFFER_FAILURES) {
    fail('invalid_sdp', 'the server refused our offer repeatedly; not offering again');
    return;
  }
  try {
    makingOffer = true;
    await pc.setLocalDescription();
    send({ type: 'offer', sdp: pc.localDescription.sdp });
  } finally {
    makingOffer = false;
  }
  clearTimeout(offerTimer);
  offerTimer = setTimeout(() => enqueue(offerTimedOut), OFFER_TIMEOUT_MS);
}

async function offerTimedOut() {
  const pc = huizhen.pc;
  if (!pc || pc.signalingState !== 'have-local-offer') return;
  logLine('offer unanswered; rolling back to offer again');
  record('local', { type: 'offer_timeout' });
  // Returning to stable with changes still unnegotiated fires negotiationneeded again.
  await pc.setLocalDescription({ type: 'rollback' });
  await reattachSenders(pc);
}

async function onServerOffer(sdp) {
  const pc = huizhen.pc;
  if (!pc) return;
  // Polite peer: never ignore the server's offer. A pending local offer is rolled back
  // implicitly by setRemoteDescription; negotiationneeded fires again once stable.
  const collision = makingOffer || pc.signalingState !== 'stable';
  if (collision) {
    record('local', { type: 'offer_collision', state: pc.signalingState });
    clearTimeout(offerTimer);
  }
  await pc.setRemoteDescription({ type: 'offer', sdp });
  await pc.setLocalDescription();
  send({ type: 'answer', sdp: pc.localDescription.sdp });
  if (collision) await reattachSenders(pc);
  renderRemoteTracks();
}

// Chromium (seen in 148) stops feeding the tracks of already negotiated senders to their
// encoders after a rollback, implicit or explicit: packetsSent stays at 0 although the
// transceivers remain sendonly. Re-attaching each track revives them; it needs no negotiation.
async function reattachSenders(pc) {
  for (const t of pc.getTransceivers()) {
    const track = t.sender.track;
    if (!track || t.stopped || track.readyState !== 'live') continue;
    try {
      await t.sender.replaceTrack(null);
      await t.sender.replaceTrack(track);
    } catch (err) {
      fail('internal', err);
    }
  }
  record('local', { type: 'senders_reattached' });
}

async function onServerAnswer(sdp) {
  const pc = huizhen.pc;
  if (!pc) return;
  if (pc.signalingState !== 'have-local-offer') {
    // Our offer was rolled back (collision or timeout); this answer is stale.
    record('local', { type: 'stale_answer', state: pc.signalingState });
    logLine(`ignored an answer in signaling state ${pc.signalingState}`);
    return;
  }
  clearTimeout(offerTimer);
  await pc.setRemoteDescription({ type: 'answer', sdp });
  offerFailures = 0;
  renderRemoteTracks();
}

// ---------------------------------------------------------------------------------------------
// Remote tracks: track_added says which transceiver mid carries which participant's track.

const mediaElements = new Map(); // track_id -> HTMLMediaElement

function renderRemoteTracks() {
  const pc = huizhen.pc;
  if (!pc) return;
  const byMid = new Map();
  for (const t of pc.getTransceivers()) {
    if (t.mid != null) byMid.set(t.mid, t);
  }
  for (const [trackId, info] of huizhen.remoteTracks) {
    const transceiver = byMid.get(info.mid);
    const existing = mediaElements.get(trackId);
    if (!transceiver || transceiver.receiver.track.kind !== info.kind) continue;
    const track = transceiver.receiver.track;
    if (existing && existing.srcObject?.getTracks()[0] === track) continue;
    existing?.remove();
    const el = document.createElement(info.kind === 'video' ? 'video' : 'audio');
    el.autoplay = true;
    el.dataset.trackId = trackId;
    el.dataset.mid = info.mid;
    if (info.kind === 'video') {
      el.playsInline = true;
      el.muted = true; // audio comes through its own element
    }
    el.srcObject = new MediaStream([track]);
    tileFor(info.participant_id).querySelector('.tile-media').append(el);
    mediaElements.set(trackId, el);
    el.play().catch(() => {
      // Autoplay with sound may need a user gesture; retry on the next click.
      document.addEventListener('click', () => el.play().catch(() => {}), { once: true });
    });
  }
}

function removeRemoteTrack(trackId) {
  huizhen.remoteTracks.delete(trackId);
  const el = mediaElements.get(trackId);
  if (el) {
    el.srcObject = null;
    el.remove();
    mediaElements.delete(trackId);
  }
}

function onParticipantLeft(participantId) {
  const p = huizhen.participants.get(participantId);
  logLine(`${p ? p.display_name : participantId} left`);
  for (const [trackId, info] of [...huizhen.remoteTracks]) {
    if (info.participant_id === participantId) removeRemoteTrack(trackId);
  }
  huizhen.participants.delete(participantId);
  removeTile(participantId);
}

// ---------------------------------------------------------------------------------------------
// Local media and controls

async function getLocalMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    logLine('media devices unavailable (page needs https or localhost)', true);
    return null;
  }
  const attempts = [{ audio: true, video: true }, { audio: true }, { video: true }];
  let lastError = null;
  for (const constraints of attempts) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch (err) {
      lastError = err;
    }
  }
  logLine(`no camera or microphone: ${lastError}`, true);
  return null;
}

function toggleMicrophone() {
  const track = huizhen.localStream?.getAudioTracks()[0];
  if (!track) return false;
  track.enabled = !track.enabled;
  updateButtons();
  return track.enabled;
}

function toggleCamera() {
  const track = huizhen.localStream?.getVideoTracks()[0];
  if (!track) return false;
  track.enabled = !track.enabled; // the sender keeps sending (black frames): no renegotiation
  updateButtons();
  return track.enabled;
}

async function startScreenShare() {
  const pc = huizhen.pc;
  if (!pc || huizhen.state !== 'joined') throw new Error('not in a room');
  if (huizhen.screenStream) return huizhen.screenStream.getVideoTracks()[0].id;
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  const track = stream.getVideoTracks()[0];
  huizhen.screenStream = stream;
  track.addEventListener('ended', () => stopScreenShare());
  if (screenTransceiver && !screenTransceiver.stopped && screenTransceiver.currentDirection !== 'stopped') {
    // Reuse the m-line of an earlier share; changing the direction renegotiates.
    await screenTransceiver.sender.replaceTrack(track);
    screenTransceiver.direction = 'sendonly';
  } else {
    screenTransceiver = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
  }
  const preview = $('local-screen');
  preview.srcObject = stream;
  preview.hidden = false;
  record('local', { type: 'screen_share_started', track_id: track.id });
  logLine('screen sharing started');
  updateButtons();
  return track.id;
}

async function stopScreenShare() {
  const stream = huizhen.screenStream;
  if (!stream) return;
  huizhen.screenStream = null;
  for (const t of stream.getTracks()) t.stop();
  const pc = huizhen.pc;
  if (pc && pc.signalingState !== 'closed' && screenTransceiver && !screenTransceiver.stopped) {
    // Inactive m-line: the server removes the track; the next share reuses the transceiver.
    screenTransceiver.direction = 'inactive';
    await screenTransceiver.sender.replaceTrack(null);
  }
  const preview = $('local-screen');
  preview.srcObject = null;
  preview.hidden = true;
  record('local', { type: 'screen_share_stopped' });
  logLine('screen sharing stopped');
  updateButtons();
}

function leave() {
  if (huizhen.state === 'left') return;
  const sent = send({ type: 'leave' });
  huizhen.state = 'left';
  setStatus('You left the room');
  logLine('left the room');
  teardown();
  // The server answers `leave` with `bye` and closes the socket; close it ourselves if that
  // does not happen soon.
  const socket = ws;
  setTimeout(() => socket?.close(1000, 'leave'), sent ? 2000 : 0);
}

function teardown() {
  clearInterval(pingTimer);
  clearTimeout(offerTimer);
  if (huizhen.pc && huizhen.pc.signalingState !== 'closed') huizhen.pc.close();
  for (const s of [huizhen.localStream, huizhen.screenStream]) {
    for (const t of s?.getTracks() ?? []) t.stop();
  }
  huizhen.screenStream = null;
  for (const el of mediaElements.values()) el.remove();
  mediaElements.clear();
  for (const id of huizhen.participants.keys()) removeTile(id);
  updateButtons();
}

function bindControls() {
  $('btn-mic').addEventListener('click', () => toggleMicrophone());
  $('btn-cam').addEventListener('click', () => toggleCamera());
  $('btn-screen').addEventListener('click', () => {
    const action = huizhen.screenStream ? stopScreenShare() : startScreenShare();
    action.catch((err) => fail('screen_share', err));
  });
  $('btn-leave').addEventListener('click', () => leave());
  window.addEventListener('pagehide', () => {
    if (huizhen.state === 'joined') send({ type: 'leave' });
  });
}

// ---------------------------------------------------------------------------------------------

async function main() {
  bindControls();
  updateButtons();
  if (!ROOM) {
    huizhen.state = 'failed';
    setStatus('No room in the address: open /room/<name>', true);
    return;
  }
  $('room-name').textContent = ROOM;
  document.title = `${ROOM} · huizhen`;
  $('local-name').textContent = DISPLAY_NAME;
  setStatus('Starting camera and microphone…');
  huizhen.localStream = await getLocalMedia();
  if (huizhen.localStream) {
    $('local-video').srcObject = huizhen.localStream;
    if (!huizhen.localStream.getVideoTracks().length) $('local-video').hidden = true;
  }
  connect();
}

main().catch((err) => fail('internal', err));
