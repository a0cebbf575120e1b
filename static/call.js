// huizhen call module: one media session in an SFU room over one RTCPeerConnection.
//
// Used by the room page (static/room.js) and the clinic pages (patient, doctor, expert,
// companion). The page owns the signaling WebSocket: it hands the media messages of protocol v1
// (joined, participant_joined, participant_left, offer, answer, track_added, track_removed, bye)
// to `Call.handle(msg)` and sends what the call asks for through the `send` callback. See
// signaling/PROTOCOL.md.
//
// Negotiation follows "perfect negotiation" with the browser as the POLITE peer: the client
// sends the first offer; afterwards the server offers whenever tracks of other participants
// come or go, and the client offers when it adds or removes its own tracks (screen share).
// If a server offer collides with a pending local offer, the local offer is rolled back
// (implicitly, by setRemoteDescription) and re-sent once the connection is stable again.
//
// Plain ES module, no build step, no external URLs.

// A local offer the server neither answered nor superseded with its own offer within this time
// is rolled back, so that negotiationneeded fires and the offer is sent again.
const OFFER_TIMEOUT_MS = 10000;
const MAX_OFFER_FAILURES = 3;

/** Message types a `Call` consumes. */
export const MEDIA_MESSAGE_TYPES = new Set([
  'joined',
  'participant_joined',
  'participant_left',
  'offer',
  'answer',
  'track_added',
  'track_removed',
  'bye',
]);

