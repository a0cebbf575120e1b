// huizhen clinic pages: every visible string, in English and Simplified Chinese.
//
// Elements carry `data-i18n="key"` (text), `data-i18n-placeholder`, `data-i18n-aria-label` or
// `data-i18n-title`; `applyTranslations()` fills them in. Scripts use `t(key, vars)` for text
// they build and re-render on the `huizhen:langchange` event. The language defaults to the
// browser's (`navigator.language`) and a choice made with the toggle is kept in localStorage.
//
// Plain ES module, no build step.

const STORAGE_KEY = 'huizhen.lang';

export const LANGUAGES = ['en', 'zh'];

const en = {
  app_name: 'huizhen online clinic',
  lang_toggle: '中文',
  lang_toggle_label: 'Switch language to Chinese',
  you: 'You',
  you_suffix: '(you)',
  unknown_name: 'Guest',

  // connection
  conn_connecting: 'Connecting to the clinic…',
  conn_connected: 'Connected',
  conn_reconnecting: 'Connection lost. Reconnecting…',
  conn_closed: 'Not connected',
  conn_failed: 'Cannot connect',

  // call
  call_heading: 'Video consultation',
  call_joining: 'Joining the video call…',
  call_connected: 'You are in the video call.',
  call_media_failed: 'The video connection failed. Please check your network.',
  btn_mute: 'Mute microphone',
  btn_unmute: 'Unmute microphone',
  btn_camera_off: 'Turn camera off',
  btn_camera_on: 'Turn camera on',
  btn_share: 'Share screen',
  btn_stop_share: 'Stop sharing',
  btn_leave_call: 'Leave call',
  btn_rejoin: 'Rejoin the call',
  call_left: 'You left the video call.',
  call_removed: 'The video call was interrupted. Trying to rejoin…',
  waiting_for_others: 'Waiting for the others to join…',
  video_paused_weak: 'audio only: weak connection',
  btn_pin: 'Show large',
  btn_unpin: 'Stop showing large',
  instrument_badge: 'Stethoscope sound',
  btn_instrument_add: 'Add stethoscope',
  btn_instrument_remove: 'Remove stethoscope',
  instrument_device_label: 'Stethoscope input',
  instrument_on: 'Stethoscope sound is being sent.',
  instrument_failed: 'The stethoscope could not be started. Please check that it is plugged in.',

  // recording (every page)
  consent_title: 'This consultation will be recorded. Do you agree?',
  consent_text: 'Only the people who agree are recorded. If you refuse, the call goes on as before and your picture and voice are not recorded. You can change your answer at any time during the call.',
  consent_current_granted: 'Your answer so far: you agreed to be recorded.',
  consent_current_refused: 'Your answer so far: you refused to be recorded.',
  btn_consent_agree: 'Agree',
  btn_consent_refuse: 'Refuse',
  btn_consent_change: 'Change my recording answer',
  rec_recorded: 'Recording — you are being recorded',
  rec_not_recorded: 'Recording — you are not being recorded',
  rec_pending: 'Recording — you are not recorded unless you agree',
  consent_dialog_label: 'Recording consent',

  // errors
  error_heading: 'Something went wrong',
  error_no_token: 'This link is incomplete: the access code is missing. Please open the full link you received again.',
  error_no_appointment: 'This link is incomplete: the appointment is missing. Please open the full link you received again.',
  error_no_consultation: 'This link is incomplete: the consultation is missing. Please open the full link you received again.',
  error_wrong_role: 'This link is for another page. Please use the link you received for this visit.',
  error_media: 'Your camera or microphone could not be started. Others may not see or hear you.',
  error_unsupported: 'This browser cannot make video calls. Please use a recent Chrome, Edge, Firefox or Safari.',
  'err.bad_json': 'The app sent a message the server did not understand. Please reload the page.',
  'err.unknown_type': 'The app sent a message the server did not understand. Please reload the page.',
  'err.invalid_message': 'The app sent an incomplete request. Please reload the page.',
  'err.unsupported_version': 'This page is out of date. Please reload it.',
  'err.not_joined': 'You are not in the call yet.',
  'err.already_joined': 'You are already connected in another window or tab.',
  'err.invalid_sdp': 'The video connection could not be set up.',
  'err.invalid_candidate': 'A network address could not be used.',
  'err.no_pending_offer': 'The video connection got out of step; it will recover by itself.',
  'err.room_full': 'The call is full.',
  'err.unavailable': 'The service is busy or restarting. Please try again in a minute.',
  'err.internal': 'A problem on the server. Please try again; if it persists, call the clinic.',
  'err.not_authenticated': 'Your access could not be confirmed. Please reload the page.',
  'err.invalid_token': 'This link is not valid. Please use the link you received from the hospital.',
  'err.expired_token': 'This link has expired. Please ask the hospital for a new one.',
  'err.revoked_token': 'This link was withdrawn by the hospital.',
  'err.too_many_refusals': 'The connection was closed after repeated errors. Please reload the page.',
  'err.session_replaced': 'This visit was opened in another window or device; this page is no longer connected.',
  'err.session_token_expired': 'Your session has expired. Please open the link from the hospital again.',
  'err.session_revoked': 'Your access was withdrawn by the hospital.',
  'err.forbidden': 'You are not allowed to do this with this link.',
  'err.not_found': 'The appointment or consultation was not found.',
  'err.too_early': 'It is too early to check in. Please come back closer to your appointment time.',
  'err.invalid_state': 'This is not possible right now.',
  'err.consultation_full': 'The consultation is full: no more participants can join.',
  'err.link_expired': 'This invitation link is no longer valid: the consultation has ended.',
  'err.unknown': 'Something went wrong ({code}).',

  // patient
  patient_title: 'Video visit',
  check_heading: 'Before you enter: a quick check',
  check_intro: 'We check your camera, microphone, speaker and connection. This takes a moment.',
  check_camera: 'Camera',
  check_camera_wait: 'Starting the camera…',
  check_camera_ok: 'You should see yourself.',
  check_camera_fail: 'No camera found. You can still join; the doctor will not see you.',
  check_mic: 'Microphone',
  check_mic_hint: 'Say something: the bar should move.',
  check_mic_fail: 'No microphone found. The doctor will not hear you.',
  check_speaker: 'Speaker',
  check_speaker_hint: 'Press the button: you should hear a tone.',
  btn_test_speaker: 'Play test sound',
  check_connection: 'Connection',
  check_connection_ok: 'Connected to the clinic.',
  btn_enter_waiting: 'Enter the waiting room',
  waiting_heading: 'You are in the waiting room',
  waiting_intro: 'Please keep this page open. The doctor will call you here.',
  position_label: 'Your place in line',
  position_called: 'You are being called',
  wait_label: 'Estimated wait',
  wait_minutes: 'about {n} min',
  wait_soon: 'very soon',
  doctor_label: 'Doctor',
  'doctor.online': 'Available',
  'doctor.in_consultation': 'With another patient',
  'doctor.away': 'Away for a moment',
  btn_leave_queue: 'Leave the waiting room',
  left_queue: 'You left the waiting room. You can close this page.',
  btn_back_to_queue: 'Enter the waiting room again',
  ringing_heading: 'The doctor is calling you',
  ringing_intro: 'Press the green button to start the video call.',
  btn_answer: 'Answer',
  btn_decline: 'Decline',
  ring_missed: 'The call was missed. You keep your place in line; the doctor will call again.',
  ring_cancelled: 'The doctor cancelled the call. You keep your place in line.',
  ring_declined: 'You declined the call. You keep your place in line.',
  notification_title: 'The doctor is calling you',
  notification_body: 'Open the huizhen page to answer.',
  thanks_heading: 'Thank you',
  thanks_text: 'Your consultation has ended. You can close this page.',

  // doctor
  doctor_title: 'Clinic console',
  queue_heading: 'Waiting room',
  queue_empty: 'Nobody is waiting.',
  col_position: '#',
  col_name: 'Patient',
  col_slot: 'Appointment',
  col_waited: 'Waited',
  col_status: 'Status',
  col_actions: 'Actions',
  waited_minutes: '{n} min',
  flag_waiting: 'Waiting',
  flag_ringing: 'Calling…',
  flag_disconnected: 'Disconnected',
  btn_invite_next: 'Invite next patient',
  btn_invite: 'Invite',
  btn_move_up: 'Move up',
  btn_cancel_invitation: 'Cancel call',
  my_status_label: 'Your status:',
  btn_set_away: 'Set me away',
  btn_set_available: 'I am available',
  invitation_sent: 'Calling {name}…',
  invitation_answered: '{name} answered. Joining the call…',
  invitation_declined: '{name} declined the call.',
  invitation_expired: '{name} did not answer.',
  invitation_cancelled: 'Call cancelled.',
  btn_invite_expert: 'Invite an expert',
  expert_name_label: 'Expert’s name (optional)',
  expert_link_label: 'Send this one-time link to the expert:',
  expert_link_expires: 'Valid until {time}, or until the consultation ends.',
  btn_copy: 'Copy link',
  copied: 'Copied',
  companions_heading: 'Waiting to join',
  companion_request: '{name} asks to join',
  btn_admit: 'Admit',
  btn_end: 'End consultation',
  end_confirm: 'End the consultation for everyone?',
  btn_end_yes: 'Yes, end it',
  btn_cancel: 'Cancel',
  doctor_ended: 'The consultation has ended.',
  doctor_in_call_note: 'You are in a consultation. Invite the next patient after ending it.',
  btn_start_recording: 'Start recording',
  btn_stop_recording: 'Stop recording',
  recording_heading: 'Recording',
  recording_off: 'Not recording.',
  recording_on: 'Recording. Only those who agreed are recorded.',
  recording_stopped: 'Recording stopped and saved.',
  'consent.pending': 'Waiting for an answer — not recorded',
  'consent.granted': 'Agreed — recorded',
  'consent.refused': 'Refused — not recorded',

  // expert
  expert_title: 'Expert consultation',
  expert_intro: 'You were invited to join a consultation as an expert.',
  expert_ended: 'The consultation has ended. Thank you for your help.',

  // companion
  companion_title: 'Accompany a visit',
  companion_not_started: 'The consultation has not started yet. Please keep this page open: you will be asked in when it starts.',
  companion_waiting: 'Waiting for the doctor to let you in…',
  companion_ended: 'The consultation has ended. Thank you.',

  // watch page (WHEP player, /watch/<room>)
  watch_title: 'Live broadcast',
  watch_consultation: 'consultation',
  watch_video_label: 'Broadcast video',
  watch_starting: 'Starting…',
  watch_connecting: 'Connecting to the broadcast…',
  watch_waiting: 'The broadcast has not started yet. Trying again in {seconds} s…',
  watch_playing: 'Live. The sound is off until you turn it on.',
  watch_playing_sound: 'Live.',
  watch_stalled: 'The broadcast stopped. Trying again in {seconds} s…',
  watch_retry_network: 'The connection failed. Trying again in {seconds} s…',
  watch_retry_server: 'The server could not start the stream ({status}). Trying again in {seconds} s…',
  watch_gave_up: 'Could not connect to the broadcast.',
  watch_not_found: 'There is no broadcast at this address.',
  watch_forbidden: 'This link is not valid (any more).',
  watch_unsupported: 'This browser cannot play the broadcast.',
  watch_ended: 'You left the broadcast.',
  watch_sound_on: 'Tap for sound',
  watch_retry: 'Try again',
};

