// Interop with a third, independent WebRTC stack: aiortc (Python), next to webrtc-rs (tests/it)
// and Chromium (the other browser tests).
//
// Why: the server's SDP must work for any RFC-conforming client, not only for the stacks it was
// developed against. aiortc reads SDP differently from Chromium: with max-bundle it takes the
// remote candidates and `a=end-of-candidates` from the last m-section of a description, and it
// fires its "track" event for every m-line on which the remote side says it sends, so an answer
// that echoes a publisher's own sendrecv line (with its msid and ssrc) makes a phantom remote
// track there. The issue: "server SDP that every client can use (candidates where any
// RFC-conforming client finds them, a=end-of-candidates, no echoed msid/ssrc, recvonly answers
// for publish lines) and a third independent WebRTC stack in the test suite".
//
// One consultation of the demo clinic: the aiortc client (tests/interop/aiortc_client.py) is
// the patient (auth with the patient's token, check_in, answers the doctor's call,
// join_consultation; it publishes a synthetic VP8 camera and an Opus tone on transceivers
// offered sendrecv), the doctor is the Chromium doctor page that invites them. The call runs
// in the first test, which records the figures; the tests after it assert on them, one
// property each, so a run tells exactly which hold:
//   (a) Chromium decodes aiortc's video and receives its audio;
//   (b) aiortc decodes the doctor's video frames and audio frames;
//   (c) every SDP the server sent to aiortc (answers and offers): each m-section that is not
//       rejected (port 0) has an `a=candidate` and `a=end-of-candidates`; every m-line aiortc
//       offered to publish is `recvonly` (or `inactive`) with no `a=msid` and no `a=ssrc`;
//   (d) aiortc's "track" event fired only for the mids the server announced with track_added
//       (created to send), none on its own publish mids, and for each of those.
// Loopback only: the client configures no STUN/TURN server and gathers 127.0.0.1 only (see its
// header). Every wait is bounded; the call test is bounded by 80 s.
//
// Run: cd tests/browser && npm install && node --test interop.test.mjs   (also in `npm test`)
// Env (see harness.mjs): HUIZHEN_BIN, CHROMIUM_BIN, HUIZHEN_TEST_KEEP_LOGS=1, and
//      HUIZHEN_INTEROP_PYTHON (the Python with aiortc installed; default
//      <repo>/tests/interop/.venv/bin/python, which tests/run-all.sh creates from
//      tests/interop/requirements.txt).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  HOST_RULES,
  REPO_ROOT,
  closeAll,
  dumpPages,
  openPage,
  pageState,
  sleep,
  snapshot,
  startRun,
  waitFor,
  waitForState,
  waitInCall,
  withBrowser,
  withClinicServer,
} from './harness.mjs';

const PYTHON = path.resolve(REPO_ROOT, process.env.HUIZHEN_INTEROP_PYTHON || 'tests/interop/.venv/bin/python');
const CLIENT = path.join(REPO_ROOT, 'tests', 'interop', 'aiortc_client.py');
/** Each wait of this file. */
const WAIT_MS = 20_000;
/** The aiortc client's own hard limit, and the call test's. */
const CLIENT_TIMEOUT_S = 70;
const CALL_TEST_TIMEOUT_MS = 80_000;
/** What "decodes" means here: a couple of seconds of media, not a first frame by luck. */
const MIN_VIDEO_FRAMES = 60;
const MIN_AUDIO_PACKETS = 100;
const MIN_AUDIO_FRAMES = 100;

startRun({ what: 'the aiortc interop test', waitMs: WAIT_MS });
after(closeAll);

// ---------------------------------------------------------------------------------------------
// The aiortc client process

/**
 * Start the client; it reports progress on stderr as `@@ {json}` lines (kept in `progress`, the
 * latest merged into `latest`) and prints its result as one JSON line on stdout when it ends.
 */
