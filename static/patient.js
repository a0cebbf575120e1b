// huizhen patient page (/patient?token=...&appointment=...).
//
// Device check (camera preview, microphone level, speaker tone, connection) → `check_in` →
// waiting room (place in line, estimated wait, doctor status) → `ringing`: ring tone,
// notification, Answer / Decline → `accept_invitation` → `consultation_ready` →
// `join_consultation` → call → `consultation_ended`: thank-you screen.
//
// After a refresh: seats in `authenticated` → straight back into the call; a `waiting` view
// pushed on connect (the place is kept for the grace period) → `check_in` again, same place.
//
// window.huizhen.state: 'connecting' | 'device_check' | 'waiting' | 'ringing' | 'answering' |
// 'joining' | 'in_call' | 'left_call' | 'left_queue' | 'ended' | 'error'.

import { getLocalMedia } from './call.js';
import { $, createClinicPage, params } from './clinic.js';
import { playTestTone, startLevelMeter, startRinging, unlockAudio } from './audio.js';
import { t } from './i18n.js';

let checkedIn = false;
let ringing = null; // the `ringing` message being answered
let stopRingTone = null;
let ringExpiry = null;
let noticeKey = null;
let lastCommand = null;
let preview = null; // {stream, stopMeter, cancelled}
const PAGE_TITLE = document.title;

const page = createClinicPage({
  role: 'patient',
  instrument: true,
  onAuthenticated,
  onMessage,
  onError,
  onJoinRefused,
  onConsultationEnded: () => {
    stopRinging();
    page.setState('ended');
    page.showView('view-thanks');
  },
  onSocketLost: () => {
    if (stopRingTone) {
      stopRingTone();
      stopRingTone = null;
    }
    renderCheck();
  },
  onLanguageChange: render,
});
const huizhen = page.huizhen;
huizhen.micLevel = 0;
huizhen.ringing = null;
huizhen.enterWaitingRoom = enterWaitingRoom;
huizhen.answer = answer;
huizhen.decline = decline;

// ---------------------------------------------------------------------------------------------
// Server messages

function onAuthenticated(msg, { reconnect }) {
  if (msg.seats.length) {
    // Refresh (or reconnect) during a call: take the seat again.
    stopDeviceCheck(true);
    page.joinConsultation(msg.seats[0]);
    return;
  }
  if (!params.appointment) {
    page.fail('error_no_appointment');
    return;
  }
  const s = huizhen.state;
  if (checkedIn && ['waiting', 'ringing', 'answering', 'joining', 'in_call'].includes(s)) {
    // Back after a dropped connection: the place was kept; checking in again resumes it (and
    // rings again if the doctor is calling).
    sendCheckIn();
    return;
  }
  if (s === 'connecting' || (s === 'device_check' && !reconnect)) startDeviceCheck();
  renderCheck();
}

function onMessage(msg) {
  switch (msg.type) {
    case 'waiting':
      return onWaiting(msg);
    case 'ringing':
      return onRinging(msg);
    case 'consultation_ready':
      stopRinging();
      ringing = null;
      huizhen.ringing = null;
      page.joinConsultation(msg.consultation);
      return true;
    default:
      return false;
  }
}

function onWaiting(msg) {
  huizhen.position = msg.position ?? null;
  huizhen.estimatedWaitMs = msg.estimated_wait_ms;
  huizhen.doctorStatus = msg.doctor_status;
  const s = huizhen.state;
  if (!checkedIn && (s === 'device_check' || s === 'connecting')) {
    // Pushed right after `authenticated`: we already hold a place (page refreshed while
    // waiting). Check in again to keep it.
    sendCheckIn();
  } else if (s === 'ringing' && msg.position != null) {
    // Back in line without having answered: the invitation lapsed or was withdrawn.
    stopRinging();
    const expired = ringing && Date.now() >= ringing.expires_at_ms - 1000;
    ringing = null;
    huizhen.ringing = null;
    setNotice(expired ? 'ring_missed' : 'ring_cancelled');
    toWaiting();
  }
  render();
  return true;
}

