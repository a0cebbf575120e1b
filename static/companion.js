// huizhen companion page (/companion?token=...&appointment=...): a family member or
// interpreter joins the patient's consultation once the doctor admits them.
//
// The server tells a companion which consultation is under way for their appointment
// (`consultation_open`, on connect and when the call starts); the page then asks to join
// (`join_consultation` → `waiting_for_approval`), the doctor admits (`consultation_ready`), and
// the page joins again, which now enters the call. A `consultation` in the URL is used as well.
//
// window.huizhen.state: 'connecting' | 'not_started' | 'awaiting_approval' | 'joining' |
// 'in_call' | 'left_call' | 'ended' | 'error'.

import { createClinicPage, params } from './clinic.js';

const ASKING = { view: 'view-approval' };

const page = createClinicPage({
  role: 'companion',
  onAuthenticated(msg) {
    const s = page.huizhen.state;
    if (s === 'ended' || s === 'left_call') return;
    const consultation = msg.seats[0] || params.consultation;
    if (consultation) {
      page.joinConsultation(consultation, ASKING);
    } else {
      notStarted();
    }
  },
  onMessage(msg) {
    switch (msg.type) {
      case 'consultation_open':
        if (!['joining', 'in_call', 'awaiting_approval'].includes(page.huizhen.state)) {
          page.clearError();
          page.joinConsultation(msg.consultation, ASKING);
        }
        return true;
      case 'waiting_for_approval':
        page.cancelJoin();
        page.huizhen.consultation = msg.consultation;
        page.setState('awaiting_approval');
        page.showView('view-approval');
        return true;
      case 'consultation_ready':
        // Admitted: joining again now enters the call.
        page.joinConsultation(msg.consultation, { force: true });
        return true;
      default:
        return false;
    }
  },
  onJoinRefused(code) {
    if (code === 'invalid_state' || code === 'not_found') {
      // Not started yet (or over): wait for consultation_open.
      notStarted();
      return true;
    }
    page.setState('error');
    page.showError({ code });
    return true;
  },
  onCallJoined() {
    page.showView('call-view');
  },
  onConsultationEnded() {
    page.setState('ended');
    page.showView('view-ended');
  },
});

function notStarted() {
  page.setState('not_started');
  page.showView('view-not-started');
}

if (!params.appointment && !params.consultation) {
  page.setState('error');
  page.showError({ key: 'error_no_appointment' });
} else {
  page.start();
}
