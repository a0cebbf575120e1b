// A change of network in the middle of a call (issue 10): one participant ("mover", a patient
// walking from Wi-Fi to 4G) runs its Chromium in a network namespace with two networks to the
// server (tests/impair/netns.sh: network 1 is the first veth, 127.77.X.2; network 2 a second
// veth, 127.78.X.2, added with `link2`); the other ("alice") sits in the root namespace. Both
// decode each other, then the mover's network changes:
//
//   1. migrate: both networks are up from the start; the network carrying the call goes down
//      (address and link). The page's path watchdog sees the received bytes stop and replaces
//      its peer connection (`renew`), which gathers on the network that is left;
//   2. restart: only network 1 is up; it goes dark (everything it carries is dropped on both
//      receiving sides, the interface stays up) and network 2 appears; the page (with
//      ?recover=restart) restarts ICE, which gathers on network 2;
//   3. renew: the same as 2 with the page's default: a fresh peer connection behind the same
//      participant;
//   4. uplink: both networks up; only what the mover sends on the network carrying the call is
//      lost (its downlink works, so its watchdog sees nothing): the server, hearing nothing for
//      a second, sends `restart_ice`, and the page renews its peer connection;
//   5. rebind: a NAT rebinding (`netns.sh rebind`): the mover's UDP leaves from new ports, the
//      mover does not know; the server takes its media from there on its SRTP (no restart, no
//      renewal: the path migrates without one).
//
// Asserted: media flows again both ways within a bounded wait; the participant ids, the track
// ids each receives of the other and the mover's seat in the room are unchanged (alice never
// sees it leave); the page restarted ICE (restart) or renewed (renew, uplink) and the server
// counted it; in the uplink case the server asked. Measured (and printed, not asserted: timing
// depends on the machine): the longest gap in the mover's video frames and audio packets as
// alice receives them, sampled every 100 ms. The issue's targets are at most 0.5 s for a
// migration and 2 s with a restart.
//
// Needs root for the namespaces (skips and says why without it). Run:
//   cd tests/browser && HUIZHEN_BIN=../../target/release/huizhen node --test netchange.test.mjs
//   node netchange.test.mjs bench [N]   N runs of each case, the gaps as a table

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  impairmentUnavailable,
  join,
  launch,
  metrics,
  namespaceDown,
  namespaceUp,
  netnsAsync,
  netnsLog,
  startServerAt,
  stopServerAt,
} from './adaptive.mjs';
import { sleep, waitFor } from './harness.mjs';

const WAIT_MS = 30_000;
/** Sampling period of the gap measurement. */
const TICK_MS = 100;
/** How long media is sampled after it came back. */
const AFTER_MS = 3000;

function parseInfo(text) {
  return Object.fromEntries(
    text
      .trim()
      .split('\n')
      .map((l) => l.split('='))
      .filter((kv) => kv.length === 2),
  );
}

/** What a page receives from `fromId`: video frames decoded and audio packets, summed. */
function received(person, fromId) {
  return person.page.evaluate(async (fromId) => {
    const h = window.huizhen;
    if (!h || !h.pc) return null;
    const mids = new Map();
    for (const [, t] of h.remoteTracks) if (t.participant_id === fromId) mids.set(t.mid, t.kind);
    const stats = await h.pc.getStats();
    let frames = 0;
    let packets = 0;
    let local = null;
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && mids.has(s.mid)) {
        if (s.kind === 'video') frames += s.framesDecoded || 0;
        else packets += s.packetsReceived || 0;
      } else if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        local = pair ? stats.get(pair.localCandidateId)?.address || null : null;
      }
    });
    return {
      t: Date.now(),
      frames,
      packets,
      local,
      id: h.participantId,
      tracks: [...h.remoteTracks].filter(([, t]) => t.participant_id === fromId).map(([id]) => id).sort(),
      left: h.events.filter((e) => e.dir === 'in' && e.type === 'participant_left').map((e) => e.msg.participant_id),
      gen: h.generation,
      restarts: h.events.filter((e) => e.type === 'ice_restart').map((e) => e.msg.why),
      renewals: h.events.filter((e) => e.type === 'pc_renewed').map((e) => e.msg.why),
      timeline: h.events
        .filter((e) =>
          ['ice_restart', 'pc_renewed', 'socket_replaced', 'socket_open', 'socket_closed', 'resumed', 'connection_state', 'answer', 'offer'].includes(e.type),
        )
        .map((e) => ({ at: e.at, dir: e.dir, type: e.type, state: e.msg.state })),
    };
  }, fromId);
}

