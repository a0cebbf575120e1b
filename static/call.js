// huizhen call module: one media session in an SFU room over one RTCPeerConnection.
//
// Used by the room page (static/room.js) and the clinic pages (patient, doctor, expert,
// companion). The page owns the signaling WebSocket: it hands the media messages of protocol v1
// (joined, participant_joined, participant_left, offer, answer, track_added, track_removed,
// track_paused, track_resumed, active_speaker, publish_layers, publish_audio, bye) to
// `Call.handle(msg)` and
// sends what the call asks for through the `send` callback. See signaling/PROTOCOL.md.
//
// Negotiation follows "perfect negotiation" with the browser as the POLITE peer: the client
// sends the first offer; afterwards the server offers whenever tracks of other participants
// come or go, and the client offers when it adds or removes its own tracks (screen share).
// If a server offer collides with a pending local offer, the local offer is rolled back
// (implicitly, by setRemoteDescription) and re-sent once the connection is stable again.
//
// Adaptive media (issue 9): the camera is published in three simulcast layers when the server
// says it receives them (`joined.simulcast`), a screen share as one sharp layer, a clinical
// instrument (stethoscope) as a second, unprocessed, high-bitrate audio track; the client tells
// the server how it shows each received video (`track_preferences`, from the tile layout), keeps
// only the camera layers somebody receives (`publish_layers`), caps its microphone's bitrate
// while a subscriber's link barely carries the voices (`publish_audio`), shows "audio only: weak
// connection" on a video the server paused (`track_paused` / `track_resumed`) and enlarges the
// active speaker (`active_speaker`).
//
// Plain ES module, no build step, no external URLs.

import { t } from './i18n.js';

// A local offer the server neither answered nor superseded with its own offer within this time
// is rolled back, so that negotiationneeded fires and the offer is sent again.
const OFFER_TIMEOUT_MS = 10000;
const MAX_OFFER_FAILURES = 3;

/**
 * The camera's simulcast layers, lowest first (rids as in signaling/PROTOCOL.md). For the
 * 640x480 camera of a typical call: 160x120, 320x240, 640x480. Why these bitrates:
 * - `q` (100 kbit/s, plenty for 160x120) must fit beside two Opus streams on a 300 kbit/s
 *   downlink, the weak 4G link of an elderly patient at home: each Opus stream costs ~55
 *   kbit/s on the wire with its packet headers, which leaves ~150 kbit/s for video;
 * - `h` (500 kbit/s) is a thumbnail's layer and what an ~800 kbit/s link carries for one
 *   person next to the audio;
 * - `f` (1.7 Mbit/s) is what the single-layer camera sent before simulcast, so an unimpaired
 *   call looks as it did.
 * The sum (~2.35 Mbit/s) is the publisher's uplink when all three are wanted; `publish_layers`
 * switches off the ones nobody receives.
 */
export const CAMERA_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 100_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_700_000 },
];

/**
 * The layers to ask for, given the camera's capture size. Chromium sends at most as many
 * simulcast layers as its table allows for the size (libwebrtc's kSimulcastFormats: three from
 * 960x540, two from 480x270, one below) and, asked for more, drops the *top* one: a 640x480
 * camera asked for q, h, f sends only 160x120 and 320x240. So below 960x540 the client asks for
 * q and f only (the full size stays available to good links, the quarter to weak ones), and
 * below 480x270 for one layer.
 */
export function cameraLayers(settings) {
  const pixels = (settings?.width || 640) * (settings?.height || 480);
  if (pixels >= 960 * 540) return CAMERA_LAYERS.map((layer) => ({ ...layer }));
  if (pixels >= 480 * 270) return CAMERA_LAYERS.filter((l) => l.rid !== 'h').map((layer) => ({ ...layer }));
  return [{ ...CAMERA_LAYERS[CAMERA_LAYERS.length - 1], rid: undefined }].map(({ rid, ...rest }) => rest);
}

/**
 * Opus bitrate of a clinical instrument (stethoscope): heart and lung sounds are low and quiet,
 * and lung sounds tolerate little coding loss; 128 kbit/s stereo is Opus's transparent range.
 */
export const INSTRUMENT_BITRATE = 128_000;

/**
 * Opus format parameters each sending source asks for, set on its m-section of every SDP we
 * send and added (where missing) to the server's SDP for it, which is what configures the
 * browser's own encoder. Speech: in-band FEC (used when receivers report loss) and DTX. The
 * instrument: stereo at the high bitrate, FEC, and no DTX (DTX takes quiet heart sounds for
 * silence).
 */
const OPUS_PARAMS = {
  microphone: { useinbandfec: '1', usedtx: '1' },
  instrument: { stereo: '1', 'sprop-stereo': '1', maxaveragebitrate: String(INSTRUMENT_BITRATE), useinbandfec: '1', usedtx: '0' },
};

/** Layout changes are coalesced into one `track_preferences` at most this often. */
const PREFERENCES_DELAY_MS = 300;

/**
 * `max_height` is rounded up to one of these (device pixels), so that resizing a window does
 * not send a message per pixel and a layer is never refused for a few pixels.
 */
const HEIGHT_STEPS = [90, 120, 180, 240, 360, 480, 540, 720, 1080, 1440, 2160];

/**
 * A thumbnail (a tile at most THUMBNAIL_HEIGHT device pixels high, not shown large) asks for
 * at most THUMBNAIL_FPS frames per second (`max_fps`): the server then drops the camera's
 * upper temporal layers for it (Chrome's 20 fps camera: 10 fps), which saves a weak link a
 * third of the video's bytes where nobody looks closely.
 */
const THUMBNAIL_HEIGHT = 120;
const THUMBNAIL_FPS = 15;
/** A connection `disconnected` this long gets new ICE credentials (an ICE restart). */
const ICE_RESTART_AFTER_MS = 2000;
/** Most ICE restarts per minute (a path that keeps failing is not hammered). */
const MAX_ICE_RESTARTS_PER_MINUTE = 3;
/**
 * The path watchdog: how often the selected candidate pair's received bytes are looked at, and
 * how long they may stand still, after flowing, before the path is recovered (a new peer
 * connection or an ICE restart). A change of network (Wi-Fi to 4G) or a path that went dark
 * shows here long before ICE calls the connection `disconnected` (several seconds): whoever
 * sends or receives media gets RTP, RTCP or feedback from the server many times a second (a
 * publisher at least 4 transport-wide feedback packets a second; a silent microphone with DTX
 * still 2-3 packets), and the watch only arms after bytes came at every check for a second.
 * A path that carries none of it for 750 ms is dead; every 250 ms less here is as much less of
 * the gap the others see after a change of network (it was 1 s: 1.9-2.0 s gaps with a renewal).
 */
