// huizhen doctor console (/doctor?token=...&clinic=...).
//
// The waiting room of the clinic (`queue`, pushed on every change): invite the next patient or
// a chosen one, move a patient up, cancel an unanswered call, set yourself away. When the
// patient answers (`invitation_status answered` / `consultation_ready`) the console joins the
// call (`join_consultation`); in the call: invite an expert (`invite_expert` → `expert_link`,
// shown as an absolute URL with a copy button), admit companions (`companion_waiting` →
// `admit`), record (`start_recording` / `stop_recording`: one large toggle, and each
// participant's consent from `consent_status`), end the consultation (`end_consultation`).
//
// window.huizhen.state: 'connecting' | 'idle' | 'inviting' | 'joining' | 'in_call' |
// 'left_call' | 'ended' | 'error'.

import { $, createClinicPage, el, formatTime, params } from './clinic.js';
import { t } from './i18n.js';

let queueReceivedAt = 0;
let notice = null; // {key, vars}
let recordingRequest = null; // 'start_recording' | 'stop_recording' sent, not answered yet

const page = createClinicPage({
  role: 'doctor',
  screenShare: true,
  instrument: true,
  callExtras: $('doctor-call-panel'),
  onAuthenticated,
  onMessage,
  onError: () => {
    if (recordingRequest) {
      // A refused start/stop (`invalid_state`: not running, or a recording runs already).
      recordingRequest = null;
      renderRecordingPanel();
    }
    renderQueue();
    return false;
  },
  onRecordingChange: () => {
    // Answered: `recording_status` says the recording runs (start) or not (stop).
    if ((recordingRequest === 'start_recording') === recordingActive()) recordingRequest = null;
    renderRecordingPanel();
  },
  onJoinRefused: () => {
    page.setState('idle');
    page.showView(null);
    renderAll();
    return false;
  },
  onCallJoined: () => {
    setNotice(null);
    renderAll();
  },
  onCallLeft: () => renderAll(),
  onConsultationEnded: () => {
    huizhen.invitation = null;
    huizhen.expertLink = null;
    huizhen.companions = [];
    page.setState('ended');
    page.showView('view-ended');
    hideEndConfirm();
    setNotice(null);
    recordingRequest = null;
    renderAll();
  },
  onSocketLost: () => {
    recordingRequest = null;
    renderAll();
  },
  onLanguageChange: () => renderAll(),
});
const huizhen = page.huizhen;
huizhen.clinic = params.clinic;
huizhen.queue = [];
huizhen.invitation = null; // {invitation, consultation, patient, status}
huizhen.expertLink = null; // {url, expires_at}
huizhen.companions = []; // [{consultation, user, display_name}]
huizhen.invite = invite;
huizhen.inviteExpert = inviteExpert;
huizhen.endConsultation = endConsultation;
huizhen.startRecording = startRecording;
huizhen.stopRecording = stopRecording;

// ---------------------------------------------------------------------------------------------
// Server messages

function onAuthenticated(msg) {
  if (!huizhen.clinic) huizhen.clinic = msg.clinics[0] || null;
  if (!huizhen.clinic) {
    page.fail('error_wrong_role');
    return;
  }
  if (!msg.clinics.includes(huizhen.clinic)) page.showError({ code: 'forbidden' });
  $('clinic-name').textContent = huizhen.clinic;
  if (msg.seats.length) {
    // Refresh (or reconnect) during a consultation: take the seat again.
    page.joinConsultation(msg.seats[0]);
  } else if (['connecting', 'joining', 'in_call'].includes(huizhen.state)) {
    page.setState(huizhen.invitation ? 'inviting' : 'idle');
    page.showView(null);
  }
  renderAll();
}

function onMessage(msg) {
  switch (msg.type) {
    case 'queue':
      if (msg.clinic !== huizhen.clinic) return true;
      huizhen.queue = msg.patients;
      huizhen.doctorStatus = msg.doctor_status;
      queueReceivedAt = Date.now();
      renderAll();
      return true;
    case 'invitation_status':
      return onInvitationStatus(msg);
    case 'consultation_ready':
      page.joinConsultation(msg.consultation);
      renderAll();
      return true;
    case 'companion_waiting':
      if (!huizhen.companions.some((c) => c.user === msg.user && c.consultation === msg.consultation)) {
        huizhen.companions.push({ consultation: msg.consultation, user: msg.user, display_name: msg.display_name });
      }
      renderCallPanel();
      return true;
    case 'expert_link':
      huizhen.expertLink = { url: new URL(msg.path, location.origin).href, expires_at: msg.expires_at, consultation: msg.consultation };
      renderCallPanel();
      return true;
    default:
      return false;
  }
}

function patientName(id) {
  return huizhen.queue.find((p) => p.patient === id)?.display_name || id;
}

