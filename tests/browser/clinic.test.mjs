// End-to-end test of the huizhen clinic pages (/patient, /doctor, /expert, /companion) with real
// browsers.
//
// Starts the server binary (HUIZHEN_BIN, default <repo>/target/debug/huizhen) with a temporary
// config (data dir in a temp dir, free ports on 127.0.0.1, `[clinic] seed_demo = true`) and reads
// the demo links and the generated API key it prints. Drives Debian's headless Chromium
// (/usr/bin/chromium, through playwright-core; no browser download), one browser context per
// person, through harness.mjs like sfu.test.mjs (same flags, same host-resolver rules: pages are
// opened at http://localhost:<port>, so the printed 127.0.0.1 links are rewritten). The clinic
// helpers (server, page state, the device check) are harness.mjs's, shared with
// recording.test.mjs.
//   1. the seed flow: the patient passes the device check and checks in (place 1); the doctor
//      sees them in the queue and invites; the patient answers; both decode each other's video
//      and receive audio; the patient refreshes the page and is back in the call (from
//      `authenticated.seats`) with media flowing again; the doctor invites an expert, whose page opens the link, and all three
//      decode each other; a companion is admitted by the doctor and receives the others; the
//      doctor ends: every page shows the ended state, gets `consultation_ended` and `bye`, and
//      its peer connection is closed with its remote tracks ended;
//   2. a second patient (REST API: /api/v1/appointments, /api/v1/tokens) checks in after the
//      demo patient, who switches the page to Chinese and refreshes it in the waiting room: the
//      page checks in again, keeps place 1 ahead of the other patient, and still speaks Chinese;
//      the other patient's socket drops and the page reconnects and keeps place 2.
// Every wait is bounded (HUIZHEN_WAIT_MS) and the whole run too (HUIZHEN_TEST_TIMEOUT_MS);
// servers are killed whatever happens.
//
// Run: cd tests/browser && npm install && npm test   (or: node --test clinic.test.mjs)
// Env (see harness.mjs): HUIZHEN_BIN, CHROMIUM_BIN, HUIZHEN_TEST_TIMEOUT_MS (whole run, default
//      180000), HUIZHEN_WAIT_MS (each wait, default and at most 30000), HUIZHEN_TEST_KEEP_LOGS=1,
//      HUIZHEN_TEST_STATIC_FROM_DISK=1 (serve static/*.js, *.css from the work tree).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  HOST_RULES,
  WAIT_MS as ENV_WAIT_MS,
  allPairs,
  api,
  closeAll,
  inbound,
  openPage,
  pageState,
  passDeviceCheckAndEnter,
  startRun,
  textOf,
  waitFor,
  waitForMedia,
  waitForState,
  waitInCall,
  waitVisible,
  withBrowser,
  withClinicServer,
} from './harness.mjs';

// Each wait is bounded by HUIZHEN_WAIT_MS, but by 30 s at the most.
const WAIT_MS = Math.min(ENV_WAIT_MS, 30_000);
startRun({ what: 'the clinic browser test', waitMs: WAIT_MS });
after(closeAll);

