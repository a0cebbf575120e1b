// Adaptive media under an impaired downlink (issue 9), with real browsers: three Chromium
// participants in one room, "weak" in a network namespace whose downlink is impaired 10 s after
// everyone decodes everyone (tests/impair/netns.sh; scenarios and the runner in adaptive.mjs).
//
// The assertions prove that adaptation happened, not timing:
//   - the weak participant keeps decoding each remote video in every 5 s window after 5 s of
//     adaptation (or the track was announced paused), where the scenario expects video;
//   - at 120 kbit/s its video is paused and the pause announced (track_paused): audio only;
//   - its audio stays intact: concealed samples at most the issue's target for the scenario;
//   - joining while impaired, it decodes a first frame of each publisher (within the 30 s bound
//     of every wait, not the issue's 3 s target, which the bench reports), or the video was
//     announced paused (at 300 kbit/s one video fits: the speaker's);
//   - the others are not disturbed: each keeps >= GOOD_FPS_RATIO of the fps it received before
//     the impairment and the same frame height (unless its publisher is CPU-limited, a machine
//     effect that is printed), and each good publisher encodes at most one keyframe per 10 s
//     more than before the impairment (the weak one's keyframe requests must not reach them);
//   - and, to prove the harness itself works: at a rate limit the weak participant receives no
//     more than the rate allows.
// On the server before issue 9 these fail (0 fps at 300 kbit/s, 14-23 % audio concealed,
// keyframes every ~3 s): tests/impair/BEFORE.md has the figures.
//
// Needs root (network namespaces, tc, iptables) and iptables + libnetfilter-queue-dev + gcc
// (tests/run-all.sh installs them); skipped, saying why, without them.
//
// Env: as adaptive.mjs, and
//   HUIZHEN_ADAPTIVE_MEASURE_ONLY=1  run and print the figures, assert nothing
//   HUIZHEN_ADAPTIVE_SCENARIOS=a,b   scenarios to run (default 300k,loss10,120k,join-300k)
//   HUIZHEN_ADAPTIVE_MEASURE_S       measured seconds per scenario (default 45, as the bench)
//   HUIZHEN_ADAPTIVE_WARMUP_S        most seconds waited for the cameras' ramp-up (default 20 here)
//   HUIZHEN_ADAPTIVE_TIMEOUT_MS      bound of the whole file (default 600000)

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

const env = process.env;
// The test measures 45 s per scenario, as the issue's targets are defined (the bench too);
// set before the runner module reads it.
env.HUIZHEN_ADAPTIVE_MEASURE_S ||= '45';
env.HUIZHEN_ADAPTIVE_WARMUP_S ||= '20';
const { ADAPT_S, WINDOW_S, impairmentUnavailable, runScenario, scenario, table } = await import('./adaptive.mjs');

const MEASURE_ONLY = env.HUIZHEN_ADAPTIVE_MEASURE_ONLY === '1';
const IDS = (env.HUIZHEN_ADAPTIVE_SCENARIOS || '300k,loss10,120k,join-300k').split(',').filter(Boolean);
const TIMEOUT_MS = Number(env.HUIZHEN_ADAPTIVE_TIMEOUT_MS || 600_000);

/** The good participants keep at least this share of the fps they received before the impairment. */
const GOOD_FPS_RATIO = 0.75;
/** Keyframes per 10 s a good publisher may encode beyond its rate before the impairment. */
const EXTRA_KEYFRAMES_PER_10S = 1;
/** At a rate limit, the weak participant's received bitrate may exceed it by this factor (bursts, sampling). */
const RATE_SLACK = 1.15;

const watchdog = setTimeout(() => {
  console.error(`\nFAIL: the adaptive-media test did not finish within ${TIMEOUT_MS} ms; aborting`);
  process.exit(1); // adaptive.mjs's exit handler kills the server and takes the namespaces down
}, TIMEOUT_MS);
watchdog.unref();

const why = impairmentUnavailable();
const results = [];
after(() => {
  if (results.length) console.log(`\nadaptive media (${MEASURE_ONLY ? 'measure only' : 'asserted'}):\n${table(results)}\n`);
});

if (why) {
  console.log(`SKIP adaptive-media tests: ${why}`);
  test('adaptive media under an impaired downlink', { skip: why }, () => {});
} else {
  for (const id of IDS) {
    const sc = scenario(id);
    test(`weak downlink: ${sc.label}`, async () => {
      const r = await runScenario(sc);
      results.push(r);
      console.log(JSON.stringify({ scenario: id, weak: r.weak, firstFrameS: r.firstFrameS, pauseAnnounced: r.pauseAnnounced, publishers: r.publishers, publishersPre: r.publishersPre, good: r.good, goodPre: r.goodPre, loadavg: r.loadavg }));
      if (MEASURE_ONLY) {
        console.log(`MEASURE ONLY (HUIZHEN_ADAPTIVE_MEASURE_ONLY=1): ${id} measured, nothing asserted`);
        return;
      }
      check(sc, r);
    });
  }
}