function onInvitationStatus(msg) {
  const name = patientName(msg.patient);
  switch (msg.status) {
    case 'sent':
      huizhen.invitation = { ...msg };
      if (!['joining', 'in_call'].includes(huizhen.state)) {
        page.setState('inviting');
        page.showView(null);
      }
      setNotice('invitation_sent', { name });
      break;
    case 'answered':
      huizhen.invitation = null;
      setNotice('invitation_answered', { name });
      page.joinConsultation(msg.consultation);
      break;
    default:
      // declined, expired, cancelled
      if (huizhen.invitation?.invitation === msg.invitation) huizhen.invitation = null;
      if (huizhen.state === 'inviting') page.setState('idle');
      setNotice(`invitation_${msg.status}`, { name });
  }
  renderAll();
  return true;
}

// ---------------------------------------------------------------------------------------------
// Actions

function inCall() {
  return ['joining', 'in_call'].includes(huizhen.state);
}

function invite(patient) {
  page.clearError();
  const msg = { type: 'invite', clinic: huizhen.clinic };
  if (patient) msg.patient = patient;
  page.send(msg);
}

function moveUp(patient) {
  page.clearError();
  page.send({ type: 'move_up', clinic: huizhen.clinic, patient });
}

function cancelInvitation(invitation = huizhen.invitation?.invitation) {
  if (!invitation) return;
  page.clearError();
  page.send({ type: 'cancel_invitation', invitation });
}

function toggleAway() {
  page.clearError();
  const away = huizhen.doctorStatus !== 'away';
  page.send({ type: 'set_away', clinic: huizhen.clinic, away });
}

function inviteExpert() {
  if (!huizhen.consultation) return;
  page.clearError();
  const msg = { type: 'invite_expert', consultation: huizhen.consultation };
  const name = $('expert-name').value.trim();
  if (name) msg.display_name = name;
  page.send(msg);
}

function admit(companion) {
  page.clearError();
  page.send({ type: 'admit', consultation: companion.consultation, user: companion.user });
  huizhen.companions = huizhen.companions.filter((c) => c !== companion);
  renderCallPanel();
}

function endConsultation() {
  if (!huizhen.consultation) return;
  page.clearError();
  hideEndConfirm();
  page.send({ type: 'end_consultation', consultation: huizhen.consultation });
}

function recordingActive() {
  const rec = huizhen.recording;
  return !!rec && rec.active && rec.consultation === huizhen.consultation;
}

function startRecording() {
  if (!huizhen.consultation || recordingActive() || recordingRequest) return false;
  page.clearError();
  if (!page.send({ type: 'start_recording', consultation: huizhen.consultation })) return false;
  recordingRequest = 'start_recording';
  renderRecordingPanel();
  return true;
}

function stopRecording() {
  if (!huizhen.consultation || !recordingActive() || recordingRequest) return false;
  page.clearError();
  if (!page.send({ type: 'stop_recording', consultation: huizhen.consultation })) return false;
  recordingRequest = 'stop_recording';
  renderRecordingPanel();
  return true;
}

function hideEndConfirm() {
  $('end-confirm').hidden = true;
  $('btn-end').hidden = false;
}

async function copyLink() {
  const input = $('expert-link');
  let ok = false;
  try {
    await navigator.clipboard.writeText(input.value);
    ok = true;
  } catch {
    input.select();
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
  }
  const button = $('btn-copy-link');
  button.textContent = ok ? t('copied') : t('btn_copy');
  input.select();
  setTimeout(() => {
    button.textContent = t('btn_copy');
  }, 2000);
}

// ---------------------------------------------------------------------------------------------
// Rendering

function setNotice(key, vars = {}) {
  notice = key ? { key, vars } : null;
  renderNotice();
}

function renderNotice() {
  const node = $('invite-notice');
  node.hidden = !notice && !inCall();
  node.textContent = notice ? t(notice.key, notice.vars) : inCall() ? t('doctor_in_call_note') : '';
}

function renderAll() {
  renderStatus();
  renderNotice();
  renderQueue();
  renderCallPanel();
  renderRecordingPanel();
}

function renderRecordingPanel() {
  const active = recordingActive();
  const rec = huizhen.recording;
  const button = $('btn-recording');
  button.textContent = active ? t('btn_stop_recording') : t('btn_start_recording');
  button.setAttribute('aria-pressed', String(active));
  button.dataset.recording = active ? 'on' : 'off';
  button.disabled = huizhen.state !== 'in_call' || huizhen.connection !== 'authenticated' || !!recordingRequest;
  const state = $('recording-state');
  const stopped = !active && rec && rec.consultation === huizhen.consultation;
  state.textContent = t(active ? 'recording_on' : stopped ? 'recording_stopped' : 'recording_off');
  state.dataset.state = active ? 'on' : stopped ? 'stopped' : 'off';
  const list = $('consent-list');
  const consents = huizhen.consentsRecording && rec && huizhen.consentsRecording === rec.recording ? huizhen.consents : [];
  list.hidden = !active || consents.length === 0;
  list.replaceChildren(
    ...consents.map((c) =>
      el(
        'li',
        { dataset: { user: c.user, decision: c.decision } },
        el('span', { class: 'consent-name' }, c.user === huizhen.user ? `${c.display_name} ${t('you_suffix')}` : c.display_name),
        el('span', { class: 'consent-badge', dataset: { decision: c.decision } }, t(`consent.${c.decision}`)),
      ),
    ),
  );
}