function startAiortc(args) {
  assert.ok(
    fs.existsSync(PYTHON),
    `${PYTHON} not found: create it with \`python3 -m venv tests/interop/.venv && tests/interop/.venv/bin/pip install -r tests/interop/requirements.txt\` (tests/run-all.sh does) or set HUIZHEN_INTEROP_PYTHON`,
  );
  const proc = spawn(PYTHON, [CLIENT, ...args, '--timeout', String(CLIENT_TIMEOUT_S)], {
    cwd: REPO_ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
  });
  const client = { proc, stdout: '', stderrLines: [], latest: {}, exited: null };
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (d) => {
    client.stdout += d;
  });
  let partial = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    const lines = (partial + d).split('\n');
    partial = lines.pop();
    for (const line of lines) {
      if (line.startsWith('@@ ')) {
        try {
          Object.assign(client.latest, JSON.parse(line.slice(3)));
          continue;
        } catch {
          // not ours after all: keep it as a log line
        }
      }
      client.stderrLines.push(line);
      if (client.stderrLines.length > 400) client.stderrLines.shift();
    }
  });
  proc.on('exit', (code, signal) => {
    client.exited = { code, signal };
  });
  proc.on('error', (err) => {
    client.exited = { error: err.message };
  });
  return client;
}

/** Wait for `pred(client.latest)`; fatal if the client is gone. */
function waitClient(client, what, pred, timeoutMs = WAIT_MS) {
  return waitFor(`aiortc: ${what}`, async () => {
    if (client.exited) {
      throw Object.assign(new Error(`aiortc client exited (${JSON.stringify(client.exited)}) while waiting for: ${what}`), { fatal: true });
    }
    return { ok: pred(client.latest), value: client.latest, detail: client.latest };
  }, timeoutMs);
}

/** Ask the client to leave and print its result; kill it if it does not within 10 s. */
async function stopAiortc(client) {
  if (!client.exited) {
    client.proc.stdin.write('stop\n');
    client.proc.stdin.end();
    const deadline = Date.now() + 10_000;
    while (!client.exited && Date.now() < deadline) await sleep(50);
    if (!client.exited) {
      client.proc.kill('SIGKILL');
      while (!client.exited) await sleep(20);
      throw new Error('the aiortc client did not stop within 10 s of "stop"');
    }
  }
  const line = client.stdout.trim().split('\n').pop();
  assert.ok(line, `the aiortc client printed no result (exit ${JSON.stringify(client.exited)})`);
  return JSON.parse(line);
}

function dumpAiortc(client) {
  console.error(`--- aiortc client (exit ${JSON.stringify(client.exited)}), last stderr lines ---`);
  console.error(client.stderrLines.slice(-60).join('\n'));
  console.error(`--- aiortc latest progress: ${JSON.stringify(client.latest)}`);
}

// ---------------------------------------------------------------------------------------------
// SDP

/** The m-sections of an SDP: {index, mid, kind, port, direction, lines}. */
function sdpSections(sdp) {
  const sections = [];
  let cur = null;
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith('m=')) {
      const [kind, port] = line.slice(2).split(' ');
      cur = { index: sections.length, mid: null, kind, port: Number(port), direction: 'sendrecv', lines: [] };
      sections.push(cur);
    } else if (cur && line) {
      cur.lines.push(line);
      if (line.startsWith('a=mid:')) cur.mid = line.slice(6).trim();
      if (/^a=(sendrecv|sendonly|recvonly|inactive)$/.test(line)) cur.direction = line.slice(2);
    }
  }
  return sections;
}

/** Problems of one server SDP against (c); `publishMids` are the mids aiortc publishes on. */
function sdpProblems(label, sdp, publishMids) {
  const candidates = [];
  const endOfCandidates = [];
  const publish = [];
  for (const s of sdpSections(sdp)) {
    const where = `${label} m-section ${s.index} (mid ${s.mid}, ${s.kind})`;
    if (s.port !== 0) {
      if (!s.lines.some((l) => l.startsWith('a=candidate:'))) candidates.push(`${where}: no a=candidate`);
      if (!s.lines.includes('a=end-of-candidates')) endOfCandidates.push(`${where}: no a=end-of-candidates`);
    }
    if (publishMids.includes(s.mid)) {
      if (s.port === 0) publish.push(`${where}: aiortc's publish line is rejected (port 0)`);
      else if (!['recvonly', 'inactive'].includes(s.direction)) publish.push(`${where}: aiortc's publish line is ${s.direction}, want recvonly`);
      const echoed = s.lines.filter((l) => /^a=(msid|ssrc|ssrc-group):/.test(l));
      if (echoed.length) publish.push(`${where}: aiortc's publish line carries ${echoed.length} msid/ssrc lines, e.g. ${echoed[0]}`);
    }
  }
  return { candidates, endOfCandidates, publish };
}