const PATH_CHECK_MS = 250;
const PATH_STALL_MS = 750;
/** A restart for a stalled path that brought no bytes back within this is tried again. */
const PATH_RETRY_MS = 4000;
/** Most peer connections replaced per minute (see `renewPeerConnection`); then ICE restarts. */
const MAX_RENEWALS_PER_MINUTE = 3;

/** Message types a `Call` consumes. */
export const MEDIA_MESSAGE_TYPES = new Set([
  'restart_ice',
  'joined',
  'resumed',
  'participant_joined',
  'participant_left',
  'offer',
  'answer',
  'track_added',
  'track_removed',
  'track_paused',
  'track_resumed',
  'active_speaker',
  'publish_layers',
  'publish_audio',
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

/** The audio inputs (for the instrument's device selector); labels need a granted microphone. */
export async function audioInputs() {
  if (!navigator.mediaDevices?.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((d) => d.kind === 'audioinput');
}

// ---------------------------------------------------------------------------------------------
// SDP: the few edits the browser API cannot express (Opus format parameters per m-section).

/** Split an SDP into its session part and its m-sections (each a list of lines). */
function sdpSections(sdp) {
  const lines = sdp.split('\r\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const sections = [[]];
  for (const line of lines) {
    if (line.startsWith('m=')) sections.push([]);
    sections[sections.length - 1].push(line);
  }
  return sections;
}

function joinSdp(sections) {
  return `${sections.flat().join('\r\n')}\r\n`;
}

/** The mid of the m-section that sends `trackId` (its `a=msid` line), or null. */
export function midOfTrack(sdp, trackId) {
  for (const section of sdpSections(sdp).slice(1)) {
    if (!section.some((l) => l.startsWith('a=msid:') && l.split(' ')[1] === trackId)) continue;
    const mid = section.find((l) => l.startsWith('a=mid:'));
    return mid ? mid.slice(6) : null;
  }
  return null;
}

/**
 * Set Opus format parameters in the m-section `mid`: `params` {name: value}; with `override`
 * false only the missing ones are added. Other m-sections and codecs are left alone.
 */
export function setOpusParams(sdp, mid, params, { override = true } = {}) {
  const sections = sdpSections(sdp);
  for (const section of sections.slice(1)) {
    if (!section.includes(`a=mid:${mid}`)) continue;
    const rtpmap = section.findIndex((l) => /^a=rtpmap:\d+ opus\/48000/i.test(l));
    if (rtpmap < 0) return sdp;
    const pt = /^a=rtpmap:(\d+)/.exec(section[rtpmap])[1];
    const prefix = `a=fmtp:${pt} `;
    let at = section.findIndex((l) => l.startsWith(prefix));
    if (at < 0) {
      section.splice(rtpmap + 1, 0, prefix.trimEnd());
      at = rtpmap + 1;
    }
    const pairs = section[at]
      .slice(prefix.length)
      .split(';')
      .map((kv) => kv.trim())
      .filter(Boolean)
      .map((kv) => {
        const eq = kv.indexOf('=');
        return eq < 0 ? [kv, ''] : [kv.slice(0, eq), kv.slice(eq + 1)];
      });
    for (const [name, value] of Object.entries(params)) {
      const existing = pairs.find(([n]) => n.toLowerCase() === name);
      if (!existing) pairs.push([name, value]);
      else if (override) existing[1] = value;
    }
    section[at] = prefix + pairs.map(([n, v]) => (v === '' ? n : `${n}=${v}`)).join(';');
    return joinSdp(sections);
  }
  return sdp;
}

/**
 * Put VP8 first on a simulcast camera's transceiver: Chromium simulcasts VP8 (and H.264)
 * reliably. Chromium lists VP8 first already; this keeps it so if that changes.
 */
function preferVp8(transceiver) {
  if (typeof transceiver.setCodecPreferences !== 'function' || !window.RTCRtpReceiver?.getCapabilities) return;
  try {
    const codecs = RTCRtpReceiver.getCapabilities('video').codecs;
    const vp8 = codecs.filter((c) => c.mimeType.toLowerCase() === 'video/vp8');
    if (!vp8.length || codecs[0].mimeType.toLowerCase() === 'video/vp8') return;
    transceiver.setCodecPreferences([...vp8, ...codecs.filter((c) => !vp8.includes(c))]);
  } catch {
    // keep the browser's order
  }
}

/** Round a tile height (device pixels) up to the next of HEIGHT_STEPS. */
function heightStep(px) {
  return HEIGHT_STEPS.find((h) => h >= px) ?? HEIGHT_STEPS[HEIGHT_STEPS.length - 1];
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
   * @param {boolean} [opts.pinControls]  a "show large" button on remote tiles (default true)
   * @param {() => void} [opts.onPathStalled]  media stopped arriving on the selected path (a
   *   change of network): the page should move signaling to a new socket (resume)
   * @param {'all'|'relay'} [opts.iceTransportPolicy]  'relay': media only through the server's
   *   TURN (for networks where direct paths are blocked or must not be tried; default 'all')
   * @param {'renew'|'restart'} [opts.pathRecovery]  what a stalled path (or the server's
   *   `restart_ice`) gets: a fresh peer connection behind the same participant ('renew',
   *   default: media back within about a second of noticing) or an ICE restart ('restart':
   *   Chromium keeps its old pair until it has received nothing for 2.5 s)
   */
  constructor(opts) {
    this.opts = opts;
    /** The RTCPeerConnection (null until joined). */
    this.pc = null;
    /** How many peer connections this call has had (a renewal makes a new one). */
    this.generation = 0;
    /** A renewal's offer is under way: its answer carries `renewed`, older ones are stale. */
    this.renewing = false;
    /** Our participant id, from `joined`. */
    this.participantId = null;
    /** The SFU room, from `joined`. */
    this.room = null;
    /** 'idle' | 'joining' | 'joined' | 'left' | 'closed' | 'failed' (pages may set other pre-join states). */
    this.state = 'idle';
    /** participant id -> {id, display_name} of the others in the room. */
    this.participants = new Map();
    /** track_id -> {participant_id, kind, mid, source} of the tracks we receive. */
    this.remoteTracks = new Map();
    this.localStream = opts.localStream || null;
    this.screenStream = null;
    /** The clinical instrument's capture (a second audio input), while it is published. */
    this.instrumentStream = null;
    this.instrumentTransceiver = null;
    /** The server receives simulcast (`joined.simulcast`): the camera goes in three layers. */
    this.simulcast = false;
    /**
     * The server understands the adaptive-media messages (`track_preferences`): it says so by
     * sending the `simulcast` field in `joined` at all, true or false. Older servers answer an
     * unknown message type with an error, so nothing is sent to them.
     */
    this.adaptive = false;
    /** track_id -> participant_id of received videos the server paused (`track_paused`). */
    this.pausedTracks = new Map();
    /** The participant the server says speaks now (`active_speaker`), or null. */
    this.activeSpeaker = null;
    /** The participant whose tile the user chose to show large, or null. */
    this.pinnedParticipant = null;
    /** mid -> the microphone's bitrate cap the server asked for (`publish_audio`; null: none). */
    this.audioCaps = new Map();
    /** mid -> rids the server wants sent (`publish_layers`), applied to that sender. */
    this.wantedLayers = new Map();
    /** track_id -> the preference last sent (JSON), so that only changes are sent. */
    this.preferencesSent = new Map();
    this.preferencesTimer = null;
    this.resizeObserver = typeof ResizeObserver === 'function' ? new ResizeObserver(() => this.schedulePreferences()) : null;
    this.onVisibilityChange = () => this.schedulePreferences(0);
    document.addEventListener('visibilitychange', this.onVisibilityChange);
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
      case 'resumed':
        return this.onResumed(msg);
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
        return this.onServerAnswer(msg.sdp, msg.renewed === true);
      case 'track_added':
        this.rememberTrack(msg);
        this.renderRemoteTracks();
        this.updateLayout();
        this.changed();
        return;
      case 'track_removed':
        this.removeRemoteTrack(msg.track_id);
        this.updateLayout();
        this.changed();
        return;
      case 'track_paused':
        this.pausedTracks.set(msg.track_id, msg.participant_id);
        this.record('local', { type: 'video_paused_shown', track_id: msg.track_id });
        this.renderPaused(msg.track_id);
        this.changed();
        return;
      case 'track_resumed':
        this.pausedTracks.delete(msg.track_id);
        this.renderPaused(msg.track_id);
        this.changed();
        return;
      case 'active_speaker':
        this.activeSpeaker = msg.participant_id ?? null;
        this.updateLayout();
        return;
      case 'publish_layers':
        this.wantedLayers.set(msg.mid, Array.isArray(msg.rids) ? msg.rids : []);
        return this.applyLayers(msg.mid);
      case 'publish_audio':
        this.audioCaps.set(msg.mid, Number.isInteger(msg.max_bitrate) && msg.max_bitrate > 0 ? msg.max_bitrate : null);
        return this.applyAudioCap(msg.mid);
      case 'bye':
        return this.onBye(msg.reason);
      case 'restart_ice':
        // The server hears nothing from us any more (our uplink path broke) although we still
        // receive: the path watchdog, which watches what we receive, cannot see it. What we
        // send on this network is lost, the signaling socket's frames included: the call
        // moves to a new socket first (as for a stall), so that the restart's offer arrives.
        if (this.state !== 'joined') return;
        // A restart of our own under way (the watchdog saw the same break): another would
        // only start it over.
        if ((this.iceRestarts || []).some((t) => Date.now() - t < PATH_RETRY_MS)) return;
        if ((this.renewals || []).some((t) => Date.now() - t < PATH_RETRY_MS)) return;
        this.opts.onPathStalled?.();
        this.recoverPath('asked by the server');
        return;
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
    const bar = document.createElement('div');
    bar.className = 'tile-bar';
    const name = document.createElement('div');
    name.className = 'tile-name';
    bar.append(name);
    if (this.opts.pinControls !== false) {
      const pin = document.createElement('button');
      pin.type = 'button';
      pin.className = 'tile-pin';
      pin.hidden = true;
      pin.addEventListener('click', () => this.togglePin(participantId));
      bar.append(pin);
    }
    tile.append(media, bar);
    tiles.append(tile);
    this.updateTileName(participantId);
    this.updateLayout();
    return tile;
  }

  /** The name shown for a participant (the page may translate "no name"). */
  displayName(participantId) {
    const p = this.participants.get(participantId);
    if (this.opts.tileName) return this.opts.tileName(p, participantId);
    return p ? p.display_name || '(no name)' : participantId;
  }

  updateTileName(participantId) {
    const tile = this.opts.tiles.querySelector(`section.tile[data-participant="${CSS.escape(participantId)}"]`);
    if (!tile) return;
    const text = this.displayName(participantId);
    tile.querySelector('.tile-name').textContent = text;
    tile.setAttribute('aria-label', text);
    for (const [trackId, pid] of this.pausedTracks) {
      if (pid === participantId) this.renderPaused(trackId);
    }
  }

  /** Refresh every tile's texts (e.g. after a language change). */
  updateTileNames() {
    for (const id of this.participants.keys()) this.updateTileName(id);
    for (const trackId of this.pausedTracks.keys()) this.renderPaused(trackId);
    for (const el of this.opts.tiles.querySelectorAll('.track-badge')) el.textContent = t('instrument_badge');
    this.updateLayout();
  }

  removeTile(participantId) {
    this.opts.tiles.querySelector(`section.tile[data-participant="${CSS.escape(participantId)}"]`)?.remove();
    if (this.pinnedParticipant === participantId) this.pinnedParticipant = null;
    this.updateLayout();
  }

  // -------------------------------------------------------------------------------------------
  // Layout: a gallery; with two or more others, one of them large (the spotlight).

  /** Pin this participant's tile large, or unpin it (back to following the speaker). */
  togglePin(participantId) {
    this.pinnedParticipant = this.pinnedParticipant === participantId ? null : participantId;
    this.record('local', { type: 'pin', participant_id: this.pinnedParticipant });
    this.updateLayout();
  }

  /**
   * The participant shown large: the one the user pinned; else the latest screen sharer (a
   * shared document must stay readable whoever talks); else the active speaker. None with fewer
   * than two others: their tile is large anyway.
   */
  bigParticipant(remoteIds) {
    if (remoteIds.length < 2) return null;
    if (this.pinnedParticipant && remoteIds.includes(this.pinnedParticipant)) return this.pinnedParticipant;
    let sharer = null;
    for (const info of this.remoteTracks.values()) {
      if (info.source === 'screen' && remoteIds.includes(info.participant_id)) sharer = info.participant_id;
    }
    if (sharer) return sharer;
    if (this.activeSpeaker && remoteIds.includes(this.activeSpeaker)) return this.activeSpeaker;
    return null;
  }

  /** Apply speaker highlight, the large tile and pin buttons; then tell the server. */
  updateLayout() {
    const container = this.opts.tiles;
    if (!container) return;
    const remote = [...container.querySelectorAll('section.tile.remote')];
    const ids = remote.map((tile) => tile.dataset.participant);
    const big = this.bigParticipant(ids);
    container.classList.toggle('spotlight', !!big);
    for (const tile of remote) {
      const id = tile.dataset.participant;
      tile.classList.toggle('big', id === big);
      tile.classList.toggle('speaking', id === this.activeSpeaker);
      const pin = tile.querySelector('.tile-pin');
      if (pin) {
        const pinned = id === this.pinnedParticipant;
        pin.hidden = ids.length < 2;
        pin.textContent = t(pinned ? 'btn_unpin' : 'btn_pin');
        pin.setAttribute('aria-pressed', String(pinned));
      }
    }
    const local = container.querySelector('section.tile.local');
    local?.classList.toggle('speaking', !!this.activeSpeaker && this.activeSpeaker === this.participantId);
    this.schedulePreferences();
  }

  // -------------------------------------------------------------------------------------------
  // Receiver preferences (`track_preferences`): what each received video is shown as.

  /** Send the changed preferences after PREFERENCES_DELAY_MS (or `delay`), coalesced. */
  schedulePreferences(delay = PREFERENCES_DELAY_MS) {
    if (!this.adaptive || this.state !== 'joined') return;
    if (this.preferencesTimer !== null) {
      if (delay > 0) return; // one is pending; it reads the layout when it fires
      clearTimeout(this.preferencesTimer);
    }
    this.preferencesTimer = setTimeout(() => {
      this.preferencesTimer = null;
      this.sendPreferences();
    }, delay);
  }

  /** The preference of each received video whose element is on the page. */
  currentPreferences() {
    const pageVisible = document.visibilityState !== 'hidden';
    const dpr = window.devicePixelRatio || 1;
    const out = [];
    for (const [trackId, info] of this.remoteTracks) {
      if (info.kind !== 'video') continue;
      const el = this.mediaElements.get(trackId);
      if (!el || !el.isConnected) continue;
      const tile = el.closest('section.tile');
      const shown = el.getClientRects().length > 0 && el.clientHeight > 0;
      const inPip = document.pictureInPictureElement === el;
      const visible = (pageVisible && shown) || inPip;
      const pref = { track_id: trackId, visible, pinned: visible && !!tile?.classList.contains('big') };
      if (visible) pref.max_height = heightStep(Math.ceil(el.clientHeight * dpr));
      if (visible && !pref.pinned && pref.max_height <= THUMBNAIL_HEIGHT) pref.max_fps = THUMBNAIL_FPS;
      out.push(pref);
    }
    return out;
  }

  sendPreferences() {
    if (!this.adaptive || this.state !== 'joined') return;
    const changed = [];
    for (const pref of this.currentPreferences()) {
      const key = JSON.stringify(pref);
      if (this.preferencesSent.get(pref.track_id) === key) continue;
      changed.push(pref);
    }
    if (!changed.length) return;
    if (this.send({ type: 'track_preferences', tracks: changed })) {
      for (const pref of changed) this.preferencesSent.set(pref.track_id, JSON.stringify(pref));
    }
  }

  // -------------------------------------------------------------------------------------------
  // Paused videos: the person's name and "audio only: weak connection", large.

  renderPaused(trackId) {
    const el = this.mediaElements.get(trackId);
    const box = el?.parentElement;
    if (!box || !box.classList.contains('track-box')) return;
    const participantId = this.pausedTracks.get(trackId);
    let overlay = box.querySelector('.track-paused');
    if (participantId === undefined) {
      overlay?.remove();
      box.classList.remove('paused');
      return;
    }
    if (!overlay) {
      overlay = document.createElement('div');
      overlay.className = 'track-paused';
      overlay.setAttribute('role', 'status');
      overlay.setAttribute('aria-live', 'polite');
      const name = document.createElement('div');
      name.className = 'paused-name';
      const text = document.createElement('div');
      text.className = 'paused-text';
      overlay.append(name, text);
      box.append(overlay);
    }
    box.classList.add('paused');
    overlay.querySelector('.paused-name').textContent = this.displayName(participantId);
    overlay.querySelector('.paused-text').textContent = t('video_paused_weak');
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
    // How to take this participant back if the socket drops (`resume`): absent when the
    // server has resume off.
    this.resumeGrant = msg.resume || null;
    // The server's embedded TURN with a credential for this session (absent: no TURN).
    this.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
    this.simulcast = msg.simulcast === true;
    this.adaptive = typeof msg.simulcast === 'boolean';
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
    const pc = new RTCPeerConnection({
      iceServers: this.iceServers || [],
      iceTransportPolicy: this.opts.iceTransportPolicy === 'relay' ? 'relay' : 'all',
      bundlePolicy: 'max-bundle',
    });
    this.pc = pc;
    this.generation += 1;

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
      this.watchPath(pc);
      this.changed();
    });

    const stream = this.localStream;
    const tracks = stream ? stream.getTracks() : [];
    for (const track of tracks) {
      if (track.kind === 'video' && this.simulcast) {
        const t = pc.addTransceiver(track, {
          direction: 'sendonly',
          streams: [stream],
          sendEncodings: cameraLayers(track.getSettings?.()),
        });
        preferVp8(t);
      } else {
        pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      }
    }
    if (tracks.length === 0) {
      // Nothing to send: a data channel still gives the first offer a transport to negotiate.
      pc.createDataChannel('huizhen');
    }
  }

  async makeOffer() {
    const pc = this.pc;
    if (pc && pc.signalingState === 'stable' && this.state === 'resuming') {
      // No socket to offer on (an ICE restart or a new track while it is down): offered once
      // the call is resumed (`onResumed`), since negotiationneeded does not fire again.
      this.offerSkipped = true;
      return;
    }
    if (!pc || pc.signalingState !== 'stable' || this.state !== 'joined') return;
    if (this.offerFailures >= MAX_OFFER_FAILURES) {
      this.fail('invalid_sdp', 'the server refused our offer repeatedly; not offering again');
      return;
    }
    try {
      this.makingOffer = true;
      const offer = await pc.createOffer();
      await this.setLocal(pc, offer);
      const msg = { type: 'offer', sdp: pc.localDescription.sdp };
      const sources = this.sendingSources(pc);
      if (Object.keys(sources).length) msg.sources = sources;
      if (this.renewing) msg.renew = true;
      this.send(msg);
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
    if (this.renewing) {
      // An offer for the replaced peer connection (the server renews the session when our
      // offer arrives, and offers the fresh one what it receives after its answer).
      this.record('local', { type: 'stale_offer' });
      return;
    }
    // Polite peer: never ignore the server's offer. A pending local offer is rolled back
    // implicitly by setRemoteDescription; negotiationneeded fires again once stable.
    const collision = this.makingOffer || pc.signalingState !== 'stable';
    if (collision) {
      this.record('local', { type: 'offer_collision', state: pc.signalingState });
      clearTimeout(this.offerTimer);
    }
    await pc.setRemoteDescription({ type: 'offer', sdp: this.withOpusParams(pc, sdp, false) });
    await this.setLocal(pc, await pc.createAnswer());
    this.send({ type: 'answer', sdp: pc.localDescription.sdp });
    if (collision) await this.reattachSenders(pc);
    this.renderRemoteTracks();
    await this.applyAllLayers();
  }

  // -------------------------------------------------------------------------------------------
  // What we send: sources, Opus parameters, simulcast layers

  /** The source of one of our transceivers: camera, microphone, screen or instrument. */
  sourceOf(transceiver) {
    if (transceiver === this.screenTransceiver) return 'screen';
    if (transceiver === this.instrumentTransceiver) return 'instrument';
    const kind = transceiver.sender.track?.kind ?? transceiver.receiver.track.kind;
    return kind === 'video' ? 'camera' : 'microphone';
  }

  /** `sources` of our offer: {mid: source} for the m-lines we send on. */
  sendingSources(pc) {
    const sources = {};
    for (const t of pc.getTransceivers()) {
      if (t.mid == null || t.stopped || !['sendonly', 'sendrecv'].includes(t.direction)) continue;
      sources[t.mid] = this.sourceOf(t);
    }
    return sources;
  }

  /**
   * `sdp` with the Opus parameters of our microphone and instrument (OPUS_PARAMS) in their
   * m-sections. Local descriptions: set (`override`), found by the sender's track id since
   * a new transceiver has no mid before setLocalDescription. The server's descriptions: added
   * where missing, since the browser configures its encoder from those.
   */
  withOpusParams(pc, sdp, override) {
    let out = sdp;
    for (const t of pc.getTransceivers()) {
      const track = t.sender.track;
      if (t.stopped || !track || track.kind !== 'audio') continue;
      const params = OPUS_PARAMS[this.sourceOf(t)];
      const mid = t.mid ?? midOfTrack(out, track.id);
      if (params && mid != null) out = setOpusParams(out, mid, params, { override });
    }
    return out;
  }

  /** setLocalDescription of `description` with our Opus parameters (unchanged if refused). */
  async setLocal(pc, description) {
    const sdp = this.withOpusParams(pc, description.sdp, true);
    if (sdp !== description.sdp) {
      try {
        await pc.setLocalDescription({ type: description.type, sdp });
        return;
      } catch (err) {
        // This browser refuses the edit: go on with its own description.
        this.record('local', { type: 'sdp_edit_refused', message: String(err) });
      }
    }
    await pc.setLocalDescription(description);
  }

  /**
   * Keep only the simulcast layers the server wants (`publish_layers`) on the sender of `mid`.
   * Encodings without a rid (one layer) are left alone; the client never switches layers off
   * on its own.
   */
  async applyLayers(mid) {
    const rids = this.wantedLayers.get(mid);
    const pc = this.pc;
    if (!rids || !pc || pc.signalingState === 'closed') return;
    const t = pc.getTransceivers().find((x) => x.mid === mid && !x.stopped);
    if (!t) return; // applied once the transceiver has its mid
    const params = t.sender.getParameters();
    let changed = false;
    for (const enc of params.encodings || []) {
      if (!enc.rid) continue;
      const active = rids.includes(enc.rid);
      if (enc.active !== active) {
        enc.active = active;
        changed = true;
      }
    }
    if (!changed) return;
    try {
      await t.sender.setParameters(params);
      this.record('local', { type: 'layers_applied', mid, rids });
    } catch (err) {
      this.fail('publish_layers', err);
    }
  }

  async applyAllLayers() {
    for (const mid of this.wantedLayers.keys()) await this.applyLayers(mid);
    for (const mid of this.audioCaps.keys()) await this.applyAudioCap(mid);
  }

  /**
   * Set (or clear) the bitrate cap the server asked for (`publish_audio`) on the audio sender
   * of `mid`: a subscriber's link barely carries the call's voices. Applied once the
   * transceiver has the mid if it arrives earlier.
   */
  async applyAudioCap(mid) {
    const pc = this.pc;
    if (!this.audioCaps.has(mid) || !pc || pc.signalingState === 'closed') return;
    const cap = this.audioCaps.get(mid);
    const t = pc.getTransceivers().find((x) => x.mid === mid && !x.stopped);
    if (!t || t.sender.track?.kind !== 'audio') return;
    const params = t.sender.getParameters();
    const enc = (params.encodings || [])[0];
    if (!enc || (enc.maxBitrate ?? null) === cap) return;
    if (cap == null) delete enc.maxBitrate;
    else enc.maxBitrate = cap;
    try {
      await t.sender.setParameters(params);
      this.record('local', { type: 'audio_cap_applied', mid, max_bitrate: cap });
    } catch (err) {
      this.fail('publish_audio', err);
    }
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

  async onServerAnswer(sdp, renewed = false) {
    const pc = this.pc;
    if (!pc) return;
    if (this.renewing !== renewed) {
      // While renewing, only the renewal's answer is ours; without a renewal, a renewal's
      // answer is not.
      this.record('local', { type: 'stale_answer', state: pc.signalingState });
      return;
    }
    if (pc.signalingState !== 'have-local-offer') {
      // Our offer was rolled back (collision or timeout); this answer is stale.
      this.record('local', { type: 'stale_answer', state: pc.signalingState });
      this.log(`ignored an answer in signaling state ${pc.signalingState}`);
      return;
    }
    clearTimeout(this.offerTimer);
    await pc.setRemoteDescription({ type: 'answer', sdp: this.withOpusParams(pc, sdp, false) });
    this.renewing = false;
    this.offerFailures = 0;
    this.renderRemoteTracks();
    await this.applyAllLayers();
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
      this.removeMediaElement(existing);
      const el = document.createElement(info.kind === 'video' ? 'video' : 'audio');
      el.autoplay = true;
      el.dataset.trackId = trackId;
      el.dataset.mid = info.mid;
      el.dataset.source = info.source;
      el.srcObject = new MediaStream([track]);
      const media = this.tileFor(info.participant_id).querySelector('.tile-media');
      if (info.kind === 'video') {
        el.playsInline = true;
        el.muted = true; // audio comes through its own element
        if (info.source === 'screen') el.classList.add('screen');
        // A box per video, for the "audio only" overlay of a paused video.
        const box = document.createElement('div');
        box.className = info.source === 'screen' ? 'track-box screen' : 'track-box';
        box.append(el);
        media.append(box);
        this.resizeObserver?.observe(el);
      } else {
        media.append(el);
        if (info.source === 'instrument') {
          const badge = document.createElement('div');
          badge.className = 'track-badge';
          badge.dataset.trackId = trackId;
          badge.textContent = t('instrument_badge');
          media.append(badge);
        }
      }
      this.mediaElements.set(trackId, el);
      this.renderPaused(trackId);
      this.schedulePreferences();
      el.play().catch(() => {
        // Autoplay with sound may need a user gesture; retry on the next click.
        document.addEventListener('click', () => el.play().catch(() => {}), { once: true });
      });
    }
  }

  /** Remove a media element with its box (video) or badge (instrument). */
  removeMediaElement(el) {
    if (!el) return;
    this.resizeObserver?.unobserve(el);
    el.srcObject = null;
    const box = el.parentElement?.classList.contains('track-box') ? el.parentElement : null;
    this.opts.tiles?.querySelector(`.track-badge[data-track-id="${CSS.escape(el.dataset.trackId || '')}"]`)?.remove();
    el.remove();
    box?.remove();
  }

  removeRemoteTrack(trackId) {
    this.remoteTracks.delete(trackId);
    this.pausedTracks.delete(trackId);
    this.preferencesSent.delete(trackId);
    const el = this.mediaElements.get(trackId);
    if (el) {
      this.removeMediaElement(el);
      this.mediaElements.delete(trackId);
    }
  }

  // -------------------------------------------------------------------------------------------
  // ICE restart: a path that failed (a change of network, a NAT that forgot us) is replaced
  // by new ICE credentials in a new offer; the participant, its tracks and mids stay.

  /** Restart ICE when the connection fails, or stays `disconnected` for ICE_RESTART_AFTER_MS. */
  watchPath(pc) {
    clearTimeout(this.iceTimer);
    if (pc !== this.pc || this.state === 'closed' || this.state === 'left') return;
    if (pc.connectionState === 'connected' && !this.pathTimer) {
      this.pathTimer = setInterval(() => this.checkPath(pc), PATH_CHECK_MS);
    }
    if (pc.connectionState === 'failed') this.restartIce('failed');
    else if (pc.connectionState === 'disconnected') {
      this.iceTimer = setTimeout(() => {
        if (pc === this.pc && pc.connectionState === 'disconnected') this.restartIce('disconnected');
      }, ICE_RESTART_AFTER_MS);
    }
  }

  /**
   * The path watchdog (see PATH_STALL_MS): restart ICE when the selected pair's received bytes,
   * which were growing, stand still. Bytes of a newly selected pair (ICE moved to another
   * network on its own) start a new watch; after a restart, the watch waits for bytes to flow
   * again before it can fire once more.
   */
  async checkPath(pc) {
    if (pc !== this.pc || pc.signalingState === 'closed') {
      clearInterval(this.pathTimer);
      this.pathTimer = null;
      return;
    }
    if (this.pathBusy) return;
    this.pathBusy = true;
    try {
      const stats = await pc.getStats();
      let pairId = null;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      });
      const pair = pairId ? stats.get(pairId) : null;
      const now = Date.now();
      const w = (this.pathWatch ||= { pairId: null, bytes: 0, movedAt: now, streak: 0, flowing: false, retryAt: 0 });
      if (w.retryAt && now >= w.retryAt && (this.state === 'joined' || this.state === 'resuming')) {
        // The restart brought nothing back (the new network was not known yet, say): again.
        w.retryAt = now + PATH_RETRY_MS;
        this.recoverPath('stalled again');
        return;
      }
      if (!pair) return;
      if (pair.id !== w.pairId) {
        Object.assign(w, { pairId: pair.id, bytes: pair.bytesReceived || 0, movedAt: now, streak: 0, flowing: false });
        return;
      }
      const bytes = pair.bytesReceived || 0;
      if (bytes !== w.bytes) {
        // Flowing means bytes at every check for a while (media and its feedback), not the odd
        // consent check of an idle connection, whose gaps are no sign of a dead path.
        w.streak += 1;
        Object.assign(w, { bytes, movedAt: now, flowing: w.flowing || w.streak >= 4 });
        if (w.flowing) w.retryAt = 0;
        return;
      }
      w.streak = 0;
      if (w.flowing && now - w.movedAt >= PATH_STALL_MS && (this.state === 'joined' || this.state === 'resuming')) {
        w.flowing = false; // once per stall
        w.retryAt = now + PATH_RETRY_MS;
        // The network probably changed: the signaling socket rode on it too and may be dead
        // without knowing it (TCP notices in minutes). The page takes the call back on a new
        // socket first, so that the restart's offer does not vanish into the old one.
        this.opts.onPathStalled?.();
        this.recoverPath('stalled');
      }
    } catch {
      // closing; the next tick looks again
    } finally {
      this.pathBusy = false;
    }
  }

  /** A stalled path: a fresh peer connection, or an ICE restart (`opts.pathRecovery`). */
  recoverPath(why) {
    if (this.opts.pathRecovery !== 'restart' && this.renewPeerConnection(why)) return;
    this.restartIce(why);
  }

  /**
   * Replace the peer connection after a change of network. An ICE restart finds the new path
   * quickly, but Chromium keeps sending on its old candidate pair until that pair has received
   * nothing for 2.5 s (or, while it still receives, until it stops being writable): the others
   * saw 3.6-5.5 s of nothing. A fresh connection has no old pair. The server keeps the
   * participant, its seat and its track ids (an `offer` with `renew`), and offers what we
   * receive anew on the fresh connection. Bounded per minute; false when not done.
   */
  renewPeerConnection(why) {
    const old = this.pc;
    if (!old || old.signalingState === 'closed' || (this.state !== 'joined' && this.state !== 'resuming')) return false;
    const now = Date.now();
    this.renewals = (this.renewals || []).filter((t) => now - t < 60000);
    if (this.renewals.length >= MAX_RENEWALS_PER_MINUTE) return false;
    this.renewals.push(now);
    this.record('local', { type: 'pc_renewed', why });
    this.log(`new media connection (${why})`);
    clearInterval(this.pathTimer);
    this.pathTimer = null;
    this.pathWatch = null;
    clearTimeout(this.iceTimer);
    clearTimeout(this.offerTimer);
    this.makingOffer = false;
    this.offerFailures = 0;
    // What we receive comes back on the fresh connection's m-lines (track_added again); the
    // server's requests about what we send name the old m-lines.
    for (const el of this.mediaElements.values()) this.removeMediaElement(el);
    this.mediaElements.clear();
    for (const info of this.remoteTracks.values()) info.mid = null;
    this.wantedLayers.clear();
    this.audioCaps.clear();
    this.preferencesSent.clear();
    const screen = this.screenStream;
    const instrument = this.instrumentStream;
    this.screenTransceiver = null;
    this.instrumentTransceiver = null;
    this.renewing = true;
    old.close();
    this.createPeerConnection();
    const pc = this.pc;
    const screenTrack = screen?.getVideoTracks()[0];
    if (screenTrack && screenTrack.readyState === 'live') {
      this.screenTransceiver = pc.addTransceiver(screenTrack, {
        direction: 'sendonly',
        streams: [screen],
        sendEncodings: [{ priority: 'high', networkPriority: 'high' }],
      });
      this.setDegradationPreference(this.screenTransceiver.sender, 'maintain-resolution');
    }
    const instrumentTrack = instrument?.getAudioTracks()[0];
    if (instrumentTrack && instrumentTrack.readyState === 'live') {
      this.instrumentTransceiver = pc.addTransceiver(instrumentTrack, {
        direction: 'sendonly',
        streams: [instrument],
        sendEncodings: [{ maxBitrate: INSTRUMENT_BITRATE, priority: 'high', networkPriority: 'high' }],
      });
    }
    this.changed();
    return true;
  }

  /** Ask the browser for new ICE credentials (it offers them); bounded per minute. */
  restartIce(why) {
    const pc = this.pc;
    if (!pc || pc.signalingState === 'closed') return false;
    const now = Date.now();
    this.iceRestarts = (this.iceRestarts || []).filter((t) => now - t < 60000);
    if (this.iceRestarts.length >= MAX_ICE_RESTARTS_PER_MINUTE) return false;
    this.iceRestarts.push(now);
    this.record('local', { type: 'ice_restart', why });
    this.log(`restarting ICE (${why})`);
    pc.restartIce();
    return true;
  }

  // -------------------------------------------------------------------------------------------
  // Resume: the signaling socket dropped, the media session goes on.

  /**
   * The socket dropped: keep the peer connection (media flows on while ICE lives) and let the
   * page take the participant back on a new socket with `resume`. False when that cannot be
   * tried (no token, not in a call): the page then closes the call as before.
   */
  suspend() {
    if (this.state !== 'joined' || !this.resumeGrant?.token) return false;
    this.state = 'resuming';
    this.resumeDeadline = Date.now() + this.resumeGrant.grace_seconds * 1000;
    this.record('local', { type: 'call_suspended' });
    this.changed();
    return true;
  }

  /** The token for a `resume` frame, or null once the server's grace is over. */
  resumeToken() {
    if (this.state !== 'resuming' || !this.resumeGrant || Date.now() >= this.resumeDeadline) return null;
    return this.resumeGrant.token;
  }

  /**
   * Back on a new socket: the server's state now (not a replay). Participants and tracks the
   * socket missed are added, those gone are removed, pauses and the speaker are taken as
   * they are; a pending server offer follows as a normal `offer`.
   */
  onResumed(msg) {
    this.resumeGrant = msg.resume;
    if (Array.isArray(msg.ice_servers) && msg.ice_servers.length && this.pc) {
      // Fresh TURN credentials: an ICE restart after the resume gathers with them.
      this.iceServers = msg.ice_servers;
      try {
        this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers: msg.ice_servers });
      } catch (err) {
        this.log(`ice servers not updated: ${err}`, true);
      }
    }
    this.state = 'joined';
    const present = new Set(msg.participants.map((p) => p.id));
    for (const id of [...this.participants.keys()]) {
      if (!present.has(id)) this.onParticipantLeft(id);
    }
    for (const p of msg.participants) {
      this.participants.set(p.id, p);
      this.tileFor(p.id);
      this.updateTileName(p.id);
    }
    const tracks = new Map(msg.tracks.map((t) => [t.track_id, t]));
    for (const id of [...this.remoteTracks.keys()]) {
      if (!tracks.has(id)) this.removeRemoteTrack(id);
    }
    for (const t of msg.tracks) {
      if (!this.remoteTracks.has(t.track_id)) this.rememberTrack(t);
    }
    const paused = new Set(msg.paused || []);
    for (const id of [...this.pausedTracks.keys()]) {
      if (!paused.has(id)) this.pausedTracks.delete(id);
    }
    for (const id of paused) {
      const t = tracks.get(id);
      if (t) this.pausedTracks.set(id, t.participant_id);
    }
    this.activeSpeaker = msg.active_speaker ?? null;
    this.renderRemoteTracks();
    for (const id of tracks.keys()) this.renderPaused(id);
    this.log(`resumed in ${msg.room} as ${msg.participant_id}`);
    this.record('local', { type: 'call_resumed', tracks: msg.tracks.length });
    // Preferences sent while the socket was down were lost: send the layout again.
    this.preferencesSent.clear();
    this.updateLayout();
    this.changed();
    if (this.offerSkipped) {
      this.offerSkipped = false;
      this.enqueue(() => this.makeOffer());
    }
  }

  /** A received track as `track_added` (or `resumed.tracks`) announces it, and its tile. */
  rememberTrack(t) {
    this.remoteTracks.set(t.track_id, {
      participant_id: t.participant_id,
      kind: t.kind,
      mid: t.mid,
      // Older servers do not say: a camera for video, the microphone for audio.
      source: t.source || (t.kind === 'video' ? 'camera' : 'microphone'),
    });
    this.tileFor(t.participant_id);
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
    // Text and images: keep them sharp (lower the frame rate first, never the resolution).
    track.contentHint = 'detail';
    this.screenStream = stream;
    track.addEventListener('ended', () => this.stopScreenShare());
    const t = this.screenTransceiver;
    if (t && !t.stopped && t.currentDirection !== 'stopped') {
      // Reuse the m-line of an earlier share; changing the direction renegotiates.
      await t.sender.replaceTrack(track);
      t.direction = 'sendonly';
    } else {
      // One layer, favoured over the cameras by the browser's own congestion control.
      this.screenTransceiver = pc.addTransceiver(track, {
        direction: 'sendonly',
        streams: [stream],
        sendEncodings: [{ priority: 'high', networkPriority: 'high' }],
      });
    }
    await this.setDegradationPreference(this.screenTransceiver.sender, 'maintain-resolution');
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

  async setDegradationPreference(sender, preference) {
    try {
      const params = sender.getParameters();
      if (params.degradationPreference === preference) return;
      params.degradationPreference = preference;
      await sender.setParameters(params);
    } catch (err) {
      // Not supported by this browser: contentHint 'detail' asks for the same.
      this.record('local', { type: 'degradation_preference_refused', message: String(err) });
    }
  }

  /**
   * Publish a clinical instrument (an electronic stethoscope on a second audio input) as its
   * own track: no echo cancellation, noise suppression or gain control (they would remove or
   * pump the heart and lung sounds), stereo where the device is, Opus at INSTRUMENT_BITRATE.
   * Returns the track's label.
   */
  async startInstrument(deviceId) {
    const pc = this.pc;
    if (!pc || this.state !== 'joined') throw new Error('not in a room');
    if (this.instrumentStream) await this.stopInstrument();
    const audio = {
      echoCancellation: false,
      noiseSuppression: false,
      autoGainControl: false,
      channelCount: { ideal: 2 },
    };
    if (deviceId) audio.deviceId = { exact: deviceId };
    const stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
    const track = stream.getAudioTracks()[0];
    track.contentHint = 'music';
    this.instrumentStream = stream;
    track.addEventListener('ended', () => this.stopInstrument());
    const t = this.instrumentTransceiver;
    if (t && !t.stopped && t.currentDirection !== 'stopped') {
      await t.sender.replaceTrack(track);
      t.direction = 'sendonly';
    } else {
      this.instrumentTransceiver = pc.addTransceiver(track, {
        direction: 'sendonly',
        streams: [stream],
        sendEncodings: [{ maxBitrate: INSTRUMENT_BITRATE, priority: 'high', networkPriority: 'high' }],
      });
    }
    const settings = track.getSettings();
    this.record('local', { type: 'instrument_started', track_id: track.id, channels: settings.channelCount ?? null });
    this.log(`instrument started: ${track.label}`);
    this.changed();
    return track.label;
  }

  async stopInstrument() {
    const stream = this.instrumentStream;
    if (!stream) return;
    this.instrumentStream = null;
    for (const tr of stream.getTracks()) tr.stop();
    const pc = this.pc;
    const t = this.instrumentTransceiver;
    if (pc && pc.signalingState !== 'closed' && t && !t.stopped) {
      // Inactive m-line, as for the screen share: the next start reuses it.
      t.direction = 'inactive';
      await t.sender.replaceTrack(null);
    }
    this.record('local', { type: 'instrument_stopped' });
    this.log('instrument stopped');
    this.changed();
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
    clearTimeout(this.iceTimer);
    clearInterval(this.pathTimer);
    this.pathTimer = null;
    clearTimeout(this.preferencesTimer);
    this.preferencesTimer = null;
    this.resizeObserver?.disconnect();
    document.removeEventListener('visibilitychange', this.onVisibilityChange);
    if (this.pc && this.pc.signalingState !== 'closed') this.pc.close();
    const streams = [this.screenStream, this.instrumentStream];
    if (this.opts.stopLocalMedia !== false) streams.push(this.localStream);
    for (const s of streams) {
      for (const t of s?.getTracks() ?? []) t.stop();
    }
    this.screenStream = null;
    this.instrumentStream = null;
    for (const el of this.mediaElements.values()) this.removeMediaElement(el);
    this.mediaElements.clear();
    this.remoteTracks.clear();
    this.pausedTracks.clear();
    this.activeSpeaker = null;
    this.opts.tiles?.querySelector('section.tile.local')?.classList.remove('speaking');
    this.opts.tiles?.classList.remove('spotlight');
    for (const id of this.participants.keys()) this.removeTile(id);
    if (this.opts.localVideo && this.opts.stopLocalMedia !== false) this.opts.localVideo.srcObject = null;
    if (this.opts.localScreen) {
      this.opts.localScreen.srcObject = null;
      this.opts.localScreen.hidden = true;
    }
    this.changed();
  }
}
