// End-to-end test of recording with consent, through the clinic pages and real browsers, down to
// the exported files.
//
// Starts the server binary like clinic.test.mjs does (development mode: demo clinic seeded,
// links and API key printed; harness.mjs's startClinicServer) with `[recorder] segment_ms =
// 2000`, and runs the seed flow into a call between the demo doctor and patient (harness.mjs's
// seedCall). Then:
//   1. agree: the doctor presses "Start recording"; the patient's consent dialog appears
//      ("This consultation will be recorded. Do you agree?") and the patient presses Agree;
//      both keep decoding each other's video; ~12 s of media flows after the consent; the
//      doctor presses "Stop recording". `huizhen recording list` finds the recording,
//      `recording verify` passes, and `recording export <id> --out <dir>` writes exactly four
//      files: the doctor's and the patient's VP8 video and Opus audio;
//   2. refuse: the patient presses Refuse (the dialog is checked in Chinese first), the page
//      says "Recording — you are not being recorded", the patient reopens the dialog with the
//      call view's button and refuses again; an expert the doctor invites is asked on joining
//      and refuses too; the doctor ends the consultation (which stops the recording); the export
//      holds the doctor's two tracks only;
//   3. scenario 1 with Start pressed as soon as the call's media flows, and 5 s of media: the
//      doctor's video must be recorded too (the recorder's first keyframe request is not lost
//      to the keyframe throttle, and the recorder repeats it until a keyframe arrives).
// Each exported file goes through `ffprobe -v error -show_streams -show_format -of json` (one
// stream, the right codec, the right duration) and `ffmpeg -v error -i <file> -enc_time_base -1 -f null -` (every
// frame decodes: nothing on stderr).
//
// Durations. The test measures the timeline on the pages' own event log (window.huizhen.events,
// Date.now() of the same machine as the test): start = the doctor sends `start_recording`,
// consent = the patient sends `consent {granted: true}`, stop = the doctor sends
// `stop_recording` (or `end_consultation`). The doctor's start counts as their consent, so the
// doctor's files should last stop - start, the patient's stop - consent. A file's duration is
// the format duration minus the stream's start_time (a late joiner's file may start at its
// offset on the recording's common timeline). Tolerance: 10 % of the expected span, i.e. at
// least 1.2 s, as every span is made >= 12 s. The expected deviations are far smaller: the
// commands travel over loopback (ms), video starts at the first keyframe after the recorder asks
// for one (an RTT plus a frame, < 0.2 s), the recording ends within a frame or an audio packet of
// the stop, and the jitter buffer only reorders. Yet a lost or duplicated 2 s segment, a file cut
// at the first segment, or recording from the wrong moment (before the consent, or past the stop)
// each exceed it.
//
// Every wait is bounded (HUIZHEN_WAIT_MS, at most 30 s) and the whole file (HUIZHEN_TEST_TIMEOUT_MS,
// default 180 s); servers are killed whatever happens. Needs ffmpeg/ffprobe on PATH.
// HUIZHEN_TEST_SCREENSHOTS=<dir> saves screenshots of the consent dialog, the banner and the
// doctor's panel.
//
// Run: cd tests/browser && npm test   (or: node --test recording.test.mjs)

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  HOST_RULES,
  SERVER_BIN,
  WAIT_MS as ENV_WAIT_MS,
  allPairs,
  closeAll,
  openPage,
  pageState,
  seedCall,
  sleep,
  startRun,
  textOf,
  waitFor,
  waitForMedia,
  waitForState,
  waitHidden,
  waitInCall,
  waitVisible,
  withBrowser,
  withClinicServer,
} from './harness.mjs';

// Each wait is bounded by HUIZHEN_WAIT_MS, but by 30 s at the most.
const WAIT_MS = Math.min(ENV_WAIT_MS, 30_000);
startRun({ what: 'the recording browser test', waitMs: WAIT_MS });
after(closeAll);

const RECORDER_CONFIG = ['[recorder]', 'segment_ms = 2000', ''];
/** Media recorded after the last participant's consent (and from the doctor's start in test 2). */
const SPAN_MS = 12_000;
const TOLERANCE = 0.1;
/** No pause before Start: the server must record from the first keyframe it asks for. */
const KEYFRAME_PAUSE_MS = 0;
/** HUIZHEN_TEST_SCREENSHOTS=<dir>: save screenshots of the recording UI there. */
const SCREENSHOTS = process.env.HUIZHEN_TEST_SCREENSHOTS || null;
const DOCTOR = 'dr-demo';
const PATIENT = 'patient-demo';
const EXPERT_NAME = 'Prof. Zhang';