function renderStatus() {
  const status = huizhen.doctorStatus;
  const node = $('my-status');
  node.textContent = status ? t(`doctor.${status}`) : '–';
  node.dataset.status = status || '';
  const away = $('btn-away');
  away.textContent = status === 'away' ? t('btn_set_available') : t('btn_set_away');
  away.disabled = huizhen.connection !== 'authenticated';
}

function renderQueue() {
  const body = $('queue-body');
  const connected = huizhen.connection === 'authenticated';
  const busy = inCall() || !!huizhen.invitation;
  const elapsed = queueReceivedAt ? Date.now() - queueReceivedAt : 0;
  const rows = huizhen.queue.map((p, i) => {
    const flags = [];
    if (p.ringing) flags.push(el('span', { class: 'flag ringing' }, t('flag_ringing')));
    if (p.disconnected) flags.push(el('span', { class: 'flag disconnected' }, t('flag_disconnected')));
    if (!flags.length) flags.push(el('span', { class: 'flag waiting' }, t('flag_waiting')));
    // The invitation id comes from `invitation_status sent`; a queue row may carry it too
    // (optional field), which lets a refreshed console cancel a call it did not see start.
    const invitation = p.invitation || (huizhen.invitation?.patient === p.patient ? huizhen.invitation.invitation : null);
    const ringingThis = p.ringing && !!invitation;
    const actions = [
      el('button', { type: 'button', class: 'primary', 'data-action': 'invite', disabled: !connected || busy || p.ringing, onclick: () => invite(p.patient) }, t('btn_invite')),
      el('button', { type: 'button', 'data-action': 'move-up', disabled: !connected || i === 0, onclick: () => moveUp(p.patient) }, t('btn_move_up')),
      ringingThis
        ? el('button', { type: 'button', 'data-action': 'cancel', disabled: !connected, onclick: () => cancelInvitation(invitation) }, t('btn_cancel_invitation'))
        : null,
    ];
    return el(
      'tr',
      { dataset: { patient: p.patient, ringing: String(p.ringing), disconnected: String(p.disconnected) } },
      el('td', { class: 'num' }, String(i + 1)),
      el('td', { class: 'name' }, p.display_name),
      el('td', {}, formatTime(p.slot_start_ms)),
      el('td', {}, t('waited_minutes', { n: Math.floor((p.waited_ms + elapsed) / 60000) })),
      el('td', {}, flags),
      el('td', { class: 'actions' }, actions),
    );
  });
  body.replaceChildren(...rows);
  $('queue-empty').hidden = huizhen.queue.length > 0;
  $('queue-table').hidden = huizhen.queue.length === 0;
  $('btn-invite-next').disabled = !connected || busy || !huizhen.queue.some((p) => !p.ringing);
  $('btn-cancel-invitation').hidden = !huizhen.invitation;
}

function renderCallPanel() {
  const joined = huizhen.state === 'in_call';
  $('btn-invite-expert').disabled = !joined;
  $('btn-end').disabled = !joined;
  const link = huizhen.expertLink;
  const box = $('expert-link-box');
  box.hidden = !link || link.consultation !== huizhen.consultation;
  if (link) {
    $('expert-link').value = link.url;
    $('expert-link-expires').textContent = t('expert_link_expires', { time: formatTime(link.expires_at * 1000) });
  }
  const companions = huizhen.companions.filter((c) => c.consultation === huizhen.consultation);
  $('companions-box').hidden = companions.length === 0;
  $('companions').replaceChildren(
    ...companions.map((c) =>
      el(
        'li',
        { dataset: { user: c.user } },
        el('span', {}, t('companion_request', { name: c.display_name })),
        el('button', { type: 'button', class: 'big primary', 'data-action': 'admit', onclick: () => admit(c) }, t('btn_admit')),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------------

$('btn-invite-next').addEventListener('click', () => invite(null));
$('btn-cancel-invitation').addEventListener('click', () => cancelInvitation());
$('btn-away').addEventListener('click', toggleAway);
$('btn-invite-expert').addEventListener('click', inviteExpert);
$('btn-copy-link').addEventListener('click', copyLink);
$('btn-end').addEventListener('click', () => {
  $('end-confirm').hidden = false;
  $('btn-end').hidden = true;
  $('btn-end-yes').focus();
});
$('btn-end-yes').addEventListener('click', endConsultation);
$('btn-recording').addEventListener('click', () => (recordingActive() ? stopRecording() : startRecording()));
$('btn-end-cancel').addEventListener('click', hideEndConfirm);
// Waited times move on between queue updates.
setInterval(renderQueue, 30000);
renderAll();
page.start();