function onRinging(msg) {
  if (['joining', 'in_call', 'ended'].includes(huizhen.state)) return true;
  ringing = msg;
  huizhen.ringing = msg;
  checkedIn = true;
  setNotice(null);
  page.setState('ringing');
  page.showView('view-ringing');
  if (!stopRingTone) stopRingTone = startRinging();
  document.title = `☎ ${t('ringing_heading')}`;
  notify();
  clearTimeout(ringExpiry);
  // A fallback only: the server puts the patient back in line when the invitation lapses (a
  // `waiting` with a position). Bounded, as the device's clock may be off.
  const left = Math.min(Math.max(msg.expires_at_ms - Date.now(), 15000), 600000);
  ringExpiry = setTimeout(() => {
    if (huizhen.state === 'ringing' && ringing === msg) {
      stopRinging();
      ringing = null;
      huizhen.ringing = null;
      setNotice('ring_missed');
      toWaiting();
    }
  }, left + 5000);
  $('btn-answer').focus();
  return true;
}

function onError(code, msg) {
  const command = lastCommand;
  lastCommand = null;
  if (command === 'check_in') {
    if (code === 'invalid_state') {
      // The appointment's consultation already took place.
      page.setState('ended');
      page.showView('view-thanks');
      return true;
    }
    checkedIn = false;
    page.showError({ code, detail: msg.message });
    startDeviceCheck();
    return true;
  }
  if (command === 'accept_invitation' || command === 'decline_invitation') {
    // The invitation lapsed meanwhile: back in line.
    stopRinging();
    ringing = null;
    huizhen.ringing = null;
    setNotice('ring_missed');
    toWaiting();
    return true;
  }
  return false;
}