// ---------------------------------------------------------------------------------------------
// Chromium's view of aiortc's media

/** The doctor page's inbound stats for `publisherId`'s tracks (audio energy too). */
function chromiumFrom(person, publisherId) {
  return person.page.evaluate(async (pid) => {
    const h = window.huizhen;
    const tracks = [...h.remoteTracks].map(([track_id, t]) => ({ track_id, ...t })).filter((t) => t.participant_id === pid);
    const out = { tracks, video: null, audio: null };
    if (!h.pc || h.pc.signalingState === 'closed') return out;
    const midOf = {};
    for (const t of h.pc.getTransceivers()) if (t.mid != null) midOf[t.receiver.track.id] = t.mid;
    const stats = await h.pc.getStats();
    stats.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const mid = s.mid != null ? s.mid : midOf[s.trackIdentifier];
      const track = tracks.find((t) => t.mid === mid);
      if (!track) return;
      const entry = {
        mid,
        track_id: track.track_id,
        codec: s.codecId ? stats.get(s.codecId)?.mimeType : null,
        packetsReceived: s.packetsReceived || 0,
        packetsLost: s.packetsLost || 0,
        framesDecoded: s.framesDecoded || 0,
        frameWidth: s.frameWidth,
        frameHeight: s.frameHeight,
        totalAudioEnergy: s.totalAudioEnergy,
        totalSamplesReceived: s.totalSamplesReceived,
      };
      if (s.kind === 'video') out.video = entry;
      if (s.kind === 'audio') out.audio = entry;
    });
    return out;
  }, publisherId);
}

// ---------------------------------------------------------------------------------------------
// The call, once; the tests after it read `figures`.

let figures = null;