// ---------------------------------------------------------------------------------------------
// Tools

/** Run a program (bounded by WAIT_MS); resolves {code, stdout, stderr}. */
function run(file, args) {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: WAIT_MS, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : `${err.code || ''}${err.signal ? ` signal ${err.signal}` : ''}`) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** `huizhen recording <args> --config <the server's config>`. */
function recordingCli(server, args) {
  return run(SERVER_BIN, ['recording', ...args, '--config', server.configPath]);
}

/**
 * Wait until `recording list` shows a finished recording of `consultation` (the manifest reaches
 * the archive once the spool uploaded every segment); returns {id, startedMs, endedMs, line}.
 */
async function listedRecording(server, consultation) {
  return waitFor(`recording list to show the finished recording of ${consultation}`, async () => {
    const out = await recordingCli(server, ['list']);
    const re = /^(\S+)\tconsultation (\S+)\tstarted (\d+)\tended (\d+)\t/;
    const found = out.stdout
      .split('\n')
      .map((line) => ({ line, m: re.exec(line) }))
      .find((x) => x.m && x.m[2] === consultation);
    if (out.code !== 0 || !found) return { ok: false, detail: { code: out.code, stdout: out.stdout, stderr: out.stderr } };
    return { ok: true, value: { id: found.m[1], startedMs: Number(found.m[3]), endedMs: Number(found.m[4]), line: found.line } };
  }, WAIT_MS, 500);
}