/** Ask for a camera and microphone, falling back to either; null when neither is available. */
export async function getLocalMedia(log = () => {}) {
  if (!navigator.mediaDevices?.getUserMedia) {
    log('media devices unavailable (page needs https or localhost)', true);
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
  log(`no camera or microphone: ${lastError}`, true);
  return null;
}

/** Whether every track of `stream` is still live (a stopped stream must be acquired again). */
export function isLive(stream) {
  return !!stream && stream.getTracks().length > 0 && stream.getTracks().every((t) => t.readyState === 'live');
}

export class Call {
  /**
   * @param {object} opts
   * @param {(msg: object) => boolean} opts.send  send a frame on the page's socket
   * @param {(dir: string, msg: object) => void} [opts.record]  event log (dir 'local')
   * @param {(code: string, err: unknown) => void} [opts.onError]  local failures
   * @param {() => void} [opts.onChange]  state, tracks or local media changed
   * @param {(reason: string, expected: boolean) => void} [opts.onBye]  the server ended the session
   * @param {(text: string, isError?: boolean) => void} [opts.log]
   * @param {HTMLElement} opts.tiles  container for participant tiles
   * @param {HTMLVideoElement} [opts.localVideo]
   * @param {HTMLVideoElement} [opts.localScreen]
   * @param {MediaStream|null} [opts.localStream]
   * @param {boolean} [opts.stopLocalMedia]  stop the local tracks on teardown (default true)
   * @param {(p: {id: string, display_name: string}|undefined, id: string) => string} [opts.tileName]
   */
  constructor(opts) {
    this.opts = opts;
    /** The RTCPeerConnection (null until joined). */
    this.pc = null;
    /** Our participant id, from `joined`. */
    this.participantId = null;
    /** The SFU room, from `joined`. */
    this.room = null;
    /** 'idle' | 'joining' | 'joined' | 'left' | 'closed' | 'failed' (pages may set other pre-join states). */
    this.state = 'idle';
    /** participant id -> {id, display_name} of the others in the room. */
    this.participants = new Map();
    /** track_id -> {participant_id, kind, mid} of the tracks we receive. */
    this.remoteTracks = new Map();
    this.localStream = opts.localStream || null;
    this.screenStream = null;
    this.offerTimer = null;
    this.offerFailures = 0;
    this.makingOffer = false;
    this.screenTransceiver = null;
    this.mediaElements = new Map(); // track_id -> HTMLMediaElement
    // Serializes signaling work (incoming frames and local offers) so that SDP operations
    // never interleave.
    this.queue = Promise.resolve();
    if (opts.localVideo && this.localStream) this.showLocalStream();
  }

  // -------------------------------------------------------------------------------------------
  // Plumbing

  record(dir, msg) {
    this.opts.record?.(dir, msg);
  }

  log(text, isError = false) {
    this.opts.log?.(text, isError);
  }

  fail(code, err) {
    if (this.opts.onError) this.opts.onError(code, err);
    else console.error('huizhen call', code, err);
  }

  changed() {
    this.opts.onChange?.();
  }

  send(msg) {
    return this.opts.send(msg);
  }

  enqueue(task) {
    this.queue = this.queue.then(task).catch((err) => this.fail('internal', err));
    return this.queue;
  }

  /** Take a media message; false if it is not one. Processing is serialized. */
  handle(msg) {
    if (!MEDIA_MESSAGE_TYPES.has(msg.type)) return false;
    this.enqueue(() => this.process(msg));
    return true;
  }

  /** Process a media message now (call from inside `enqueue`). */
  async process(msg) {
    if (this.state === 'left' && msg.type !== 'bye') return; // late frames after our `leave`
    if (this.state === 'closed' && msg.type !== 'bye') return;
    switch (msg.type) {
      case 'joined':
        return this.onJoined(msg);
      case 'participant_joined':
        this.participants.set(msg.participant.id, msg.participant);
        this.tileFor(msg.participant.id);
        this.updateTileName(msg.participant.id);
        this.log(`${msg.participant.display_name} joined`);
        this.changed();
        return;
      case 'participant_left':
        return this.onParticipantLeft(msg.participant_id);
      case 'offer':
        return this.onServerOffer(msg.sdp);
      case 'answer':
        return this.onServerAnswer(msg.sdp);
      case 'track_added':
        this.remoteTracks.set(msg.track_id, {
          participant_id: msg.participant_id,
          kind: msg.kind,
          mid: msg.mid,
        });
        this.tileFor(msg.participant_id);
        this.renderRemoteTracks();
        this.changed();
        return;
      case 'track_removed':
        this.removeRemoteTrack(msg.track_id);
        this.changed();
        return;
      case 'bye':
        return this.onBye(msg.reason);
      default:
    }
  }

  /**
   * An `error` frame that may concern this call's negotiation. Returns true when handled (an
   * offer refused with invalid_sdp is rolled back and retried a bounded number of times).
   */
  onServerError(msg) {
    const pc = this.pc;
    if (this.state !== 'joined') return false;
    if (msg.code === 'invalid_sdp' && pc && pc.signalingState === 'have-local-offer') {
      this.offerFailures += 1;
      clearTimeout(this.offerTimer);
      this.enqueue(() =>
        pc
          .setLocalDescription({ type: 'rollback' })
          .then(() => this.reattachSenders(pc))
          .catch((err) => this.fail('rollback', err)),
      );
      return true;
    }
    return false;
  }

  onBye(reason) {
    if (this.state === 'left') {
      // The expected reply to our `leave`.
      this.opts.onBye?.(reason, true);
      return;
    }
    if (this.state === 'closed') {
      this.opts.onBye?.(reason, true);
      return;
    }
    this.state = 'closed';
    this.log(`bye: ${reason}`, true);
    this.teardown();
    this.opts.onBye?.(reason, false);
  }

  // -------------------------------------------------------------------------------------------
  // Tiles

  tileFor(participantId) {
    const tiles = this.opts.tiles;
    let tile = tiles.querySelector(`section.tile[data-participant="${CSS.escape(participantId)}"]`);
    if (tile) return tile;
    tile = document.createElement('section');
    tile.className = 'tile remote';
    tile.dataset.participant = participantId;
    const media = document.createElement('div');
    media.className = 'tile-media';
    const name = document.createElement('div');
    name.className = 'tile-name';
    tile.append(media, name);
    tiles.append(tile);
    this.updateTileName(participantId);
    return tile;
  }

  updateTileName(participantId) {
    const tile = this.opts.tiles.querySelector(`section.tile[data-participant="${CSS.escape(participantId)}"]`);
    if (!tile) return;
    const p = this.participants.get(participantId);
    const text = this.opts.tileName
      ? this.opts.tileName(p, participantId)
      : p
        ? p.display_name || '(no name)'
        : participantId;
    tile.querySelector('.tile-name').textContent = text;
    tile.setAttribute('aria-label', text);
  }

  /** Refresh every tile's name (e.g. after a language change). */
  updateTileNames() {
    for (const id of this.participants.keys()) this.updateTileName(id);
  }

  removeTile(participantId) {
    this.opts.tiles.querySelector(`section.tile[data-participant="${CSS.escape(participantId)}"]`)?.remove();
  }

  showLocalStream() {
    const video = this.opts.localVideo;
    if (!video) return;
    video.srcObject = this.localStream;
    video.hidden = !this.localStream || !this.localStream.getVideoTracks().length;
  }

  // -------------------------------------------------------------------------------------------
  // Peer connection

  onJoined(msg) {
    this.participantId = msg.participant_id;
    this.room = msg.room;
    this.state = 'joined';
    for (const p of msg.participants) {
      if (p.id === msg.participant_id) continue;
      this.participants.set(p.id, p);
      this.tileFor(p.id);
    }
    this.log(`joined ${msg.room} as ${msg.participant_id}`);
    this.createPeerConnection();
    this.changed();
  }

  createPeerConnection() {
    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle' });
    this.pc = pc;

    pc.addEventListener('negotiationneeded', () => this.enqueue(() => this.makeOffer()));
    pc.addEventListener('icecandidate', ({ candidate }) => {
      if (candidate && !candidate.candidate) return; // per-generation end marker; null follows
      const msg = { type: 'candidate', candidate: candidate ? candidate.candidate : '' };
      if (candidate?.sdpMid != null) msg.sdp_mid = candidate.sdpMid;
      if (candidate?.sdpMLineIndex != null) msg.sdp_m_line_index = candidate.sdpMLineIndex;
      this.send(msg);
    });
    pc.addEventListener('track', () => this.renderRemoteTracks());
    pc.addEventListener('signalingstatechange', () => {
      if (pc.signalingState === 'stable') clearTimeout(this.offerTimer);
    });
    pc.addEventListener('connectionstatechange', () => {
      this.record('local', { type: 'connection_state', state: pc.connectionState });
      this.log(`media connection ${pc.connectionState}`, pc.connectionState === 'failed');
      this.changed();
    });

    const stream = this.localStream;
    const tracks = stream ? stream.getTracks() : [];
    for (const track of tracks) {
      pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    }
    if (tracks.length === 0) {
      // Nothing to send: a data channel still gives the first offer a transport to negotiate.
      pc.createDataChannel('huizhen');
    }
  }

  async makeOffer() {
    const pc = this.pc;
    if (!pc || pc.signalingState !== 'stable' || this.state !== 'joined') return;
    if (this.offerFailures >= MAX_OFFER_FAILURES) {
      this.fail('invalid_sdp', 'the server refused our offer repeatedly; not offering again');
      return;
    }
    try {
      this.makingOffer = true;
      await pc.setLocalDescription();
      this.send({ type: 'offer', sdp: pc.localDescription.sdp });
    } finally {
      this.makingOffer = false;
    }
    clearTimeout(this.offerTimer);
    this.offerTimer = setTimeout(() => this.enqueue(() => this.offerTimedOut()), OFFER_TIMEOUT_MS);
  }

  async offerTimedOut() {
    const pc = this.pc;
    if (!pc || pc.signalingState !== 'have-local-offer') return;
    this.log('offer unanswered; rolling back to offer again');
    this.record('local', { type: 'offer_timeout' });
    // Returning to stable with changes still unnegotiated fires negotiationneeded again.
    await pc.setLocalDescription({ type: 'rollback' });
    await this.reattachSenders(pc);
  }

  async onServerOffer(sdp) {
    const pc = this.pc;
    if (!pc || pc.signalingState === 'closed') return;
    // Polite peer: never ignore the server's offer. A pending local offer is rolled back
    // implicitly by setRemoteDescription; negotiationneeded fires again once stable.
    const collision = this.makingOffer || pc.signalingState !== 'stable';
    if (collision) {
      this.record('local', { type: 'offer_collision', state: pc.signalingState });
      clearTimeout(this.offerTimer);
    }
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await pc.setLocalDescription();
    this.send({ type: 'answer', sdp: pc.localDescription.sdp });
    if (collision) await this.reattachSenders(pc);
    this.renderRemoteTracks();
  }

  // Chromium (seen in 148) stops feeding the tracks of already negotiated senders to their
  // encoders after a rollback, implicit or explicit: packetsSent stays at 0 although the
  // transceivers remain sendonly. Re-attaching each track revives them; it needs no negotiation.
  async reattachSenders(pc) {
    for (const t of pc.getTransceivers()) {
      const track = t.sender.track;
      if (!track || t.stopped || track.readyState !== 'live') continue;
      try {
        await t.sender.replaceTrack(null);
        await t.sender.replaceTrack(track);
      } catch (err) {
        this.fail('internal', err);
      }
    }
    this.record('local', { type: 'senders_reattached' });
  }

  async onServerAnswer(sdp) {
    const pc = this.pc;
    if (!pc) return;
    if (pc.signalingState !== 'have-local-offer') {
      // Our offer was rolled back (collision or timeout); this answer is stale.
      this.record('local', { type: 'stale_answer', state: pc.signalingState });
      this.log(`ignored an answer in signaling state ${pc.signalingState}`);
      return;
    }
    clearTimeout(this.offerTimer);
    await pc.setRemoteDescription({ type: 'answer', sdp });
    this.offerFailures = 0;
    this.renderRemoteTracks();
  }

  // -------------------------------------------------------------------------------------------
  // Remote tracks: track_added says which transceiver mid carries which participant's track.

  renderRemoteTracks() {
    const pc = this.pc;
    if (!pc || pc.signalingState === 'closed') return;
    const byMid = new Map();
    for (const t of pc.getTransceivers()) {
      if (t.mid != null) byMid.set(t.mid, t);
    }
    for (const [trackId, info] of this.remoteTracks) {
      const transceiver = byMid.get(info.mid);
      const existing = this.mediaElements.get(trackId);
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
      this.tileFor(info.participant_id).querySelector('.tile-media').append(el);
      this.mediaElements.set(trackId, el);
      el.play().catch(() => {
        // Autoplay with sound may need a user gesture; retry on the next click.
        document.addEventListener('click', () => el.play().catch(() => {}), { once: true });
      });
    }
  }

  removeRemoteTrack(trackId) {
    this.remoteTracks.delete(trackId);
    const el = this.mediaElements.get(trackId);
    if (el) {
      el.srcObject = null;
      el.remove();
      this.mediaElements.delete(trackId);
    }
  }

  onParticipantLeft(participantId) {
    const p = this.participants.get(participantId);
    this.log(`${p ? p.display_name : participantId} left`);
    for (const [trackId, info] of [...this.remoteTracks]) {
      if (info.participant_id === participantId) this.removeRemoteTrack(trackId);
    }
    this.participants.delete(participantId);
    this.removeTile(participantId);
    this.changed();
  }

  // -------------------------------------------------------------------------------------------
  // Local media and controls

  get microphoneMuted() {
    const track = this.localStream?.getAudioTracks()[0];
    return !!track && !track.enabled;
  }

  get cameraOff() {
    const track = this.localStream?.getVideoTracks()[0];
    return !!track && !track.enabled;
  }

  toggleMicrophone() {
    const track = this.localStream?.getAudioTracks()[0];
    if (!track) return false;
    track.enabled = !track.enabled;
    this.changed();
    return track.enabled;
  }

  toggleCamera() {
    const track = this.localStream?.getVideoTracks()[0];
    if (!track) return false;
    track.enabled = !track.enabled; // the sender keeps sending (black frames): no renegotiation
    this.changed();
    return track.enabled;
  }

  async startScreenShare() {
    const pc = this.pc;
    if (!pc || this.state !== 'joined') throw new Error('not in a room');
    if (this.screenStream) return this.screenStream.getVideoTracks()[0].id;
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const track = stream.getVideoTracks()[0];
    this.screenStream = stream;
    track.addEventListener('ended', () => this.stopScreenShare());
    const t = this.screenTransceiver;
    if (t && !t.stopped && t.currentDirection !== 'stopped') {
      // Reuse the m-line of an earlier share; changing the direction renegotiates.
      await t.sender.replaceTrack(track);
      t.direction = 'sendonly';
    } else {
      this.screenTransceiver = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    }
    const preview = this.opts.localScreen;
    if (preview) {
      preview.srcObject = stream;
      preview.hidden = false;
    }
    this.record('local', { type: 'screen_share_started', track_id: track.id });
    this.log('screen sharing started');
    this.changed();
    return track.id;
  }

  async stopScreenShare() {
    const stream = this.screenStream;
    if (!stream) return;
    this.screenStream = null;
    for (const t of stream.getTracks()) t.stop();
    const pc = this.pc;
    const t = this.screenTransceiver;
    if (pc && pc.signalingState !== 'closed' && t && !t.stopped) {
      // Inactive m-line: the server removes the track; the next share reuses the transceiver.
      t.direction = 'inactive';
      await t.sender.replaceTrack(null);
    }
    const preview = this.opts.localScreen;
    if (preview) {
      preview.srcObject = null;
      preview.hidden = true;
    }
    this.record('local', { type: 'screen_share_stopped' });
    this.log('screen sharing stopped');
    this.changed();
  }

  /** Leave the room: tell the server (it answers `bye`) and tear the session down. */
  leave() {
    if (this.state === 'left' || this.state === 'closed') return false;
    const sent = this.send({ type: 'leave' });
    this.state = 'left';
    this.log('left the room');
    this.teardown();
    return sent;
  }

  /** End the session locally without telling the server (it already knows, or is gone). */
  close(state = 'closed') {
    if (this.state === 'left' || this.state === 'closed') return;
    this.state = state;
    this.teardown();
  }

  teardown() {
    clearTimeout(this.offerTimer);
    if (this.pc && this.pc.signalingState !== 'closed') this.pc.close();
    const streams = [this.screenStream];
    if (this.opts.stopLocalMedia !== false) streams.push(this.localStream);
    for (const s of streams) {
      for (const t of s?.getTracks() ?? []) t.stop();
    }
    this.screenStream = null;
    for (const el of this.mediaElements.values()) {
      el.srcObject = null;
      el.remove();
    }
    this.mediaElements.clear();
    this.remoteTracks.clear();
    for (const id of this.participants.keys()) this.removeTile(id);
    if (this.opts.localVideo && this.opts.stopLocalMedia !== false) this.opts.localVideo.srcObject = null;
    if (this.opts.localScreen) {
      this.opts.localScreen.srcObject = null;
      this.opts.localScreen.hidden = true;
    }
    this.changed();
  }
}