const zh = {
  app_name: '会诊网络门诊',
  lang_toggle: 'English',
  lang_toggle_label: '切换为英文',
  you: '我',
  you_suffix: '（我）',
  unknown_name: '访客',

  conn_connecting: '正在连接诊室…',
  conn_connected: '已连接',
  conn_reconnecting: '连接中断，正在重新连接…',
  conn_closed: '未连接',
  conn_failed: '无法连接',

  call_heading: '视频问诊',
  call_joining: '正在进入视频通话…',
  call_connected: '您已进入视频通话。',
  call_media_failed: '视频连接失败，请检查网络。',
  btn_mute: '关闭麦克风',
  btn_unmute: '打开麦克风',
  btn_camera_off: '关闭摄像头',
  btn_camera_on: '打开摄像头',
  btn_share: '共享屏幕',
  btn_stop_share: '停止共享',
  btn_leave_call: '离开通话',
  btn_rejoin: '重新进入通话',
  call_left: '您已离开视频通话。',
  call_removed: '视频通话中断，正在尝试重新进入…',
  waiting_for_others: '正在等待其他人加入…',
  video_paused_weak: '仅音频：网络较弱',
  btn_pin: '放大显示',
  btn_unpin: '取消放大',
  instrument_badge: '听诊器声音',
  btn_instrument_add: '添加听诊器',
  btn_instrument_remove: '移除听诊器',
  instrument_device_label: '听诊器输入设备',
  instrument_on: '正在发送听诊器声音。',
  instrument_failed: '无法启动听诊器，请检查是否已连接。',

  consent_title: '本次问诊将被录制。您是否同意？',
  consent_text: '只录制同意者的画面和声音。如果您拒绝，通话照常进行，您的画面和声音不会被录制。通话期间您可以随时更改您的选择。',
  consent_current_granted: '您目前的选择：同意录制。',
  consent_current_refused: '您目前的选择：拒绝录制。',
  btn_consent_agree: '同意',
  btn_consent_refuse: '拒绝',
  btn_consent_change: '更改录制选择',
  rec_recorded: '正在录制 — 您正在被录制',
  rec_not_recorded: '正在录制 — 您未被录制',
  rec_pending: '正在录制 — 您同意之前不会录制您',
  consent_dialog_label: '录制同意',

  error_heading: '出现问题',
  error_no_token: '链接不完整，缺少访问码。请重新打开您收到的完整链接。',
  error_no_appointment: '链接不完整，缺少预约信息。请重新打开您收到的完整链接。',
  error_no_consultation: '链接不完整，缺少会诊信息。请重新打开您收到的完整链接。',
  error_wrong_role: '此链接不适用于本页面。请使用您收到的本次就诊链接。',
  error_media: '无法启动摄像头或麦克风，对方可能看不到或听不到您。',
  error_unsupported: '此浏览器不支持视频通话。请使用新版 Chrome、Edge、Firefox 或 Safari。',
  'err.bad_json': '页面发送了服务器无法识别的消息，请刷新页面。',
  'err.unknown_type': '页面发送了服务器无法识别的消息，请刷新页面。',
  'err.invalid_message': '请求不完整，请刷新页面。',
  'err.unsupported_version': '页面版本过旧，请刷新页面。',
  'err.not_joined': '您还没有进入通话。',
  'err.already_joined': '您已在其他窗口或标签页中连接。',
  'err.invalid_sdp': '无法建立视频连接。',
  'err.invalid_candidate': '无法使用某个网络地址。',
  'err.no_pending_offer': '视频连接暂时不同步，将自动恢复。',
  'err.room_full': '通话人数已满。',
  'err.unavailable': '服务繁忙或正在重启，请一分钟后再试。',
  'err.internal': '服务器出现问题，请重试；如仍有问题，请致电门诊。',
  'err.not_authenticated': '无法确认您的身份，请刷新页面。',
  'err.invalid_token': '此链接无效，请使用医院发给您的链接。',
  'err.expired_token': '此链接已过期，请向医院索取新链接。',
  'err.revoked_token': '此链接已被医院撤销。',
  'err.too_many_refusals': '连接因多次错误已关闭，请刷新页面。',
  'err.session_replaced': '此就诊已在其他窗口或设备上打开，本页面已断开。',
  'err.session_token_expired': '您的会话已过期，请重新打开医院提供的链接。',
  'err.session_revoked': '您的访问权限已被医院撤销。',
  'err.forbidden': '此链接无权进行该操作。',
  'err.not_found': '找不到该预约或会诊。',
  'err.too_early': '现在签到还太早，请在接近预约时间时再来。',
  'err.invalid_state': '当前无法进行此操作。',
  'err.consultation_full': '会诊人数已满，无法再加入。',
  'err.link_expired': '此邀请链接已失效：会诊已结束。',
  'err.unknown': '出现问题（{code}）。',

  patient_title: '视频就诊',
  check_heading: '进入前：快速检查设备',
  check_intro: '我们将检查您的摄像头、麦克风、扬声器和网络连接，请稍候。',
  check_camera: '摄像头',
  check_camera_wait: '正在启动摄像头…',
  check_camera_ok: '您应该能看到自己的画面。',
  check_camera_fail: '未找到摄像头。您仍可进入，但医生看不到您。',
  check_mic: '麦克风',
  check_mic_hint: '请说话，下面的绿色条会跳动。',
  check_mic_fail: '未找到麦克风，医生将听不到您。',
  check_speaker: '扬声器',
  check_speaker_hint: '请按按钮，您应该能听到提示音。',
  btn_test_speaker: '播放测试声音',
  check_connection: '网络连接',
  check_connection_ok: '已连接到诊室。',
  btn_enter_waiting: '进入候诊室',
  waiting_heading: '您已进入候诊室',
  waiting_intro: '请保持此页面打开，医生会在这里呼叫您。',
  position_label: '您的排队序号',
  position_called: '正在呼叫您',
  wait_label: '预计等候',
  wait_minutes: '约 {n} 分钟',
  wait_soon: '马上',
  doctor_label: '医生状态',
  'doctor.online': '在线',
  'doctor.in_consultation': '正在接诊',
  'doctor.away': '暂时离开',
  btn_leave_queue: '离开候诊室',
  left_queue: '您已离开候诊室，可以关闭此页面。',
  btn_back_to_queue: '重新进入候诊室',
  ringing_heading: '医生正在呼叫您',
  ringing_intro: '请按绿色按钮开始视频通话。',
  btn_answer: '接听',
  btn_decline: '拒绝',
  ring_missed: '您错过了呼叫。您的排队位置保留，医生会再次呼叫您。',
  ring_cancelled: '医生取消了呼叫。您的排队位置保留。',
  ring_declined: '您拒绝了呼叫。您的排队位置保留。',
  notification_title: '医生正在呼叫您',
  notification_body: '请打开会诊页面接听。',
  thanks_heading: '谢谢',
  thanks_text: '本次问诊已结束，您可以关闭此页面。',

  doctor_title: '诊室工作台',
  queue_heading: '候诊队列',
  queue_empty: '暂无候诊患者。',
  col_position: '序号',
  col_name: '患者',
  col_slot: '预约时间',
  col_waited: '已等候',
  col_status: '状态',
  col_actions: '操作',
  waited_minutes: '{n} 分钟',
  flag_waiting: '等候中',
  flag_ringing: '呼叫中…',
  flag_disconnected: '已断线',
  btn_invite_next: '呼叫下一位',
  btn_invite: '呼叫',
  btn_move_up: '提前',
  btn_cancel_invitation: '取消呼叫',
  my_status_label: '您的状态：',
  btn_set_away: '暂时离开',
  btn_set_available: '恢复接诊',
  invitation_sent: '正在呼叫 {name}…',
  invitation_answered: '{name} 已接听，正在进入通话…',
  invitation_declined: '{name} 拒绝了呼叫。',
  invitation_expired: '{name} 未接听。',
  invitation_cancelled: '已取消呼叫。',
  btn_invite_expert: '邀请专家',
  expert_name_label: '专家姓名（可选）',
  expert_link_label: '请将此一次性链接发给专家：',
  expert_link_expires: '有效期至 {time}，会诊结束后失效。',
  btn_copy: '复制链接',
  copied: '已复制',
  companions_heading: '等待加入',
  companion_request: '{name} 请求加入',
  btn_admit: '允许加入',
  btn_end: '结束问诊',
  end_confirm: '确定为所有人结束本次问诊？',
  btn_end_yes: '确定结束',
  btn_cancel: '取消',
  doctor_ended: '本次问诊已结束。',
  doctor_in_call_note: '您正在问诊中，结束后再呼叫下一位患者。',
  btn_start_recording: '开始录制',
  btn_stop_recording: '停止录制',
  recording_heading: '录制',
  recording_off: '未在录制。',
  recording_on: '正在录制。只录制同意者。',
  recording_stopped: '录制已停止并保存。',
  'consent.pending': '等待回答 — 不录制',
  'consent.granted': '已同意 — 录制中',
  'consent.refused': '已拒绝 — 不录制',

  expert_title: '专家会诊',
  expert_intro: '您受邀以专家身份参加会诊。',
  expert_ended: '会诊已结束，感谢您的帮助。',

  companion_title: '陪同就诊',
  companion_not_started: '问诊尚未开始。请保持此页面打开，开始后将请您加入。',
  companion_waiting: '正在等待医生允许您加入…',
  companion_ended: '本次问诊已结束，谢谢。',

  // watch page
  watch_title: '直播',
  watch_consultation: '问诊',
  watch_video_label: '直播视频',
  watch_starting: '正在启动…',
  watch_connecting: '正在连接直播…',
  watch_waiting: '直播尚未开始。{seconds} 秒后重试…',
  watch_playing: '正在直播。声音已关闭，请点击打开。',
  watch_playing_sound: '正在直播。',
  watch_stalled: '直播已中断。{seconds} 秒后重试…',
  watch_retry_network: '连接失败。{seconds} 秒后重试…',
  watch_retry_server: '服务器无法开始播放（{status}）。{seconds} 秒后重试…',
  watch_gave_up: '无法连接到直播。',
  watch_not_found: '此地址没有直播。',
  watch_forbidden: '此链接无效或已过期。',
  watch_unsupported: '此浏览器无法播放直播。',
  watch_ended: '您已离开直播。',
  watch_sound_on: '点击打开声音',
  watch_retry: '重试',
};