test('a consultation: the Chromium doctor and the aiortc patient', { timeout: CALL_TEST_TIMEOUT_MS }, (t) =>
  withBrowser(HOST_RULES, (browser) =>
    withClinicServer('interop', async (server, people) => {
      const patientLink = new URL(server.links.patient);
      const ws = `ws://127.0.0.1:${server.httpPort}/ws`;
      const client = startAiortc([
        '--ws', ws,
        '--token', patientLink.searchParams.get('token'),
        '--appointment', patientLink.searchParams.get('appointment'),
      ]);
      let ok = false;
      try {
        await waitClient(client, 'checked in, waiting', (s) => s.state === 'waiting');

        const doctor = await openPage(browser, 'doctor', server.links.doctor);
        people.push(doctor);
        await waitForState(doctor, 'the console', (s) => s.state === 'idle' && s.connection === 'authenticated');
        await waitFor('the aiortc patient in the doctor’s queue', async () => {
          const rows = await doctor.page.locator('#queue-body tr').allTextContents();
          return { ok: rows.length === 1 && !(await doctor.page.locator('#btn-invite-next').isDisabled()), detail: rows };
        });
        await doctor.page.click('#btn-invite-next');
        await waitInCall(doctor);
        const joined = await waitClient(client, 'joined the consultation', (s) => !!s.participant_id);
        assert.equal(joined.consultation, (await pageState(doctor)).consultation, 'both are in the same consultation');
        const aiortcId = joined.participant_id;

        // (a), measured: Chromium decodes aiortc's camera and receives its tone. Bounded; what
        // was reached is asserted below.
        let chromium = null;
        await waitFor("Chromium to decode aiortc's video and receive its audio", async () => {
          chromium = await chromiumFrom(doctor, aiortcId);
          const ok = (chromium.video?.framesDecoded || 0) >= MIN_VIDEO_FRAMES && (chromium.audio?.packetsReceived || 0) >= MIN_AUDIO_PACKETS;
          return { ok, detail: chromium };
        }).catch((err) => t.diagnostic(`not reached: ${err.message.split('\n')[0]}`));

        // (b), measured: aiortc decodes the doctor's camera and microphone.
        const enough = (s) => {
          const announced = Object.entries(s.announced || {});
          const frames = (kind) => announced.filter(([, k]) => k === kind).map(([mid]) => (s.frames || {})[mid] || 0);
          const video = frames('video');
          const audio = frames('audio');
          return video.length > 0 && audio.length > 0 && video.every((n) => n >= MIN_VIDEO_FRAMES) && audio.every((n) => n >= MIN_AUDIO_FRAMES);
        };
        await waitClient(client, "to decode the doctor's video and audio", enough).catch((err) =>
          t.diagnostic(`not reached: ${err.message.split('\n')[0]}`),
        );
        // Once more for the final counts (unless aiortc is gone from the page by now).
        const final = await chromiumFrom(doctor, aiortcId);
        if ((final.video?.framesDecoded || 0) >= (chromium?.video?.framesDecoded || 0)) chromium = final;
        const doctorSnap = await snapshot(doctor);
        const result = await stopAiortc(client);
        figures = { chromium, result, doctorId: doctorSnap.participantId, aiortcId };
        // The network rule (the client checks it too): aiortc offered loopback candidates only.
        assert.ok(result.local_candidates.length > 0, 'aiortc offered candidates');
        for (const c of result.local_candidates) assert.match(c.split(' ')[4], /^127\./, `aiortc candidate on loopback: ${c}`);

        const { server_sdps: sdps, client_offers: offers, events, ...rest } = result;
        t.diagnostic(`Chromium (doctor) from aiortc: ${JSON.stringify(chromium)}`);
        t.diagnostic(`aiortc: ${JSON.stringify({ ...rest, remote: undefined })}`);
        t.diagnostic(`aiortc decoded: ${JSON.stringify(result.remote)}`);
        t.diagnostic(`server SDPs to aiortc: ${sdps.map((s) => `${s.type}@${s.at}s (${sdpSections(s.sdp).length} m-sections)`).join(', ')}`);
        ok = true;
      } finally {
        if (!client.exited) client.proc.kill('SIGKILL');
        if (!ok) {
          dumpAiortc(client);
          await dumpPages(people);
        }
      }
    }),
  ),
);

function needFigures() {
  assert.ok(figures, 'the call did not complete (see the first test)');
  return figures;
}

/** Why media may be missing: aiortc's own view of its session. */
function aiortcSession({ result }) {
  return `aiortc: connected at ${result.connected_at} s, stopped by ${JSON.stringify(result.stop_reason)}, errors ${JSON.stringify(result.errors)}`;
}

test('(a) Chromium decodes the aiortc camera and receives its audio', () => {
  const f = needFigures();
  const { chromium } = f;
  assert.equal(chromium.tracks.filter((x) => x.kind === 'video').length, 1, `Chromium was announced aiortc's one video track: ${JSON.stringify(chromium.tracks)}; ${aiortcSession(f)}`);
  assert.equal(chromium.tracks.filter((x) => x.kind === 'audio').length, 1, `and its one audio track: ${JSON.stringify(chromium.tracks)}`);
  assert.ok((chromium.video?.framesDecoded || 0) >= MIN_VIDEO_FRAMES, `Chromium decoded ${chromium.video?.framesDecoded} frames of aiortc's video, want >= ${MIN_VIDEO_FRAMES}: ${JSON.stringify(chromium.video)}; ${aiortcSession(f)}`);
  assert.match(chromium.video.codec || '', /VP8/i, "aiortc's camera is VP8");
  assert.ok((chromium.audio?.packetsReceived || 0) >= MIN_AUDIO_PACKETS, `Chromium received ${chromium.audio?.packetsReceived} audio packets from aiortc, want >= ${MIN_AUDIO_PACKETS}: ${JSON.stringify(chromium.audio)}`);
  assert.match(chromium.audio.codec || '', /opus/i, "aiortc's tone is Opus");
  // Decoded and not silence: aiortc sends a 440 Hz tone.
  assert.ok(chromium.audio.totalSamplesReceived > 0 && chromium.audio.totalAudioEnergy > 0, `Chromium decoded aiortc's tone: ${JSON.stringify(chromium.audio)}`);
});