/** Whether `field` grew from `prev` to `s` (a new peer connection counts from zero). */
function grew(prev, s, field) {
  return prev.gen !== s.gen ? s[field] > 0 : s[field] > prev[field];
}

/** The first of `samples` on the same peer connection as the last one. */
function sameGenerationStart(samples) {
  const last = samples.at(-1);
  return samples.find((s) => s.gen === last.gen);
}

/** The longest interval (ms) in `samples` (t ascending) between growths of `field`, from `from`. */
function longestGap(samples, field, from) {
  let prev = null;
  let lastGrowth = null;
  let gap = 0;
  for (const s of samples) {
    if (s.t >= from) {
      if (lastGrowth === null) lastGrowth = s.t;
      else if (prev && grew(prev, s, field)) {
        gap = Math.max(gap, s.t - lastGrowth);
        lastGrowth = s.t;
      }
    }
    prev = s;
  }
  return gap;
}

async function flowing(label, receiver, fromId) {
  const first = await received(receiver, fromId);
  await waitFor(label, async () => {
    const now = await received(receiver, fromId);
    const ok = !!(now && first && now.frames > first.frames + 5 && now.packets > first.packets + 10);
    return { ok, detail: { first, now } };
  }, WAIT_MS, 200);
}

/** One run of `kind` ('migrate' | 'restart'): the figures. */
export async function runMove(kind, log = (m) => console.error(m)) {
  const ns = await namespaceUp();
  let server = null;
  const browsers = [];
  try {
    netnsLog(['link2', ns.name]);
    const dark = kind === 'restart' || kind === 'renew';
    if (dark || kind === 'rebind') netnsLog(['link', ns.name, '2', 'down']);
    if (kind === 'rebind') netnsLog(['rebind', ns.name, 'prepare']);
    server = await startServerAt(ns.rootAddr, `move-${kind}`);
    const rootBrowser = await launch(server, {});
    browsers.push(rootBrowser);
    const nsBrowser = await launch(server, {}, ns.ns);
    browsers.push(nsBrowser);
    const room = `move-${kind}`;
    const alice = await join(rootBrowser, server, room, 'alice');
    // The restart case shows the ICE restart (the page's fallback); the others the page's
    // default, a fresh peer connection.
    const mover = await join(nsBrowser, server, room, 'mover', kind === 'restart' ? '&recover=restart' : '');
    await flowing('alice receives the mover', alice, mover.id);
    await flowing('the mover receives alice', mover, alice.id);
    if (dark) {
      netnsLog(['link', ns.name, '2', 'up']);
      await sleep(3000); // the browser notices the new network (not gathered on: no restart yet)
    }
    const before = { alice: await received(alice, mover.id), mover: await received(mover, alice.id) };
    assert.ok(before.alice.tracks.length >= 2, `alice has the mover's tracks: ${JSON.stringify(before.alice)}`);
    const metricsBefore = await metrics(server);
    const restartsBefore = metricsBefore.huizhen_sfu_ice_restarts_total || 0;
    const renewalsBefore = metricsBefore.huizhen_sfu_session_renewals_total || 0;
    const movesBefore = metricsBefore.huizhen_sfu_media_source_moves_total || 0;
    const asksBefore = metricsBefore.huizhen_sfu_ice_restart_requests_total || 0;

    // Sample both directions every TICK_MS while the network changes.
    const seen = { alice: [], mover: [] };
    let sampling = true;
    const sampler = (async () => {
      const end = Date.now() + 60_000;
      while (sampling && Date.now() < end) {
        const tick = Date.now();
        const [a, m] = await Promise.all([received(alice, mover.id).catch(() => null), received(mover, alice.id).catch(() => null)]);
        if (a) seen.alice.push(a);
        if (m) seen.mover.push(m);
        await sleep(Math.max(0, TICK_MS - (Date.now() - tick)));
      }
    })();
    await sleep(1000);
    const moverLocal = seen.mover.at(-1)?.local;
    const t0 = Date.now();
    if (kind === 'rebind') {
      // The carrier's NAT maps the mover's UDP to new ports; the mover does not know.
      log(`rebind: the call runs over ${moverLocal}; its NAT mapping changes`);
      await netnsAsync(['rebind', ns.name, 'now']);
    } else if (kind === 'migrate') {
      // The network the call runs on goes away.
      const network = moverLocal && moverLocal.startsWith('127.78.') ? '2' : '1';
      log(`migrate: the call runs over ${moverLocal} (network ${network}); taking it down`);
      await netnsAsync(['link', ns.name, network, 'down']);
    } else if (kind === 'uplink') {
      // Only what the mover sends on the network it uses is lost: it still receives, so its
      // own watchdog sees nothing; the server, hearing nothing, asks it to restart ICE.
      const network = moverLocal && moverLocal.startsWith('127.78.') ? '2' : '1';
      log(`uplink: the call runs over ${moverLocal} (network ${network}); its uplink goes dark`);
      await netnsAsync(['blackhole', ns.name, network, 'on', 'up']);
      // Its system notices the network has no way out and routes new connections over the
      // other one (the signaling socket rode on the broken one too).
      await netnsAsync(['prefer', ns.name, network === '1' ? '2' : '1']);
    } else {
      log(`${kind}: the call runs over ${moverLocal}; network 1 goes dark`);
      await netnsAsync(['blackhole', ns.name, '1', 'on']);
      // The phone's system notices and routes new connections over the other network.
      await netnsAsync(['prefer', ns.name, '2']);
    }
    // Media comes back both ways (bounded).
    await waitFor(`media from the mover again after the ${kind}`, async () => {
      const a = seen.alice.filter((s) => s.t > t0 + 200);
      const base = a.length ? sameGenerationStart(a) : null;
      const ok = a.length > 2 && a.at(-1).frames > base.frames + 10 && a.at(-1).packets > base.packets + 20;
      return { ok, detail: { alice: a.at(-1), mover: seen.mover.at(-1) } };
    }, WAIT_MS, 200);
    await waitFor(`media to the mover again after the ${kind}`, async () => {
      // A renewal starts the mover's counters from zero on its new peer connection.
      const m = seen.mover.filter((s) => s.t > t0 + 200);
      const base = m.length ? sameGenerationStart(m) : null;
      const ok = m.length > 2 && m.at(-1).frames > base.frames + 10 && m.at(-1).packets > base.packets + 20;
      return { ok, detail: m.at(-1) };
    }, WAIT_MS, 200);
    await sleep(AFTER_MS);
    sampling = false;
    await sampler;

    const after = { alice: seen.alice.at(-1), mover: seen.mover.at(-1) };
    const metricsAfter = await metrics(server);
    const restartsAfter = metricsAfter.huizhen_sfu_ice_restarts_total || 0;
    const asksAfter = metricsAfter.huizhen_sfu_ice_restart_requests_total || 0;
    const renewalsAfter = metricsAfter.huizhen_sfu_session_renewals_total || 0;
    const movesAfter = metricsAfter.huizhen_sfu_media_source_moves_total || 0;
    const figures = {
      kind,
      path: `${moverLocal} -> ${after.mover.local}`,
      videoGapMs: longestGap(seen.alice, 'frames', t0 - 500),
      audioGapMs: longestGap(seen.alice, 'packets', t0 - 500),
      moverVideoGapMs: longestGap(seen.mover, 'frames', t0 - 500),
      moverAudioGapMs: longestGap(seen.mover, 'packets', t0 - 500),
      pageRestarts: after.mover.restarts,
      pageRenewals: after.mover.renewals,
      serverRestarts: restartsAfter - restartsBefore,
      serverRenewals: renewalsAfter - renewalsBefore,
      serverSourceMoves: movesAfter - movesBefore,
      serverAsks: asksAfter - asksBefore,
      moverTimeline: after.mover.timeline
        .filter((e) => e.at >= t0 - 500)
        .map((e) => `${e.at - t0}ms ${e.dir} ${e.type}${e.state ? ` ${e.state}` : ''}`),
    };
    // The same call: ids, tracks, nobody left.
    assert.equal(after.alice.id, before.alice.id, 'alice is the same participant');
    assert.equal(after.mover.id, before.mover.id, 'the mover is the same participant');
    assert.deepEqual(after.alice.tracks, before.alice.tracks, "alice receives the mover's same tracks");
    assert.deepEqual(after.mover.tracks, before.mover.tracks, "the mover receives alice's same tracks");
    assert.deepEqual(after.alice.left, [], 'alice never saw anyone leave');
    if (kind === 'rebind') {
      // The mover did nothing: same pair, no restart, no renewal; the server took its media
      // from the new port on its SRTP.
      assert.equal(after.mover.local, moverLocal, `the mover kept its path: ${figures.path}`);
      assert.deepEqual([...after.mover.restarts, ...after.mover.renewals], [], 'the mover did nothing');
      assert.ok(figures.serverSourceMoves >= 1, `the server took the media from the new port: ${figures.serverSourceMoves}`);
    } else {
      assert.notEqual(after.mover.local, moverLocal, `the mover's media left the old network: ${figures.path}`);
    }
    if (kind === 'uplink') {
      assert.ok(figures.serverAsks >= 1, `the server asked for a restart: ${figures.serverAsks}`);
      assert.ok(
        after.mover.renewals.includes('asked by the server'),
        `the page renewed its peer connection when asked: ${JSON.stringify(after.mover.renewals)}`,
      );
      assert.ok(figures.serverRenewals >= 1, `the server counted the renewal: ${figures.serverRenewals}`);
    }
    if (kind === 'renew') {
      assert.ok(after.mover.renewals.length >= 1, `the page renewed its peer connection: ${JSON.stringify(after.mover.renewals)}`);
      assert.ok(figures.serverRenewals >= 1, `the server counted the renewal: ${figures.serverRenewals}`);
      assert.ok(after.mover.gen > before.mover.gen, 'a new peer connection');
    }
    if (kind === 'restart') {
      assert.ok(after.mover.restarts.length >= 1, `the page restarted ICE: ${JSON.stringify(after.mover.restarts)}`);
      assert.ok(figures.serverRestarts >= 1, `the server counted the restart: ${figures.serverRestarts}`);
    }
    return figures;
  } finally {
    for (const b of browsers) await b.close().catch(() => {});
    if (server) await stopServerAt(server);
    namespaceDown(ns.name);
  }
}