test('seed flow: check-in, invitation, call (and a refresh in it), expert, companion, end', (t) =>
  withBrowser(HOST_RULES, (browser) =>
    withClinicServer('seed', async (server, people) => {
      // The patient checks in and is first in line.
      const patient = await openPage(browser, 'patient', server.links.patient);
      people.push(patient);
      await passDeviceCheckAndEnter(patient);
      await waitForState(patient, 'place 1 in the waiting room', (s) => s.state === 'waiting' && s.position === 1);
      await waitVisible(patient, '#view-waiting');
      assert.equal(await textOf(patient, '#position'), '1');

      // The doctor sees them and invites the next patient.
      const doctor = await openPage(browser, 'doctor', server.links.doctor);
      people.push(doctor);
      await waitForState(doctor, 'the console', (s) => s.state === 'idle' && s.connection === 'authenticated');
      await waitFor('the patient in the doctor’s queue', async () => {
        const rows = await doctor.page.locator('#queue-body tr').allTextContents();
        return { ok: rows.length === 1 && rows[0].includes('Demo Patient'), detail: rows };
      });
      await waitFor('the patient to see the doctor available', async () => {
        const status = await patient.page.locator('#doctor-status').getAttribute('data-status');
        return { ok: status === 'online', detail: status };
      });
      await doctor.page.click('#btn-invite-next');

      // The patient's page rings; they answer.
      await waitForState(patient, 'ringing', (s) => s.state === 'ringing');
      await waitVisible(patient, '#btn-answer');
      await waitFor('the ringing flag in the doctor’s queue', async () => ({
        ok: (await doctor.page.locator('#queue-body tr[data-ringing="true"]').count()) === 1,
      }));
      await patient.page.click('#btn-answer');
      await waitInCall(patient);
      await waitInCall(doctor);
      const consultation = (await pageState(doctor)).consultation;
      assert.ok(consultation, 'the doctor knows the consultation');
      assert.equal((await pageState(patient)).consultation, consultation, 'both are in the same consultation');
      t.diagnostic(`patient+doctor: ${JSON.stringify(await waitForMedia('patient and doctor', allPairs([patient, doctor])))}`);

      // The patient refreshes the page during the call: `authenticated.seats` takes them
      // straight back in (a new participant), and media flows both ways again.
      const before = patient.id;
      await patient.page.reload();
      await waitInCall(patient);
      assert.notEqual(patient.id, before, 'the patient rejoined as a new participant');
      const rejoin = await patient.page.evaluate(() => ({
        seats: window.huizhen.seats,
        joins: window.huizhen.events.filter((e) => e.dir === 'out' && e.type === 'join_consultation').map((e) => e.msg.consultation),
      }));
      assert.deepEqual(rejoin, { seats: [consultation], joins: [consultation] }, 'rejoined from authenticated.seats');
      await waitForMedia('after the patient’s refresh', allPairs([patient, doctor]), { fresh: true });

      // The doctor invites an expert; the link opens the expert's page.
      await doctor.page.fill('#expert-name', 'Prof. Zhang');
      await doctor.page.click('#btn-invite-expert');
      await waitVisible(doctor, '#expert-link-box');
      const link = await doctor.page.inputValue('#expert-link');
      assert.match(link, new RegExp(`^${server.pageBase}/expert\\?token=[^&]+&consultation=${consultation}$`), 'absolute expert link');
      const expert = await openPage(browser, 'expert', link);
      people.push(expert);
      await waitInCall(expert);
      t.diagnostic(`with expert: ${JSON.stringify(await waitForMedia('patient, doctor and expert', allPairs([patient, doctor, expert])))}`);
      const names = await patient.page.locator('#tiles .tile.remote .tile-name').allTextContents();
      assert.deepEqual(names.sort(), ['Dr. Demo', 'Prof. Zhang'], 'the patient sees named tiles');

      // A companion learns the open consultation, asks to join, and is admitted.
      const companion = await openPage(browser, 'companion', server.links.companion);
      people.push(companion);
      await waitForState(companion, 'waiting for approval', (s) => s.state === 'awaiting_approval');
      await waitVisible(companion, '#view-approval');
      await waitVisible(doctor, '#companions li button[data-action="admit"]');
      await doctor.page.click('#companions li button[data-action="admit"]');
      await waitInCall(companion);
      t.diagnostic(`companion: ${JSON.stringify(await waitForMedia('the companion', [[companion, [patient, doctor, expert]]]))}`);

      // The doctor ends the consultation: everyone's call is over.
      await doctor.page.click('#btn-end');
      await waitVisible(doctor, '#btn-end-yes');
      await doctor.page.click('#btn-end-yes');
      const ended = { patient: '#view-thanks', doctor: '#view-ended', expert: '#view-ended', companion: '#view-ended' };
      for (const p of people) {
        await waitForState(p, 'the ended state', (s) => s.state === 'ended');
        await waitVisible(p, ended[p.name]);
        await waitFor(`${p.name}: consultation_ended and bye`, async () => {
          const got = {
            ended: (await inbound(p, 'consultation_ended')).map((m) => m.consultation),
            bye: (await inbound(p, 'bye')).map((m) => m.reason),
          };
          return { ok: got.ended.includes(consultation) && got.bye.length > 0, detail: got };
        });
        const media = await p.page.evaluate(() => {
          const h = window.huizhen;
          return {
            signalingState: h.pc.signalingState,
            remoteTracks: h.remoteTracks.size,
            liveReceivers: h.pc.getReceivers().filter((r) => r.track.readyState === 'live').length,
            mediaElements: document.querySelectorAll('#tiles .tile.remote video, #tiles audio').length,
          };
        });
        assert.deepEqual(media, { signalingState: 'closed', remoteTracks: 0, liveReceivers: 0, mediaElements: 0 }, `${p.name}: the call is torn down`);
      }
      assert.equal(await textOf(patient, '#thanks-heading'), 'Thank you');
      // The doctor's console is ready for the next patient; the queue is empty.
      await waitVisible(doctor, '#queue-empty');
    }),
  ),
);