export const DICTIONARY = { en, zh };

function initialLanguage() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (LANGUAGES.includes(saved)) return saved;
  } catch {
    // storage unavailable (private mode): fall through
  }
  const langs = navigator.languages?.length ? navigator.languages : [navigator.language || 'en'];
  return String(langs[0] || 'en').toLowerCase().startsWith('zh') ? 'zh' : 'en';
}

let current = initialLanguage();

/** The language in use: 'en' or 'zh'. */
export function lang() {
  return current;
}

/** The text for `key`, with `{name}` placeholders replaced from `vars`. */
export function t(key, vars = {}) {
  const text = DICTIONARY[current][key] ?? DICTIONARY.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (vars[name] !== undefined ? String(vars[name]) : m));
}

/** Friendly text for a server or local error code. */
export function errorText(code) {
  const key = `err.${code}`;
  if (DICTIONARY[current][key] || DICTIONARY.en[key]) return t(key);
  return t('err.unknown', { code });
}

/** Fill in every `data-i18n*` element under `root`. */
export function applyTranslations(root = document) {
  document.documentElement.lang = current === 'zh' ? 'zh-CN' : 'en';
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll('[data-i18n-aria-label]')) el.setAttribute('aria-label', t(el.dataset.i18nAriaLabel));
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
}

/** Switch language, remember it, re-translate the page and tell scripts (`huizhen:langchange`). */
export function setLang(next) {
  if (!LANGUAGES.includes(next)) return;
  current = next;
  try {
    localStorage.setItem(STORAGE_KEY, next);
  } catch {
    // not remembered; fine
  }
  applyTranslations();
  window.dispatchEvent(new CustomEvent('huizhen:langchange', { detail: { lang: next } }));
}

/** Make `button` toggle between the languages. */
export function bindLanguageToggle(button) {
  if (!button) return;
  button.addEventListener('click', () => setLang(current === 'zh' ? 'en' : 'zh'));
}