function check(sc, r) {
  const t = sc.targets;
  const problems = [];
  const w = r.weak;

  // The harness: the impairment was in force.
  if (sc.shape?.rate) {
    const limit = parseInt(sc.shape.rate, 10) * (/mbit/.test(sc.shape.rate) ? 1000 : 1);
    if (w.rxKbps > limit * RATE_SLACK) problems.push(`harness: weak received ${w.rxKbps} kbit/s through a ${sc.shape.rate} limit`);
  }

  // Video keeps being decoded (or is announced paused).
  if (t.weakFpsMin != null) {
    if (w.video.length < 2) problems.push(`weak: ${w.video.length} remote video tracks, want 2`);
    for (const v of w.video) {
      if (v.deadWindowsAfterAdapt.length) {
        problems.push(
          `weak: no frame decoded from ${v.from} in the ${WINDOW_S} s windows starting at ${v.deadWindowsAfterAdapt.map((s) => `+${s} s`).join(', ')} ` +
            `(after ${ADAPT_S} s of adaptation; ${v.fps} fps over the window, not announced paused)`,
        );
      }
    }
  }
  if (t.audioOnlyAnnounced && !r.pauseAnnounced) {
    problems.push(`weak: video not paused with track_paused (audio only expected); video ${w.video.map((v) => `${v.from} ${v.fps} fps, events ${JSON.stringify(v.pauseEvents)}`).join('; ')}`);
  }
  if (t.firstFrameS != null) {
    // Every publisher's video is decoded, or (where the scenario lets the rest pause) was
    // announced paused; at least one is decoded.
    const firsts = Object.entries(r.firstFrameS || {});
    if (!firsts.some(([, s]) => s != null)) problems.push('weak joined while impaired and never decoded a frame of anyone (30 s)');
    for (const [who, s] of firsts) {
      const announced = w.video.find((v) => v.from === who)?.pauseEvents?.includes('track_paused');
      if (s == null && !(t.restMayPause && announced)) problems.push(`weak joined while impaired and never decoded a frame of ${who} (30 s), nor was it announced paused`);
    }
  }

  // Audio intact.
  if (t.concealedMaxPct != null && !(w.audioConcealedPct != null && w.audioConcealedPct <= t.concealedMaxPct)) {
    problems.push(`weak: audio concealed ${w.audioConcealedPct} % > ${t.concealedMaxPct} % (${w.audio.map((a) => `${a.from} ${a.concealedPct} %`).join(', ')})`);
  }

  // The others not disturbed.
  for (const [name, g] of Object.entries(r.good)) {
    const pre = r.goodPre[name];
    for (const v of g.video) {
      const p = pre.video.find((x) => x.track_id === v.track_id);
      if (!p) continue;
      if (v.fps < p.fps * GOOD_FPS_RATIO) problems.push(`${name}: received ${v.fps} fps from ${v.from}, ${p.fps} before the impairment`);
      const cpu = /cpu/.test(r.publishers[v.from]?.qualityLimitation || '');
      if (v.height != null && p.height != null && v.height < p.height) {
        const msg = `${name}: received ${v.height}p from ${v.from}, ${p.height}p before the impairment`;
        if (cpu) console.log(`note (not failed, ${v.from}'s encoder is CPU-limited on this machine): ${msg}`);
        else problems.push(msg);
      }
    }
  }
  for (const name of ['alice', 'bob']) {
    const now = r.publishers[name];
    const pre = r.publishersPre[name];
    if (now && pre && now.keyframesPer10s > pre.keyframesPer10s + EXTRA_KEYFRAMES_PER_10S) {
      problems.push(`${name}'s camera: ${now.keyframesPer10s} keyframes / 10 s during the impairment, ${pre.keyframesPer10s} before (${now.plisReceived} PLIs received)`);
    }
  }
  if (problems.length && r.serverLog) {
    // What the server decided, for the failure's reader (RUST_LOG=huizhen::sfu=debug).
    const lines = fs
      .readFileSync(r.serverLog, 'utf8')
      .split('\n')
      .filter((l) => /allocation changed|overfilled|probe asked|probe proved|track paused|RED audio/.test(l))
      .slice(-120);
    console.log(`--- ${sc.id}: the server's allocation decisions (${r.serverLog}) ---\n${lines.join('\n')}`);
  }
  assert.deepEqual(problems, [], `${sc.label}: adaptation did not happen:\n  ${problems.join('\n  ')}`);
}