test('(b) aiortc decodes the Chromium camera and microphone', () => {
  const f = needFigures();
  const { result, doctorId } = f;
  assert.notEqual(result.connected_at, null, `aiortc's peer connection connected; ${aiortcSession(f)}`);
  const fromDoctor = result.track_added.filter((x) => x.participant_id === doctorId);
  const video = fromDoctor.filter((x) => x.kind === 'video');
  const audio = fromDoctor.filter((x) => x.kind === 'audio');
  assert.equal(video.length, 1, `aiortc was announced the doctor's camera: ${JSON.stringify(result.track_added)}`);
  assert.equal(audio.length, 1, `aiortc was announced the doctor's microphone: ${JSON.stringify(result.track_added)}`);
  const frames = (mid) => result.remote[mid]?.frames || 0;
  assert.ok(frames(video[0].mid) >= MIN_VIDEO_FRAMES, `aiortc decoded ${frames(video[0].mid)} video frames on mid ${video[0].mid}, want >= ${MIN_VIDEO_FRAMES}: ${JSON.stringify(result.remote)}`);
  assert.ok(frames(audio[0].mid) >= MIN_AUDIO_FRAMES, `aiortc decoded ${frames(audio[0].mid)} audio frames on mid ${audio[0].mid}, want >= ${MIN_AUDIO_FRAMES}: ${JSON.stringify(result.remote)}`);
  assert.deepEqual(result.errors, [], 'the aiortc client saw no error');
});

test('(c) server SDP: every m-section carries the candidates', () => {
  const { result } = needFigures();
  assert.ok(result.server_sdps.length >= 2, `the server sent aiortc an answer and an offer: ${result.server_sdps.map((s) => s.type)}`);
  const problems = result.server_sdps.flatMap((s, i) => sdpProblems(`${s.type} #${i}`, s.sdp, Object.keys(result.publish_mids)).candidates);
  assert.deepEqual(problems, [], 'each non-rejected m-section has an a=candidate');
});

test('(c) server SDP: every m-section carries a=end-of-candidates', () => {
  const { result } = needFigures();
  const problems = result.server_sdps.flatMap((s, i) => sdpProblems(`${s.type} #${i}`, s.sdp, Object.keys(result.publish_mids)).endOfCandidates);
  assert.deepEqual(problems, [], 'each non-rejected m-section has a=end-of-candidates');
});

test('(c) server SDP: publish lines offered sendrecv are recvonly, without msid or ssrc', () => {
  const { result } = needFigures();
  const publishMids = Object.keys(result.publish_mids);
  assert.equal(publishMids.length, 2, `aiortc published a camera and a microphone: ${JSON.stringify(result.publish_mids)}`);
  for (const offer of result.client_offers) {
    for (const s of sdpSections(offer).filter((x) => publishMids.includes(x.mid))) {
      assert.equal(s.direction, 'sendrecv', `aiortc offered mid ${s.mid} sendrecv (the case under test)`);
    }
  }
  const answers = result.server_sdps.filter((s) => s.type === 'answer');
  assert.ok(answers.length >= 1, 'the server answered');
  const problems = result.server_sdps.flatMap((s, i) => sdpProblems(`${s.type} #${i}`, s.sdp, publishMids).publish);
  assert.deepEqual(problems, [], 'aiortc publish lines: recvonly (or inactive), no a=msid, no a=ssrc');
});

test('(d) aiortc "track" events only for the mids the server sends on', () => {
  const { result } = needFigures();
  const announced = result.track_added.map((x) => x.mid).sort();
  const fired = result.track_events.map((x) => x.mid);
  const publishMids = Object.keys(result.publish_mids);
  const phantoms = fired.filter((mid) => !announced.includes(mid));
  assert.deepEqual(
    phantoms.map((mid) => `${mid}${publishMids.includes(mid) ? ' (aiortc publishes on it)' : ''}`),
    [],
    `no phantom remote track: aiortc's "track" fired on ${JSON.stringify(result.track_events)}, the server announced ${JSON.stringify(result.track_added)}`,
  );
  assert.deepEqual([...new Set(fired)].filter((mid) => announced.includes(mid)).sort(), announced, 'a "track" event for each announced mid');
});
