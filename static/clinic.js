// huizhen clinic pages: what the patient, doctor, expert and companion pages share.
//
// - the signaling WebSocket (/ws): `auth` with the token from the URL on every (re)connect,
//   keep-alive pings, reconnects with back-off (not after a refused token);
// - the call: `join_consultation`, then the media flow of protocol v1 through static/call.js;
//   the call view with large controls;
// - errors shown as friendly text (static/i18n.js), the language toggle, connection status;
// - recording consent (every page): `consent_request` opens a large modal dialog (Agree /
//   Refuse → `consent`), a button in the call view reopens it to change the answer, and a
//   permanent banner shows while `recording_status.active`, saying whether you are recorded;
// - the stethoscope control (doctor and patient: `instrument`): a second audio input published
//   as a clinical instrument (see static/call.js);
// - `window.huizhen`: the state tests and debugging read.
//
// Reconnect rules (see signaling/PROTOCOL.md, "Clinic messages"): when the socket drops, the
// server keeps a waiting patient's place and everyone's seat in a consultation for the grace
// period. The page reconnects, authenticates again, and then the page module resumes: a
// patient who was waiting sends `check_in` again, anyone who holds a seat (`authenticated.seats`)
// sends `join_consultation` again.
//
// Plain ES module, no build step, no external URLs.

import { Call, MEDIA_MESSAGE_TYPES, audioInputs, getLocalMedia, isLive } from './call.js';
import { applyTranslations, bindLanguageToggle, errorText, lang, setLang, t } from './i18n.js';

const PING_INTERVAL_MS = 15000;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000, 10000];
/** Errors after which reconnecting cannot help. */
const FATAL_AUTH_ERRORS = new Set(['invalid_token', 'expired_token', 'revoked_token', 'too_many_refusals']);
/** `bye` reasons that end the session for good: another page of the same user took over, or
 * the token expired or was revoked. Reconnecting would only take the session back. */
const SESSION_ENDS = new Set(['replaced', 'token_expired', 'revoked']);
/** Most automatic rejoins after an unexpected `bye`, per minute. */
const MAX_REJOINS_PER_MINUTE = 3;

export const $ = (id) => document.getElementById(id);

/** Create an element: el('button', {class: 'big', onclick}, 'text', child...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** Query parameters every clinic page may use. */
export const params = (() => {
  const q = new URLSearchParams(location.search);
  const get = (k) => (q.get(k) || '').trim() || null;
  return {
    token: get('token'),
    appointment: get('appointment'),
    clinic: get('clinic'),
    consultation: get('consultation'),
  };
})();

/** Format a wall-clock time (ms since the epoch) as a local time of day. */
export function formatTime(ms) {
  return new Date(ms).toLocaleTimeString(lang() === 'zh' ? 'zh-CN' : 'en-GB', { hour: '2-digit', minute: '2-digit' });
}

/**
 * Build the page skeleton shared by every clinic page and return the page controller.
 *
 * @param {object} opts
 * @param {string} opts.role  the role the token must carry ('patient', 'doctor', ...)
 * @param {(msg: object, info: {reconnect: boolean}) => void} opts.onAuthenticated
 * @param {(msg: object) => boolean|void} [opts.onMessage]  clinic messages; return true if handled
 * @param {(code: string, msg: object) => boolean|void} [opts.onError]  a refused request; true if handled
 * @param {(code: string, consultation: string) => void} [opts.onJoinRefused]
 * @param {() => void} [opts.onCallJoined]
 * @param {(consultation: string) => void} [opts.onConsultationEnded]
 * @param {() => void} [opts.onCallLeft]  the user left the call with the leave button
 * @param {() => void} [opts.onSocketLost]
 * @param {() => void} [opts.onLanguageChange]
 * @param {() => void} [opts.onRecordingChange]  recording, consent or consent statuses changed
 * @param {boolean} [opts.screenShare]  offer a screen share button in the call view
 * @param {boolean} [opts.instrument]  offer the stethoscope control in the call view
 * @param {HTMLElement} [opts.callExtras]  controls shown under the call (doctor's panel)
 */