const unavailable = process.argv[2] === 'bench' ? null : impairmentUnavailable();

if (process.argv[2] === 'bench') {
  const n = Number(process.argv[3] || 3);
  const rows = [];
  for (const kind of ['migrate', 'restart', 'renew', 'uplink', 'rebind']) {
    for (let i = 0; i < n; i++) rows.push(await runMove(kind));
  }
  console.log('| case | path | alice: video gap | alice: audio gap | mover: video gap | mover: audio gap | page restarts | page renewals |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(
      `| ${r.kind} | ${r.path} | ${r.videoGapMs} ms | ${r.audioGapMs} ms | ${r.moverVideoGapMs} ms | ${r.moverAudioGapMs} ms | ${r.pageRestarts.join(', ') || 0} | ${r.pageRenewals.join(', ') || 0} |`,
    );
  }
  console.log(JSON.stringify(rows));
} else {
  after(() => {});
  test('migrate: the network carrying the call goes down, ICE moves to the other one', { skip: unavailable || false }, async (t) => {
    const f = await runMove('migrate', (m) => t.diagnostic(m));
    t.diagnostic(JSON.stringify(f));
  });
  test('restart: the network goes dark, another appears, the page restarts ICE', { skip: unavailable || false }, async (t) => {
    const f = await runMove('restart', (m) => t.diagnostic(m));
    t.diagnostic(JSON.stringify(f));
  });
  test('renew: the network goes dark, another appears, the page replaces its peer connection', { skip: unavailable || false }, async (t) => {
    const f = await runMove('renew', (m) => t.diagnostic(m));
    t.diagnostic(JSON.stringify(f));
  });
  test('uplink: what the mover sends is lost, the server asks it to restart ICE', { skip: unavailable || false }, async (t) => {
    const f = await runMove('uplink', (m) => t.diagnostic(m));
    t.diagnostic(JSON.stringify(f));
  });
  test('rebind: the NAT gives the mover new ports, the server follows its media without a restart', { skip: unavailable || false }, async (t) => {
    const f = await runMove('rebind', (m) => t.diagnostic(m));
    t.diagnostic(JSON.stringify(f));
  });
}