function onJoinRefused(code) {
  if (code === 'invalid_state') {
    page.setState('ended');
    page.showView('view-thanks');
    return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Actions

function sendCheckIn() {
  checkedIn = true;
  lastCommand = 'check_in';
  page.send({ type: 'check_in', appointment: params.appointment });
  stopDeviceCheck(false);
  toWaiting();
}

function toWaiting() {
  page.setState('waiting');
  page.showView('view-waiting');
  render();
}

function enterWaitingRoom() {
  unlockAudio();
  page.clearError();
  if (window.Notification && Notification.permission === 'default') {
    // Asked on the button press (a user gesture); not awaited.
    try {
      Notification.requestPermission().catch(() => {});
    } catch {
      // old callback-style API: ignore
    }
  }
  setNotice(null);
  sendCheckIn();
}

function answer() {
  if (!ringing) return;
  unlockAudio();
  stopRinging();
  lastCommand = 'accept_invitation';
  page.send({ type: 'accept_invitation', invitation: ringing.invitation });
  page.setState('answering');
}

function decline() {
  if (!ringing) return;
  stopRinging();
  lastCommand = 'decline_invitation';
  page.send({ type: 'decline_invitation', invitation: ringing.invitation });
  ringing = null;
  huizhen.ringing = null;
  setNotice('ring_declined');
  toWaiting();
}

function leaveQueue() {
  lastCommand = 'leave_queue';
  page.send({ type: 'leave_queue' });
  checkedIn = false;
  page.setState('left_queue');
  page.showView('view-left-queue');
}

function stopRinging() {
  clearTimeout(ringExpiry);
  document.title = PAGE_TITLE;
  if (stopRingTone) {
    stopRingTone();
    stopRingTone = null;
  }
}

function notify() {
  try {
    if (window.Notification && Notification.permission === 'granted') {
      const n = new Notification(t('notification_title'), {
        body: t('notification_body'),
        tag: 'huizhen-ringing',
        requireInteraction: true,
      });
      n.onclick = () => {
        window.focus();
        n.close();
      };
    }
  } catch {
    // Notifications from a page need a service worker on some platforms: the ring is enough.
  }
}

// ---------------------------------------------------------------------------------------------
// Device check

async function startDeviceCheck() {
  page.setState('device_check');
  page.showView('view-check');
  renderCheck();
  if (preview) return;
  const current = { stream: null, stopMeter: () => {}, cancelled: false, camera: 'wait', mic: 'wait' };
  preview = current;
  renderCheck();
  const stream = await getLocalMedia((text) => page.record('local', { type: 'media_log', text }));
  if (current.cancelled) {
    for (const tr of stream?.getTracks() ?? []) tr.stop();
    return;
  }
  current.stream = stream;
  current.camera = stream?.getVideoTracks().length ? 'ok' : 'fail';
  current.mic = stream?.getAudioTracks().length ? 'ok' : 'fail';
  const video = $('preview');
  video.srcObject = stream;
  video.muted = true;
  video.hidden = current.camera !== 'ok';
  current.stopMeter = startLevelMeter(stream, $('mic-level'), (level) => {
    huizhen.micLevel = Math.max(huizhen.micLevel, level);
  });
  renderCheck();
}

/** Leave the device check; with `keep`, hand the camera to the call instead of stopping it. */
function stopDeviceCheck(keep) {
  const p = preview;
  preview = null;
  if (!p) return;
  p.cancelled = true;
  p.stopMeter();
  $('preview').srcObject = null;
  if (keep && p.stream) page.useLocalStream(p.stream);
  else for (const tr of p.stream?.getTracks() ?? []) tr.stop();
}

function renderCheck() {
  const p = preview;
  const cam = $('camera-result');
  cam.textContent = t(!p || p.camera === 'wait' ? 'check_camera_wait' : p.camera === 'ok' ? 'check_camera_ok' : 'check_camera_fail');
  cam.dataset.result = p?.camera || 'wait';
  const mic = $('mic-result');
  mic.textContent = p && p.mic === 'fail' ? t('check_mic_fail') : t('check_mic_hint');
  mic.dataset.result = p?.mic || 'wait';
  const authed = huizhen.connection === 'authenticated';
  const conn = $('connection-result');
  conn.textContent = authed ? t('check_connection_ok') : t(huizhen.connection === 'reconnecting' ? 'conn_reconnecting' : 'conn_connecting');
  conn.dataset.result = authed ? 'ok' : 'wait';
  $('btn-enter').disabled = !authed || !params.appointment;
}

// ---------------------------------------------------------------------------------------------
// Rendering

function setNotice(key) {
  noticeKey = key;
  render();
}

function render() {
  const pos = huizhen.position;
  $('position').textContent = pos != null ? String(pos) : huizhen.state === 'ringing' ? t('position_called') : '–';
  $('position').dataset.position = pos != null ? String(pos) : '';
  const ms = huizhen.estimatedWaitMs;
  $('wait').textContent = ms == null ? '–' : ms < 60000 ? t('wait_soon') : t('wait_minutes', { n: Math.ceil(ms / 60000) });
  $('doctor-status').textContent = huizhen.doctorStatus ? t(`doctor.${huizhen.doctorStatus}`) : '–';
  $('doctor-status').dataset.status = huizhen.doctorStatus || '';
  const notice = $('waiting-notice');
  notice.hidden = !noticeKey;
  notice.textContent = noticeKey ? t(noticeKey) : '';
  if (huizhen.state === 'device_check') renderCheck();
}

// ---------------------------------------------------------------------------------------------

$('btn-enter').addEventListener('click', enterWaitingRoom);
$('btn-speaker').addEventListener('click', () => {
  huizhen.speakerTested = playTestTone();
});
$('btn-answer').addEventListener('click', answer);
$('btn-decline').addEventListener('click', decline);
$('btn-leave-queue').addEventListener('click', leaveQueue);
$('btn-back-to-queue').addEventListener('click', enterWaitingRoom);
render();
page.start();