export function createClinicPage(opts) {
  const events = [];
  const errors = [];
  let ws = null;
  let pingTimer = null;
  let reconnectTimer = null;
  /** A `resume` is on its way: its refusal falls back to `join_consultation`. */
  let resumeSent = false;
  let reconnectAttempt = 0;
  let fatal = false;
  let everAuthenticated = false;
  let call = null;
  let pendingJoin = null;
  let joinAttempt = null;
  let localStream = null;
  let rejoinTimes = [];

  const huizhen = {
    role: opts.role,
    /** Page state; each page documents its own values. */
    state: 'connecting',
    /** 'connecting' | 'open' | 'authenticated' | 'reconnecting' | 'failed' */
    connection: 'connecting',
    /** From `authenticated`. */
    user: null,
    displayName: null,
    clinics: [],
    seats: [],
    /** Patient: place in line (null while called), estimate and the doctor's status. */
    position: null,
    estimatedWaitMs: null,
    doctorStatus: null,
    /** The consultation whose call this page is in (or joining, or last in). */
    consultation: null,
    /** Whether that consultation ended. */
    ended: false,
    /**
     * The recording of this consultation, from the last `recording_status` (or a
     * `consent_request`): {consultation, recording, active, recorded}; null if none ran.
     */
    recording: null,
    /**
     * My consent to the running recording, when I was asked (`consent_request`):
     * {consultation, recording, decision: 'pending'|'granted'|'refused', askedAt, answeredAt};
     * null when not asked (or no recording runs). `recording.recorded` is the server's word on
     * whether my media is in the recording.
     */
    consent: null,
    /** Doctors: everyone's decision on the current recording, from `consent_status`: [{user, display_name, decision}]. */
    consents: [],
    /** The recording `consents` are about. */
    consentsRecording: null,
    events,
    errors,
    get ws() {
      return ws;
    },
    get call() {
      return call;
    },
    get pc() {
      return call ? call.pc : null;
    },
    get participantId() {
      return call ? call.participantId : null;
    },
    get callState() {
      return call ? call.state : null;
    },
    get remoteTracks() {
      return call ? call.remoteTracks : new Map();
    },
    get participants() {
      return call ? call.participants : new Map();
    },
    get localStream() {
      return localStream;
    },
    /** Whether a clinical instrument (stethoscope) is being sent. */
    get instrumentActive() {
      return !!call?.instrumentStream;
    },
    /** The audio inputs the stethoscope selector offers: [{deviceId, label}]. */
    instrumentDevices: [],
    /** Whether the consent dialog is open. */
    get consentDialogOpen() {
      return consentDialog.open;
    },
    lang,
    setLang,
  };
  window.huizhen = huizhen;

  // -------------------------------------------------------------------------------------------
  // Events, status and errors

  function record(dir, msg) {
    events.push({ dir, type: msg.type, at: Date.now(), msg });
    if (events.length > 5000) events.splice(0, 1000);
  }

  let connectionKey = 'conn_connecting';
  function setConnection(state, key) {
    huizhen.connection = state;
    connectionKey = key;
    const node = $('connection');
    if (node) {
      node.textContent = t(key);
      node.dataset.state = state;
    }
  }

  let errorShown = null; // {code} or {key}
  function renderError() {
    const box = $('error');
    if (!box) return;
    if (!errorShown) {
      box.hidden = true;
      box.textContent = '';
      return;
    }
    box.hidden = false;
    box.textContent = errorShown.key ? t(errorShown.key) : errorText(errorShown.code);
    box.dataset.code = errorShown.code || errorShown.key;
    // The server's own (English) detail, for support staff.
    box.title = errorShown.detail || '';
  }

  /**
   * Show a friendly error: `{code}` (server/local error code) or `{key}` (i18n key), with an
   * optional technical `detail`.
   */
  function showError(error) {
    errorShown = error;
    renderError();
  }

  function clearError() {
    errorShown = null;
    renderError();
  }

  function localError(code, err) {
    const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    errors.push({ code, message });
    record('local', { type: 'local_error', code, message });
    console.error('huizhen', code, err);
  }

  // -------------------------------------------------------------------------------------------
  // Views

  function setState(state) {
    huizhen.state = state;
    document.body.dataset.state = state;
    if (state === 'error') showView(null);
  }

  /** Show the `.view` section with this id and hide the others. */
  function showView(id) {
    for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== id;
  }

  // -------------------------------------------------------------------------------------------
  // Socket

  function send(msg) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    record('out', msg);
    ws.send(JSON.stringify(msg));
    return true;
  }

  function connect(onOpen = null) {
    clearTimeout(reconnectTimer);
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}/ws`);
    ws = socket;
    setConnection(reconnectAttempt ? 'reconnecting' : 'connecting', reconnectAttempt ? 'conn_reconnecting' : 'conn_connecting');
    socket.addEventListener('open', () => {
      onOpen?.();
      setConnection('open', 'conn_connecting');
      send({ type: 'auth', token: params.token });
      clearInterval(pingTimer);
      pingTimer = setInterval(() => send({ type: 'ping' }), PING_INTERVAL_MS);
    });
    socket.addEventListener('message', (event) => {
      // A socket this page already replaced (a reconnect while the old one lingered): its
      // frames, e.g. the server's `bye {reason: "replaced"}`, are not for this page any more.
      if (ws !== socket) return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (err) {
        localError('bad_json', `unparseable frame from server: ${err}`);
        return;
      }
      record('in', msg);
      onServerMessage(msg);
    });
    socket.addEventListener('close', (event) => {
      if (ws !== socket) return;
      clearInterval(pingTimer);
      record('local', { type: 'socket_closed', code: event.code, reason: event.reason });
      // The server keeps our media session for its resume grace (the call goes on) and the
      // seat for the clinic's: after reconnecting and `auth`, `resume` takes the call back.
      // Without a resume token the media session ends with the socket and the seat is taken
      // again with `join_consultation`.
      if (call && call.state === 'joined' && call.suspend()) {
        updateCallView();
      } else if (call && call.state !== 'left' && call.state !== 'closed' && call.state !== 'resuming') {
        call.close('closed');
      }
      pendingJoin = null;
      opts.onSocketLost?.();
      if (fatal) {
        setConnection('failed', 'conn_failed');
        return;
      }
      const delay = RECONNECT_DELAYS_MS[Math.min(reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
      reconnectAttempt += 1;
      setConnection('reconnecting', 'conn_reconnecting');
      reconnectTimer = setTimeout(connect, delay);
    });
  }

  /**
   * The call's media path stalled (a change of network): the socket rode on the same network
   * and may be dead without knowing it (TCP notices in minutes), so the page takes the call
   * back on a new socket now (`auth`, then `resume`); the old one is closed once the new one is
   * open. The call's recovery offer waits for the resume.
   */
  function replaceSocket(reason) {
    if (!ws || !call || call.state !== 'joined') return;
    const old = ws;
    ws = null; // its frames and its close event are ignored from now on
    clearInterval(pingTimer);
    record('local', { type: 'socket_replaced', reason });
    if (!call.suspend()) {
      old.close(4000, reason);
      return;
    }
    updateCallView();
    reconnectAttempt = 0;
    connect(() => {
      try {
        old.close(4000, reason);
      } catch {
        // already closing
      }
    });
  }

  function onServerMessage(msg) {
    if (msg.type === 'bye' && SESSION_ENDS.has(msg.reason)) {
      fatal = true;
      if (call && call.state !== 'left' && call.state !== 'closed') call.close('closed');
      setState('error');
      showError({ code: `session_${msg.reason}` });
      return;
    }
    if (msg.type === 'token_expiring') {
      // The page cannot mint a token; the hospital's page may send a fresh `auth` itself.
      opts.onTokenExpiring?.(msg);
      return;
    }
    if (msg.type === 'token_renewed') return;
    if (MEDIA_MESSAGE_TYPES.has(msg.type)) {
      if (msg.type === 'resumed' && call) {
        resumeSent = false;
        call.enqueue(async () => {
          await call.process(msg);
          setState('in_call');
          updateCallView();
        });
        return;
      }
      if (msg.type === 'joined' && call) {
        pendingJoin = null;
        call.enqueue(async () => {
          await call.process(msg);
          setState('in_call');
          updateCallView();
          refreshInstrumentDevices();
          opts.onCallJoined?.();
        });
        return;
      }
      if (call) call.handle(msg);
      return;
    }
    switch (msg.type) {
      case 'authenticated':
        return onAuthenticated(msg);
      case 'error':
        return onError(msg);
      case 'consultation_ended':
        return onConsultationEnded(msg.consultation);
      case 'consent_request':
        return onConsentRequest(msg);
      case 'recording_status':
        return onRecordingStatus(msg);
      case 'consent_status':
        return onConsentStatus(msg);
      case 'pong':
        return;
      default:
        if (!opts.onMessage?.(msg)) record('local', { type: 'ignored', what: msg.type });
    }
  }

  function onAuthenticated(msg) {
    const reconnect = everAuthenticated;
    everAuthenticated = true;
    reconnectAttempt = 0;
    huizhen.user = msg.user_id;
    huizhen.displayName = msg.display_name;
    huizhen.clinics = msg.clinics;
    huizhen.seats = msg.seats;
    setConnection('authenticated', 'conn_connected');
    if (errorShown && ['unavailable', 'not_authenticated'].includes(errorShown.code)) clearError();
    if (msg.role !== opts.role) {
      fatal = true;
      setState('error');
      showError({ key: 'error_wrong_role' });
      ws?.close(1000, 'wrong role');
      return;
    }
    updateLocalName();
    if (call && call.state === 'resuming') {
      const token = call.resumeToken();
      if (token && send({ type: 'resume', token })) {
        resumeSent = true;
        // The page module's rejoin from `seats` waits: `joinConsultation` leaves a resuming
        // call alone, and a refused resume falls back to it (`onError`).
        opts.onAuthenticated(msg, { reconnect });
        return;
      }
      call.close('closed');
    }
    opts.onAuthenticated(msg, { reconnect });
  }

  function onError(msg) {
    errors.push({ code: msg.code, message: msg.message });
    if (!everAuthenticated && FATAL_AUTH_ERRORS.has(msg.code)) {
      fatal = true;
      setState('error');
      showError({ code: msg.code, detail: msg.message });
      ws?.close(1000, 'token refused');
      return;
    }
    if (resumeSent && call && call.state === 'resuming') {
      // The resume was refused (grace over, call ended): take the seat again the old way.
      resumeSent = false;
      record('local', { type: 'resume_refused', code: msg.code });
      call.close('closed');
      if (huizhen.consultation && !huizhen.ended) joinConsultation(huizhen.consultation, { force: true });
      return;
    }
    if (call && call.onServerError(msg)) return;
    if (pendingJoin) {
      const consultation = pendingJoin;
      pendingJoin = null;
      if (call && call.state !== 'joined') call.close('failed');
      updateCallView();
      if (opts.onJoinRefused?.(msg.code, consultation)) return;
      showError({ code: msg.code, detail: msg.message });
      return;
    }
    if (opts.onError?.(msg.code, msg)) return;
    showError({ code: msg.code, detail: msg.message });
  }

  function onConsultationEnded(consultation) {
    if (huizhen.consultation && consultation !== huizhen.consultation) return;
    huizhen.consultation = consultation;
    huizhen.ended = true;
    pendingJoin = null;
    if (call && call.state !== 'closed' && call.state !== 'left') call.close('closed');
    releaseMedia();
    resetRecording();
    updateCallView();
    opts.onConsultationEnded?.(consultation);
  }

  // -------------------------------------------------------------------------------------------
  // Recording and consent (signaling/PROTOCOL.md, "Clinic messages")

  const { indicator: recordingIndicator, dialog: consentDialog } = buildRecordingUi();
  document.querySelector('.topbar')?.after(recordingIndicator);
  if (!recordingIndicator.isConnected) document.body.prepend(recordingIndicator);
  document.body.append(consentDialog);

  function recordingChanged() {
    renderRecording();
    opts.onRecordingChange?.();
  }

  /** Forget the recording state (the consultation ended, or another one is joined). */
  function resetRecording() {
    huizhen.recording = null;
    huizhen.consent = null;
    huizhen.consents = [];
    huizhen.consentsRecording = null;
    closeConsentDialog();
    recordingChanged();
  }

  function onConsentRequest(msg) {
    const current = huizhen.consent;
    if (!current || current.recording !== msg.recording || current.consultation !== msg.consultation) {
      huizhen.consent = {
        consultation: msg.consultation,
        recording: msg.recording,
        decision: 'pending',
        askedAt: Date.now(),
        answeredAt: null,
      };
    }
    // Someone admitted while a recording runs gets the request without a `recording_status`.
    const rec = huizhen.recording;
    if (!rec || rec.recording !== msg.recording) {
      huizhen.recording = { consultation: msg.consultation, recording: msg.recording, active: true, recorded: false };
    }
    openConsentDialog();
    recordingChanged();
    return true;
  }

  function onRecordingStatus(msg) {
    huizhen.recording = {
      consultation: msg.consultation,
      recording: msg.recording,
      active: !!msg.active,
      recorded: !!msg.recorded && !!msg.active,
    };
    const consent = huizhen.consent;
    if (!msg.active || (consent && consent.recording !== msg.recording)) {
      // Stopped (or another recording began; its own request follows): nothing to answer.
      huizhen.consent = null;
      closeConsentDialog();
    } else if (consent && consent.decision === 'pending' && msg.recorded) {
      // Answered elsewhere (another tab of the same user).
      consent.decision = 'granted';
    }
    recordingChanged();
    return true;
  }

  function onConsentStatus(msg) {
    if (huizhen.consultation && msg.consultation !== huizhen.consultation) return true;
    if (huizhen.consentsRecording !== msg.recording) {
      huizhen.consents = [];
      huizhen.consentsRecording = msg.recording;
    }
    const entry = huizhen.consents.find((c) => c.user === msg.user);
    if (entry) {
      entry.display_name = msg.display_name;
      entry.decision = msg.decision;
    } else {
      huizhen.consents.push({ user: msg.user, display_name: msg.display_name, decision: msg.decision });
    }
    recordingChanged();
    return true;
  }

  /** Answer the consent request (or change the answer): `granted` true to be recorded. */
  function giveConsent(granted) {
    const consent = huizhen.consent;
    closeConsentDialog();
    if (!consent) return false;
    if (!send({ type: 'consent', consultation: consent.consultation, granted: !!granted })) {
      showError({ code: 'unavailable' });
      recordingChanged();
      return false;
    }
    consent.decision = granted ? 'granted' : 'refused';
    consent.answeredAt = Date.now();
    recordingChanged();
    return true;
  }

  function openConsentDialog() {
    renderRecording();
    if (consentDialog.open) return;
    if (typeof consentDialog.showModal === 'function') {
      try {
        consentDialog.showModal();
      } catch {
        consentDialog.setAttribute('open', '');
      }
    } else {
      consentDialog.setAttribute('open', '');
    }
    $('btn-consent-agree')?.focus();
  }

  function closeConsentDialog() {
    if (!consentDialog.open) return;
    if (typeof consentDialog.close === 'function') consentDialog.close();
    else consentDialog.removeAttribute('open');
  }

  function renderRecording() {
    const rec = huizhen.recording;
    const consent = huizhen.consent;
    const active = !!rec?.active;
    recordingIndicator.hidden = !active;
    let key = null;
    if (active) {
      if (rec.recorded) key = 'rec_recorded';
      else if (consent && consent.decision === 'pending') key = 'rec_pending';
      else key = 'rec_not_recorded';
    }
    const text = $('recording-indicator-text');
    if (text) text.textContent = key ? t(key) : '';
    recordingIndicator.dataset.recorded = String(active && rec.recorded);
    recordingIndicator.dataset.key = key || '';
    document.body.dataset.recording = active ? (rec.recorded ? 'recorded' : 'not_recorded') : 'off';
    const current = $('consent-current');
    if (current) {
      const answered = consent && consent.decision !== 'pending';
      current.hidden = !answered;
      current.textContent = answered ? t(consent.decision === 'granted' ? 'consent_current_granted' : 'consent_current_refused') : '';
    }
    const change = $('btn-consent-change');
    if (change) {
      change.hidden = !(active && consent);
      change.textContent = t('btn_consent_change');
    }
  }

  // -------------------------------------------------------------------------------------------
  // Call

  const callView = buildCallView(opts);
  $('call-view')?.replaceChildren(...callView.children);

  function updateLocalName() {
    const name = $('local-name');
    if (name) name.textContent = `${huizhen.displayName || t('you')} ${t('you_suffix')}`;
  }

  async function ensureLocalMedia() {
    if (isLive(localStream)) return localStream;
    localStream = await getLocalMedia((text, isError) => record('local', { type: 'media_log', text, isError }));
    if (!localStream) {
      showError({ key: 'error_media' });
    }
    return localStream;
  }

  /** Stop the camera and microphone (after the call). */
  function releaseMedia() {
    for (const tr of localStream?.getTracks() ?? []) tr.stop();
    localStream = null;
    const v = $('local-video');
    if (v) v.srcObject = null;
  }

  /** Use `stream` (e.g. from the device check) for the next call. */
  function useLocalStream(stream) {
    localStream = stream;
  }

  /**
   * Enter the call of `consultation`: camera and microphone, then `join_consultation`; the
   * server answers `joined` (or `waiting_for_approval`, or an error). `view` is shown while
   * joining (default: the call view); `force` sends the request again even if one is pending
   * (a companion's seat is admitted silently: no reply comes for the first request).
   */
  async function joinConsultation(consultation, { force = false, view = 'call-view' } = {}) {
    if (!consultation) return;
    if (pendingJoin === consultation && !force) return;
    if (call && huizhen.consultation === consultation && (call.state === 'joined' || call.state === 'resuming')) return;
    if (call && call.state !== 'closed' && call.state !== 'left') call.close('closed');
    if (huizhen.consultation !== consultation) resetRecording();
    huizhen.consultation = consultation;
    huizhen.ended = false;
    const attempt = {};
    pendingJoin = consultation;
    joinAttempt = attempt;
    setState('joining');
    if (view) showView(view);
    updateCallView();
    const stream = await ensureLocalMedia();
    if (joinAttempt !== attempt || pendingJoin !== consultation) return; // superseded meanwhile
    call = new Call({
      // ?ice=relay: media only through the server's TURN (tests, networks that need it).
      iceTransportPolicy: new URLSearchParams(location.search).get('ice') === 'relay' ? 'relay' : 'all',
      send,
      record,
      onError: localError,
      onChange: updateCallView,
      onBye: onCallBye,
      log: (text, isError) => record('local', { type: 'call_log', text, isError }),
      tiles: $('tiles'),
      localVideo: $('local-video'),
      localScreen: $('local-screen'),
      localStream: stream,
      stopLocalMedia: false,
      tileName: (p) => (p ? p.display_name || t('unknown_name') : t('unknown_name')),
      onPathStalled: () => replaceSocket('media path stalled'),
    });
    call.state = 'joining';
    updateCallView();
    if (!send({ type: 'join_consultation', consultation })) {
      // Not connected: the reconnect path joins again from `authenticated.seats`.
      pendingJoin = null;
      call.close('closed');
    }
  }

  /** Stop waiting for `joined` (a companion waits for approval instead). Keeps the camera. */
  function cancelJoin() {
    pendingJoin = null;
    joinAttempt = null;
    if (call && call.state !== 'joined' && call.state !== 'closed') call.close('closed');
    updateCallView();
  }

  function onCallBye(reason, expected) {
    updateCallView();
    if (expected || huizhen.ended) return;
    // Removed from the media session (timeout, network) while the consultation goes on: the
    // seat is still ours, so join again (a bounded number of times).
    const now = Date.now();
    rejoinTimes = rejoinTimes.filter((x) => now - x < 60000);
    if (rejoinTimes.length >= MAX_REJOINS_PER_MINUTE || !huizhen.consultation) {
      showError({ key: 'call_media_failed' });
      return;
    }
    rejoinTimes.push(now);
    record('local', { type: 'rejoin', reason });
    setTimeout(() => {
      if (!huizhen.ended && huizhen.connection === 'authenticated' && call?.state === 'closed') {
        joinConsultation(huizhen.consultation);
      }
    }, 1000);
  }

  // -------------------------------------------------------------------------------------------
  // Stethoscope (clinical instrument)

  let instrumentError = null; // i18n key of the last failure

  /**
   * Fill the input selector: keep the user's choice; else a device named like a stethoscope;
   * else the first input that is not the microphone in use.
   */
  async function refreshInstrumentDevices() {
    const select = $('instrument-device');
    if (!select) return;
    let inputs = [];
    try {
      inputs = await audioInputs();
    } catch (err) {
      localError('instrument', err);
    }
    const micId = localStream?.getAudioTracks()[0]?.getSettings().deviceId;
    const previous = select.value;
    select.replaceChildren(
      ...inputs.map((d, i) => el('option', { value: d.deviceId }, d.label || `${t('instrument_device_label')} ${i + 1}`)),
    );
    const pick =
      inputs.find((d) => d.deviceId === previous) ||
      inputs.find((d) => /stethoscope|steth|听诊/i.test(d.label)) ||
      inputs.find((d) => d.deviceId !== micId && !['default', 'communications'].includes(d.deviceId)) ||
      inputs[0];
    if (pick) select.value = pick.deviceId;
    huizhen.instrumentDevices = inputs.map((d) => ({ deviceId: d.deviceId, label: d.label }));
    updateCallView();
  }

  async function toggleInstrument() {
    if (!call || call.state !== 'joined') return;
    instrumentError = null;
    try {
      if (call.instrumentStream) await call.stopInstrument();
      else await call.startInstrument($('instrument-device')?.value || undefined);
    } catch (err) {
      instrumentError = 'instrument_failed';
      localError('instrument', err);
    }
    updateCallView();
  }

  /** Shown in a call when a second audio input exists (a stethoscope is one) or one is sent. */
  function renderInstrument(joined) {
    const box = $('instrument-box');
    if (!box) return;
    const on = !!call?.instrumentStream;
    const inputs = huizhen.instrumentDevices.filter((d) => !['default', 'communications'].includes(d.deviceId)).length;
    box.hidden = !joined || (!on && inputs < 2);
    const button = $('btn-instrument');
    button.textContent = t(on ? 'btn_instrument_remove' : 'btn_instrument_add');
    button.setAttribute('aria-pressed', String(on));
    button.disabled = !joined;
    $('instrument-device').disabled = on;
    const status = $('instrument-status');
    const key = instrumentError || (on ? 'instrument_on' : null);
    status.textContent = key ? t(key) : '';
    status.classList.toggle('error', !!instrumentError);
  }

  /** Leave the call for good (the seat is given up; the consultation goes on). */
  function leaveCall() {
    if (!call) return;
    call.leave();
    releaseMedia();
    resetRecording();
    setState('left_call');
    updateCallView();
    opts.onCallLeft?.();
  }

  function updateCallView() {
    const state = call ? call.state : 'idle';
    const joined = state === 'joined';
    const audio = localStream?.getAudioTracks()[0];
    const video = localStream?.getVideoTracks()[0];
    const mic = $('btn-mic');
    if (mic) {
      mic.disabled = !joined || !audio;
      mic.textContent = audio && !audio.enabled ? t('btn_unmute') : t('btn_mute');
      mic.setAttribute('aria-pressed', String(!!audio && !audio.enabled));
    }
    const cam = $('btn-cam');
    if (cam) {
      cam.disabled = !joined || !video;
      cam.textContent = video && !video.enabled ? t('btn_camera_on') : t('btn_camera_off');
      cam.setAttribute('aria-pressed', String(!!video && !video.enabled));
    }
    const screen = $('btn-screen');
    if (screen) {
      screen.disabled = !joined || !navigator.mediaDevices?.getDisplayMedia;
      screen.textContent = call?.screenStream ? t('btn_stop_share') : t('btn_share');
      screen.setAttribute('aria-pressed', String(!!call?.screenStream));
    }
    renderInstrument(joined);
    const leave = $('btn-leave');
    if (leave) {
      leave.disabled = !joined;
      leave.textContent = t('btn_leave_call');
    }
    const status = $('call-status');
    if (status) {
      let key = 'call_joining';
      if (joined) {
        const cs = call.pc?.connectionState;
        if (cs === 'failed') key = 'call_media_failed';
        else if (call.participants.size === 0) key = 'waiting_for_others';
        else if (cs === 'connected') key = 'call_connected';
      } else if (state === 'left') key = 'call_left';
      else if (state === 'closed' || state === 'failed') key = null;
      status.textContent = key ? t(key) : '';
      status.dataset.key = key || '';
      status.classList.toggle('error', key === 'call_media_failed');
    }
    const left = $('call-left');
    if (left) left.hidden = !(state === 'left' && !huizhen.ended);
    const controls = $('call-controls');
    if (controls) controls.hidden = !(joined || state === 'joining');
  }

  function bindCallControls() {
    $('btn-mic')?.addEventListener('click', () => call?.toggleMicrophone());
    $('btn-cam')?.addEventListener('click', () => call?.toggleCamera());
    $('btn-screen')?.addEventListener('click', () => {
      if (!call) return;
      const action = call.screenStream ? call.stopScreenShare() : call.startScreenShare();
      action.catch((err) => localError('screen_share', err));
    });
    $('btn-leave')?.addEventListener('click', () => leaveCall());
    $('btn-instrument')?.addEventListener('click', () => toggleInstrument());
    if (opts.instrument) navigator.mediaDevices?.addEventListener?.('devicechange', () => refreshInstrumentDevices());
    $('btn-rejoin')?.addEventListener('click', () => {
      if (huizhen.consultation && !huizhen.ended) joinConsultation(huizhen.consultation);
    });
    $('btn-consent-change')?.addEventListener('click', () => {
      if (huizhen.consent && huizhen.recording?.active) openConsentDialog();
    });
    $('btn-consent-agree')?.addEventListener('click', () => giveConsent(true));
    $('btn-consent-refuse')?.addEventListener('click', () => giveConsent(false));
    // The question must be answered: Escape does not dismiss it (no answer = not recorded).
    consentDialog.addEventListener('cancel', (event) => event.preventDefault());
  }

  // -------------------------------------------------------------------------------------------
  // Language

  function onLanguageChange() {
    renderError();
    setConnection(huizhen.connection, connectionKey);
    updateLocalName();
    call?.updateTileNames();
    updateCallView();
    renderRecording();
    opts.onLanguageChange?.();
  }

  // -------------------------------------------------------------------------------------------
  // Start

  applyTranslations();
  bindLanguageToggle($('lang-toggle'));
  window.addEventListener('huizhen:langchange', onLanguageChange);
  bindCallControls();
  updateCallView();
  renderRecording();

  const page = {
    huizhen,
    params,
    send,
    setState,
    showView,
    showError,
    clearError,
    localError,
    record,
    joinConsultation,
    cancelJoin,
    leaveCall,
    ensureLocalMedia,
    releaseMedia,
    useLocalStream,
    updateCallView,
    giveConsent,
    get call() {
      return call;
    },
    /** Open the socket (after the page checked its URL parameters). */
    start() {
      if (!window.WebSocket || !window.RTCPeerConnection) {
        setState('error');
        showError({ key: 'error_unsupported' });
        return false;
      }
      if (!params.token) {
        setState('error');
        showError({ key: 'error_no_token' });
        setConnection('failed', 'conn_closed');
        return false;
      }
      connect();
      return true;
    },
    /** Stop for good (e.g. a missing URL parameter found after start). */
    fail(key) {
      fatal = true;
      setState('error');
      showError({ key });
      ws?.close(1000, 'page error');
    },
  };
  huizhen.leaveCall = leaveCall;
  huizhen.toggleInstrument = toggleInstrument;
  huizhen.giveConsent = giveConsent;
  huizhen.joinConsultation = joinConsultation;
  return page;
}

/** The call view: tiles (self view, one tile per remote participant) and large controls. */
function buildCallView(opts) {
  const root = el('div');
  root.append(
    el('p', { id: 'call-status', class: 'call-status', role: 'status', 'aria-live': 'polite' }),
    el(
      'div',
      { id: 'tiles', class: 'tiles', 'aria-label': 'Participants', 'data-i18n-aria-label': 'call_heading' },
      el(
        'section',
        { class: 'tile local', id: 'tile-local' },
        el(
          'div',
          { class: 'tile-media' },
          el('video', { id: 'local-video', autoplay: true, playsinline: true, muted: true }),
          el('video', { id: 'local-screen', class: 'screen', autoplay: true, playsinline: true, muted: true, hidden: true }),
        ),
        el('div', { class: 'tile-name', id: 'local-name' }),
      ),
    ),
    el(
      'div',
      { id: 'call-controls', class: 'controls' },
      el('button', { id: 'btn-mic', type: 'button', class: 'big', disabled: true, 'aria-pressed': 'false' }),
      el('button', { id: 'btn-cam', type: 'button', class: 'big', disabled: true, 'aria-pressed': 'false' }),
      opts.screenShare ? el('button', { id: 'btn-screen', type: 'button', class: 'big', disabled: true, 'aria-pressed': 'false' }) : null,
      el('button', { id: 'btn-consent-change', type: 'button', class: 'big', hidden: true }),
      el('button', { id: 'btn-leave', type: 'button', class: 'big danger', disabled: true }),
    ),
    opts.instrument
      ? el(
          'div',
          { id: 'instrument-box', class: 'instrument-box', hidden: true },
          el('label', { for: 'instrument-device', 'data-i18n': 'instrument_device_label' }),
          el('select', { id: 'instrument-device' }),
          el('button', { id: 'btn-instrument', type: 'button', class: 'big', 'aria-pressed': 'false', disabled: true }),
          el('p', { id: 'instrument-status', class: 'instrument-status', role: 'status', 'aria-live': 'polite' }),
        )
      : null,
    el(
      'div',
      { id: 'call-left', class: 'notice', hidden: true },
      el('p', { 'data-i18n': 'call_left' }),
      el('button', { id: 'btn-rejoin', type: 'button', class: 'big primary', 'data-i18n': 'btn_rejoin' }),
    ),
    opts.callExtras || null,
  );
  // The muted attribute alone does not mute a video created by script.
  for (const v of root.querySelectorAll('video')) v.muted = true;
  return root;
}

/**
 * The recording banner (shown while a recording runs, saying whether you are in it) and the
 * consent dialog (a modal <dialog>: the question, Agree / Refuse).
 */
function buildRecordingUi() {
  const indicator = el(
    'div',
    { id: 'recording-indicator', class: 'recording-indicator', role: 'status', 'aria-live': 'polite', hidden: true },
    el('span', { class: 'rec-dot', 'aria-hidden': 'true' }),
    el('span', { id: 'recording-indicator-text' }),
  );
  const dialog = el(
    'dialog',
    {
      id: 'consent-dialog',
      class: 'consent-dialog',
      'aria-labelledby': 'consent-title',
      'aria-describedby': 'consent-text',
    },
    el('h2', { id: 'consent-title', 'data-i18n': 'consent_title' }),
    el('p', { id: 'consent-text', class: 'lead', 'data-i18n': 'consent_text' }),
    el('p', { id: 'consent-current', class: 'notice', hidden: true }),
    el(
      'div',
      { class: 'answer-buttons' },
      el('button', { id: 'btn-consent-agree', type: 'button', class: 'huge answer', 'data-i18n': 'btn_consent_agree' }),
      el('button', { id: 'btn-consent-refuse', type: 'button', class: 'huge refuse', 'data-i18n': 'btn_consent_refuse' }),
    ),
  );
  return { indicator, dialog };
}
