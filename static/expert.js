// huizhen expert page (/expert?token=...&consultation=...): the one-time link a doctor created
// with `invite_expert`. Authenticates, joins the consultation's call, and shows a clear message
// when the link is no longer valid (`link_expired`: the consultation has ended).
//
// window.huizhen.state: 'connecting' | 'joining' | 'in_call' | 'left_call' | 'ended' | 'error'.

import { createClinicPage, params } from './clinic.js';

const page = createClinicPage({
  role: 'expert',
  screenShare: true,
  onAuthenticated(msg) {
    const consultation = params.consultation || msg.seats[0];
    if (!consultation) {
      page.fail('error_no_consultation');
      return;
    }
    if (page.huizhen.state === 'ended' || page.huizhen.state === 'left_call') return;
    page.joinConsultation(consultation);
  },
  onJoinRefused(code) {
    // link_expired, forbidden (a link for another consultation, or used by someone else), ...
    page.setState('error');
    page.showError({ code });
    return true;
  },
  onConsultationEnded() {
    page.setState('ended');
    page.showView('view-ended');
  },
});
page.start();