/** The SFU's keyframe request counters, from /metrics (diagnostics). */
async function keyframeMetrics(server) {
  try {
    const res = await fetch(`${server.apiBase}/metrics`, { signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    return text
      .split('\n')
      .filter((l) => /keyframe_requests_(sent|throttled)_total/.test(l) && !l.startsWith('#'))
      .join('; ');
  } catch (err) {
    return `(no metrics: ${err.message})`;
  }
}

/** ffprobe's view of `file`: {streams, format}. */
async function ffprobe(file) {
  const out = await run('ffprobe', ['-v', 'error', '-show_streams', '-show_format', '-of', 'json', file]);
  assert.equal(out.code, 0, `ffprobe ${file}: ${out.stderr}`);
  assert.equal(out.stderr, '', `ffprobe ${file} complained`);
  return JSON.parse(out.stdout);
}

/**
 * Verify, export and check the recording of `consultation`: the files are exactly `expected`
 * ({participant, codec, kind, spanMs}); each has one stream of that codec, lasts spanMs ± 10 %,
 * and decodes without a word from ffmpeg. Returns a summary line per file.
 */
async function checkExport(t, server, consultation, expected) {
  t.diagnostic(`keyframe metrics: ${await keyframeMetrics(server)}`);
  const listed = await listedRecording(server, consultation);
  t.diagnostic(`listed: ${listed.line}`);
  const verify = await recordingCli(server, ['verify', listed.id]);
  assert.ok(verify.code === 0 && verify.stdout.includes('result: OK'), `recording verify ${listed.id}: ${verify.code}\n${verify.stdout}${verify.stderr}`);

  const outDir = path.join(server.dir, 'export');
  const exported = await recordingCli(server, ['export', listed.id, '--out', outDir]);
  assert.equal(exported.code, 0, `recording export ${listed.id}: ${exported.stdout}${exported.stderr}`);
  const files = fs.readdirSync(outDir).sort();
  const printed = exported.stdout.split('\n').filter(Boolean).map((f) => path.basename(f)).sort();
  assert.deepEqual(printed, files, 'export prints the files it wrote');

  // <participant>-<track id>-<codec>.webm (participant and track ids may hold dashes too).
  const got = files.map((f) => {
    const m = /^(.+)-(t\d+(?:-\d+)?)-(vp8|vp9|h264|opus)\.(webm|mkv)$/.exec(f);
    assert.ok(m, `export file name ${f}`);
    return { file: f, participant: m[1], codec: m[3] };
  });
  const key = (x) => `${x.participant}/${x.codec}`;
  assert.deepEqual(got.map(key).sort(), expected.map(key).sort(), `exactly the expected tracks: ${files.join(', ')}`);

  const summary = [];
  for (const g of got) {
    const want = expected.find((e) => key(e) === key(g));
    const full = path.join(outDir, g.file);
    const probe = await ffprobe(full);
    assert.equal(probe.streams.length, 1, `${g.file}: one stream`);
    const stream = probe.streams[0];
    assert.equal(stream.codec_name, want.codec, `${g.file}: codec`);
    assert.equal(stream.codec_type, want.kind, `${g.file}: stream type`);
    if (want.kind === 'video') assert.ok(stream.width > 0 && stream.height > 0, `${g.file}: video size ${stream.width}x${stream.height}`);
    const formatDuration = Number(probe.format.duration);
    const startTime = Number(stream.start_time ?? probe.format.start_time ?? 0) || 0;
    const duration = formatDuration - Math.max(0, startTime);
    const spanS = want.spanMs / 1000;
    const line = `${g.file}: ${stream.codec_name} ${duration.toFixed(3)} s (format ${formatDuration.toFixed(3)} s, start ${startTime.toFixed(3)} s), expected ${spanS.toFixed(3)} s (${(((duration - spanS) / spanS) * 100).toFixed(1)} %)`;
    summary.push(line);
    t.diagnostic(line);
    assert.ok(Number.isFinite(duration) && Math.abs(duration - spanS) <= TOLERANCE * spanS, `${line}: off by more than ${TOLERANCE * 100} %`);

    // `-enc_time_base -1` keeps the file's own millisecond time base: by default ffmpeg
    // re-stamps decoded frames in 1/<guessed frame rate> ticks, and two frames of a browser's
    // variable-rate video closer than one tick (a late capture under load) then collide and
    // the null muxer complains, though every frame decoded. With the file's time base any
    // repeated or decreasing block time of ours is still reported.
    const decode = await run('ffmpeg', ['-nostdin', '-v', 'error', '-i', full, '-enc_time_base', '-1', '-f', 'null', '-']);
    assert.equal(decode.code, 0, `ffmpeg decoding ${g.file}: exit ${decode.code}: ${decode.stderr}`);
    assert.equal(decode.stderr, '', `ffmpeg decoding ${g.file} printed errors`);
  }

  // The optional side-by-side composite: every video track next to the others, audio mixed.
  const compositeDir = path.join(server.dir, 'export-composite');
  const composed = await recordingCli(server, ['export', listed.id, '--out', compositeDir, '--composite']);
  assert.equal(composed.code, 0, `recording export --composite: ${composed.stdout}${composed.stderr}`);
  const composite = await ffprobe(path.join(compositeDir, 'composite.webm'));
  const videos = expected.filter((e) => e.kind === 'video');
  const cv = composite.streams.find((x) => x.codec_type === 'video');
  assert.ok(cv, 'composite has a video stream');
  // Each video is scaled to 360 lines; Chromium's fake camera is 4:3, so N videos side by side
  // make a frame N × 480 wide.
  assert.equal(cv.height, 360, `composite height ${cv.height}`);
  assert.equal(Math.round(cv.width / 480), videos.length, `composite ${cv.width}x${cv.height} places ${videos.length} videos side by side`);
  assert.equal(composite.streams.some((x) => x.codec_type === 'audio'), expected.some((e) => e.kind === 'audio'), 'composite mixes the audio');
  const longest = Math.max(...expected.map((e) => e.spanMs)) / 1000;
  const compositeDuration = Number(composite.format.duration);
  assert.ok(Math.abs(compositeDuration - longest) <= TOLERANCE * longest, `composite lasts ${compositeDuration} s, expected about ${longest} s`);
  summary.push(`composite.webm: ${cv.width}x${cv.height}, ${compositeDuration.toFixed(3)} s`);
  return { listed, summary };
}

// ---------------------------------------------------------------------------------------------
// Pages

async function screenshot(person, name) {
  if (!SCREENSHOTS) return;
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  await person.page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/** When the page first sent (dir 'out') or received ('in') a message of `type` matching `match`. */
async function eventAt(person, dir, type, match = {}) {
  const at = await person.page.evaluate(
    ([dir, type, match]) => {
      const e = window.huizhen.events.find((x) => x.dir === dir && x.type === type && Object.entries(match).every(([k, v]) => x.msg[k] === v));
      return e ? e.at : null;
    },
    [dir, type, match],
  );
  assert.ok(at, `${person.name}: no ${dir} ${type} ${JSON.stringify(match)} in the event log`);
  return at;
}

/** The recording banner: {visible, text, recorded}. */
function indicator(person) {
  return person.page.evaluate(() => {
    const node = document.getElementById('recording-indicator');
    return { visible: !!node && !node.hidden && node.offsetHeight > 0, text: node?.textContent.trim(), recorded: node?.dataset.recorded };
  });
}

async function waitIndicator(person, text, recorded) {
  return waitFor(`${person.name}: the recording banner "${text}"`, async () => {
    const s = await indicator(person);
    return { ok: s.visible && s.text === text && s.recorded === String(recorded), value: s, detail: s };
  });
}

async function waitNoIndicator(person) {
  return waitFor(`${person.name}: no recording banner`, async () => {
    const s = await indicator(person);
    return { ok: !s.visible, detail: s };
  });
}

/** Wait until the doctor's consent list shows `who` (a user id or display name) with `decision`. */
async function waitConsentRow(doctor, who, decision) {
  return waitFor(`${doctor.name}: ${who} shown as ${decision}`, async () => {
    const rows = await doctor.page.locator('#consent-list li').evaluateAll((lis) =>
      lis.filter((li) => li.offsetHeight > 0).map((li) => ({ user: li.dataset.user, decision: li.dataset.decision, text: li.textContent })),
    );
    return { ok: rows.some((r) => (r.user === who || r.text.startsWith(who)) && r.decision === decision), value: rows, detail: rows };
  });
}

/** The doctor presses "Start recording"; both pages learn it runs; the patient is asked. */
async function doctorStartsRecording(doctor, patient, { pauseMs = KEYFRAME_PAUSE_MS } = {}) {
  await sleep(pauseMs);
  await waitFor('the doctor’s Start recording button', async () => {
    const s = await doctor.page.evaluate(() => {
      const b = document.getElementById('btn-recording');
      return { text: b.textContent, disabled: b.disabled, visible: b.offsetHeight > 0, pressed: b.getAttribute('aria-pressed') };
    });
    return { ok: s.text.includes('Start recording') && !s.disabled && s.visible && s.pressed === 'false', detail: s };
  });
  await doctor.page.click('#btn-recording');
  await waitForState(doctor, 'the recording running, the doctor recorded', (s) => s.recording?.active === true && s.recording.recorded === true);
  await waitIndicator(doctor, 'Recording — you are being recorded', true);
  assert.match(await textOf(doctor, '#btn-recording'), /Stop recording/);
  await waitConsentRow(doctor, DOCTOR, 'granted');
  await waitConsentRow(doctor, PATIENT, 'pending');

  // The patient is asked: a large modal dialog; until they answer, nothing of theirs is recorded.
  await waitVisible(patient, '#consent-dialog');
  assert.equal(await textOf(patient, '#consent-title'), 'This consultation will be recorded. Do you agree?');
  assert.equal(await textOf(patient, '#btn-consent-agree'), 'Agree');
  assert.equal(await textOf(patient, '#btn-consent-refuse'), 'Refuse');
  const box = await patient.page.locator('#btn-consent-agree').boundingBox();
  assert.ok(box && box.height >= 64 && box.width >= 150, `a large Agree button: ${JSON.stringify(box)}`);
  const s = await waitForState(patient, 'asked for consent', (x) => x.consent?.decision === 'pending' && x.consentDialogOpen && x.recording?.active === true);
  assert.equal(s.recording.recorded, false, 'the patient is not recorded before answering');
  await waitIndicator(patient, 'Recording — you are not recorded unless you agree', false);
}

/** The doctor presses "Stop recording"; both pages see it stop. */
async function doctorStopsRecording(doctor, patient) {
  await doctor.page.click('#btn-recording');
  for (const p of [doctor, patient]) {
    await waitForState(p, 'the recording stopped', (s) => s.recording?.active === false);
    await waitNoIndicator(p);
  }
  await waitFor('the doctor’s button back to Start recording', async () => {
    const s = await doctor.page.evaluate(() => ({ text: document.getElementById('btn-recording').textContent, state: document.getElementById('recording-state').dataset.state }));
    return { ok: s.text.includes('Start recording') && s.state === 'stopped', detail: s };
  });
}

// ---------------------------------------------------------------------------------------------
// Tests

/**
 * Scenario 1: the patient agrees; `spanMs` of media after the consent; the doctor stops; the
 * export holds both participants' VP8 and Opus tracks of the right lengths, all decodable.
 */
function agreeScenario(t, name, { pauseMs = KEYFRAME_PAUSE_MS, spanMs = SPAN_MS, quiet = false } = {}) {
  return withBrowser(HOST_RULES, (browser) =>
    withClinicServer(
      name,
      async (server, people) => {
        const { patient, doctor, consultation, media } = await seedCall(browser, server, people);
        t.diagnostic(`in the call: ${JSON.stringify(media)}`);

        await doctorStartsRecording(doctor, patient, { pauseMs });
        await screenshot(patient, `${name}-patient-consent-dialog`);
        await screenshot(doctor, `${name}-doctor-recording-pending`);
        await patient.page.click('#btn-consent-agree');
        await waitHidden(patient, '#consent-dialog');
        await waitForState(patient, 'recorded after agreeing', (s) => s.recording?.active === true && s.recording.recorded === true && s.consent?.decision === 'granted');
        await waitIndicator(patient, 'Recording — you are being recorded', true);
        await waitVisible(patient, '#btn-consent-change');
        await waitConsentRow(doctor, PATIENT, 'granted');
        await screenshot(patient, `${name}-patient-recorded`);
        await screenshot(doctor, `${name}-doctor-recording`);

        // Media keeps flowing both ways while recorded.
        t.diagnostic(`recording: ${JSON.stringify(await waitForMedia('recording', allPairs([patient, doctor]), { fresh: true }))}`);
        const consentAt = await eventAt(patient, 'out', 'consent', { granted: true });
        await sleep(Math.max(0, consentAt + spanMs - Date.now()));
        t.diagnostic(`before the stop: ${JSON.stringify(await waitForMedia('before the stop', allPairs([patient, doctor]), { fresh: true }))}`);
        await doctorStopsRecording(doctor, patient);

        const startAt = await eventAt(doctor, 'out', 'start_recording');
        const stopAt = await eventAt(doctor, 'out', 'stop_recording');
        t.diagnostic(`timeline: start ${startAt}, consent +${consentAt - startAt} ms, stop +${stopAt - startAt} ms`);
        const { listed } = await checkExport(t, server, consultation, [
          { participant: DOCTOR, codec: 'vp8', kind: 'video', spanMs: stopAt - startAt },
          { participant: DOCTOR, codec: 'opus', kind: 'audio', spanMs: stopAt - startAt },
          { participant: PATIENT, codec: 'vp8', kind: 'video', spanMs: stopAt - consentAt },
          { participant: PATIENT, codec: 'opus', kind: 'audio', spanMs: stopAt - consentAt },
        ]);
        t.diagnostic(`server timeline: started ${listed.startedMs} (${listed.startedMs - startAt} ms after the click), ended ${listed.endedMs} (${listed.endedMs - stopAt} ms after the click)`);
        assert.deepEqual((await pageState(patient)).errors, [], 'no errors on the patient page');
        assert.deepEqual((await pageState(doctor)).errors, [], 'no errors on the doctor page');
      },
      { extraConfig: RECORDER_CONFIG, quiet },
    ),
  );
}

test('the patient agrees: doctor and patient recorded, four decodable files of the right length', (t) => agreeScenario(t, 'rec-agree'));

test('the patient and a late-joining expert refuse: only the doctor is recorded; the answer can be given again', (t) =>
  withBrowser(HOST_RULES, (browser) =>
    withClinicServer(
      'rec-refuse',
      async (server, people) => {
        const { patient, doctor, consultation } = await seedCall(browser, server, people);
        await doctorStartsRecording(doctor, patient);

        // The question in Chinese too.
        await patient.page.evaluate(() => window.huizhen.setLang('zh'));
        assert.equal(await textOf(patient, '#consent-title'), '本次问诊将被录制。您是否同意？');
        assert.equal(await textOf(patient, '#btn-consent-agree'), '同意');
        assert.equal(await textOf(patient, '#btn-consent-refuse'), '拒绝');
        assert.equal(await textOf(patient, '#recording-indicator'), '正在录制 — 您同意之前不会录制您');
        await screenshot(patient, 'rec-refuse-patient-consent-dialog-zh');
        await patient.page.evaluate(() => window.huizhen.setLang('en'));

        await patient.page.click('#btn-consent-refuse');
        await waitHidden(patient, '#consent-dialog');
        await waitForState(patient, 'refused, not recorded', (s) => s.recording?.active === true && s.recording.recorded === false && s.consent?.decision === 'refused');
        await waitIndicator(patient, 'Recording — you are not being recorded', false);
        await waitConsentRow(doctor, PATIENT, 'refused');
        await screenshot(patient, 'rec-refuse-patient-not-recorded');
        await screenshot(doctor, 'rec-refuse-doctor');

        // The call view's button reopens the question, with the answer so far; refuse again.
        await waitVisible(patient, '#btn-consent-change');
        await patient.page.click('#btn-consent-change');
        await waitVisible(patient, '#consent-dialog');
        assert.equal(await textOf(patient, '#consent-current'), 'Your answer so far: you refused to be recorded.');
        await patient.page.click('#btn-consent-refuse');
        await waitHidden(patient, '#consent-dialog');
        await waitFor('the second refusal sent and confirmed', async () => {
          const n = await patient.page.evaluate(() => ({
            sent: window.huizhen.events.filter((e) => e.dir === 'out' && e.type === 'consent' && e.msg.granted === false).length,
            confirmed: window.huizhen.events.filter((e) => e.dir === 'in' && e.type === 'recording_status' && e.msg.active && !e.msg.recorded).length,
          }));
          return { ok: n.sent === 2 && n.confirmed >= 3, detail: n };
        });
        await waitIndicator(patient, 'Recording — you are not being recorded', false);
        await waitConsentRow(doctor, PATIENT, 'refused');

        // An expert who joins while the recording runs is asked on joining; they refuse too.
        await doctor.page.fill('#expert-name', EXPERT_NAME);
        await doctor.page.click('#btn-invite-expert');
        await waitVisible(doctor, '#expert-link-box');
        const expert = await openPage(browser, 'expert', await doctor.page.inputValue('#expert-link'));
        people.push(expert);
        await waitInCall(expert);
        await waitVisible(expert, '#consent-dialog');
        await waitIndicator(expert, 'Recording — you are not recorded unless you agree', false);
        await waitConsentRow(doctor, EXPERT_NAME, 'pending');
        await expert.page.click('#btn-consent-refuse');
        await waitHidden(expert, '#consent-dialog');
        await waitIndicator(expert, 'Recording — you are not being recorded', false);
        await waitConsentRow(doctor, EXPERT_NAME, 'refused');
        await screenshot(doctor, 'rec-refuse-doctor-with-expert');

        const everyone = [patient, doctor, expert];
        t.diagnostic(`refused: ${JSON.stringify(await waitForMedia('refused', allPairs(everyone), { fresh: true }))}`);
        const startAt = await eventAt(doctor, 'out', 'start_recording');
        await sleep(Math.max(0, startAt + SPAN_MS - Date.now()));
        t.diagnostic(`before the end: ${JSON.stringify(await waitForMedia('before the end', allPairs(everyone), { fresh: true }))}`);

        // Ending the consultation stops the recording.
        await doctor.page.click('#btn-end');
        await waitVisible(doctor, '#btn-end-yes');
        await doctor.page.click('#btn-end-yes');
        for (const p of everyone) {
          await waitForState(p, 'the ended state', (s) => s.state === 'ended');
          await waitNoIndicator(p);
        }
        const stopAt = await eventAt(doctor, 'out', 'end_consultation');
        t.diagnostic(`timeline: start ${startAt}, end +${stopAt - startAt} ms`);
        await checkExport(t, server, consultation, [
          { participant: DOCTOR, codec: 'vp8', kind: 'video', spanMs: stopAt - startAt },
          { participant: DOCTOR, codec: 'opus', kind: 'audio', spanMs: stopAt - startAt },
        ]);
      },
      { extraConfig: RECORDER_CONFIG },
    ),
  ),
);

test('Start recording right after the call connects: the doctor’s video is recorded too', (t) =>
  agreeScenario(t, 'rec-at-once', { pauseMs: 0, spanMs: 5_000 }),
);