test('a refresh in the waiting room keeps the place; the language choice is remembered', () =>
  withBrowser(HOST_RULES, (browser) =>
    withClinicServer('refresh', async (server, people) => {
      // A second appointment in the demo clinic, for the same slot: the order is by arrival.
      const appointments = await api(server, 'GET', '/appointments?clinic=demo');
      const demo = appointments.find((a) => a.patient === 'patient-demo');
      assert.ok(demo, `the demo appointment is listed: ${JSON.stringify(appointments)}`);
      await api(server, 'POST', '/appointments', { id: 'appt-two', clinic: 'demo', patient: 'patient-two', slot_start_ms: demo.slot_start });
      const { token } = await api(server, 'POST', '/tokens', { sub: 'patient-two', name: 'Second Patient', role: 'patient', appointment: 'appt-two' });
      const secondLink = `${server.pageBase}/patient?token=${encodeURIComponent(token)}&appointment=appt-two`;

      const first = await openPage(browser, 'first patient', server.links.patient);
      people.push(first);
      await passDeviceCheckAndEnter(first);
      await waitForState(first, 'place 1', (s) => s.state === 'waiting' && s.position === 1);
      const second = await openPage(browser, 'second patient', secondLink);
      people.push(second);
      await passDeviceCheckAndEnter(second);
      await waitForState(second, 'place 2', (s) => s.state === 'waiting' && s.position === 2);
      const doctor = await openPage(browser, 'doctor', server.links.doctor);
      people.push(doctor);
      const queueOrder = async () => doctor.page.locator('#queue-body tr td.name').allTextContents();
      await waitFor('the doctor’s queue in arrival order', async () => {
        const names = await queueOrder();
        return { ok: JSON.stringify(names) === JSON.stringify(['Demo Patient', 'Second Patient']), detail: names };
      });

      // The language toggle switches the visible text to Chinese.
      assert.equal(await textOf(first, '#waiting-heading'), 'You are in the waiting room');
      await first.page.click('#lang-toggle');
      await waitFor('Chinese text on the first patient’s page', async () => {
        const s = await first.page.evaluate(() => ({
          heading: document.getElementById('waiting-heading').textContent,
          leave: document.getElementById('btn-leave-queue').textContent,
          toggle: document.getElementById('lang-toggle').textContent,
          lang: document.documentElement.lang,
        }));
        return { ok: s.heading === '您已进入候诊室' && s.leave === '离开候诊室' && s.toggle === 'English' && s.lang === 'zh-CN', detail: s };
      });

      // Refresh: the page checks in again and keeps place 1, ahead of the later arrival.
      await first.page.reload();
      await waitForState(first, 'place 1 again after the refresh', (s) => s.state === 'waiting' && s.position === 1 && s.connection === 'authenticated');
      // The page already shows place 1 from the view pushed on `auth`; the answer to its new
      // check_in comes once that is committed: wait for it.
      await waitFor('place 1 confirmed after the new check-in', async () => {
        const events = await first.page.evaluate(() => window.huizhen.events.map((e) => ({ dir: e.dir, type: e.type, position: e.msg.position })));
        const checkIn = events.findIndex((e) => e.dir === 'out' && e.type === 'check_in');
        const ok = checkIn >= 0 && events.slice(checkIn).some((e) => e.dir === 'in' && e.type === 'waiting' && e.position === 1);
        return { ok, detail: events };
      });
      await waitVisible(first, '#view-waiting');
      assert.equal(await textOf(first, '#position'), '1');
      assert.equal(await textOf(first, '#waiting-heading'), '您已进入候诊室', 'the language choice survived the refresh');
      await waitForState(second, 'still place 2', (s) => s.state === 'waiting' && s.position === 2);

      // The second patient's connection drops: the page reconnects, authenticates and checks in
      // again; the place is kept.
      await second.page.evaluate(() => window.huizhen.ws.close());
      await waitFor('the second patient to reconnect and check in again', async () => {
        const s = await second.page.evaluate(() => {
          const ev = window.huizhen.events;
          const closed = ev.findIndex((e) => e.dir === 'local' && e.type === 'socket_closed');
          const after = closed >= 0 ? ev.slice(closed) : [];
          return {
            closed: closed >= 0,
            authenticated: after.some((e) => e.dir === 'in' && e.type === 'authenticated'),
            checkIn: after.some((e) => e.dir === 'out' && e.type === 'check_in'),
            position: window.huizhen.position,
            state: window.huizhen.state,
            connection: window.huizhen.connection,
          };
        });
        return { ok: s.closed && s.authenticated && s.checkIn && s.position === 2 && s.state === 'waiting' && s.connection === 'authenticated', detail: s };
      });
      await waitForState(first, 'still place 1', (s) => s.state === 'waiting' && s.position === 1);
      await waitFor('the doctor’s queue unchanged, nobody disconnected', async () => {
        const names = await queueOrder();
        const disconnected = await doctor.page.locator('#queue-body tr[data-disconnected="true"]').count();
        return { ok: JSON.stringify(names) === JSON.stringify(['Demo Patient', 'Second Patient']) && disconnected === 0, detail: { names, disconnected } };
      });
    }),
  ),
);
