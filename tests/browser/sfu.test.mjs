// End-to-end test of the huizhen SFU with real browsers.
//
// Starts the server binary (HUIZHEN_BIN, default <repo>/target/debug/huizhen; a relative path
// is taken from the repository root) on free ports of 127.0.0.1 and drives Debian's headless
// Chromium (/usr/bin/chromium, through playwright-core; no browser download). Each test has its
// own server and browser:
//   1. three participants over UDP: from each page's RTCPeerConnection stats, audio and video
//      of every other participant arrive and decode; a screen share reaches the others; stopping
//      it removes the track; sharing again works; leaving removes the leaver's tracks and
//      announces participant_left; the forwarding counters in /metrics moved;
//   2. offer glare: a client offer and a server offer cross (the test holds the server's offer
//      back in a WebSocket proxy); the browser rolls back, answers, offers again, and all media
//      still flows;
//   3. a participant without camera or microphone offers a data channel only and receives;
//   4. three participants against a server announcing only its ICE-TCP (passive, RFC 4571)
//      candidate: audio and video decode, over TCP;
//   5. a 5 s signaling outage: one page's WebSocket drops and stays away; media keeps flowing
//      both ways meanwhile, the page resumes as the same participant with the same tracks, and
//      the other never sees it leave;
//   6. an ICE restart: new ICE credentials on both sides, the same participant and tracks, media
//      flowing again both ways;
//   7. relay only (`iceTransportPolicy: "relay"`): two pages reach the server through its embedded
//      TURN over UDP, then TCP, then TLS (one server each, offering only that transport) and
//      decode each other; the selected pair's local candidate is a relay of that protocol and
//      the server's TURN metrics counted the allocations and relayed packets.
// Every wait is bounded (HUIZHEN_WAIT_MS) and the whole run too (HUIZHEN_TEST_TIMEOUT_MS);
// servers are killed whatever happens. The server, browser and stats helpers are in harness.mjs.
//
// Run: cd tests/browser && npm install && npm test
// Env (see harness.mjs): HUIZHEN_BIN (server binary), CHROMIUM_BIN (default /usr/bin/chromium),
//      HUIZHEN_TEST_TIMEOUT_MS (whole run, default 180000), HUIZHEN_WAIT_MS (each wait, 30000),
//      HUIZHEN_TEST_KEEP_LOGS=1 (print the server log path and keep it),
//      HUIZHEN_TEST_STATIC_FROM_DISK=1 (serve static/*.js, *.css from the work tree, not the binary's
//      copies; for client development without rebuilding the server).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  HOST_RULES,
  HOST_RULES_ICE_TCP,
  allPairs,
  closeAll,
  eventLines,
  mediaFromPublishers,
  newPerson,
  sleep,
  snapshot,
  startRun,
  startServer,
  waitFor,
  waitForMedia,
  withBrowser,
  withServer,
} from './harness.mjs';

startRun({ what: 'the browser test' });
after(closeAll);

// ---------------------------------------------------------------------------------------------
// Server

async function fetchMetrics(server) {
  const res = await fetch(`${server.apiBase}/metrics`, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200, 'GET /metrics status');
  return res.text();
}

/** Sum of all samples of a Prometheus metric, over all label sets. */
/** The sum of `name`'s samples, of those whose labels contain `labels` if given. */
function metricSum(text, name, labels = '') {
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name && (m[2] || '').includes(labels)) {
      found = true;
      sum += Number(m[3]);
    }
  }
  return found ? sum : null;
}

// ---------------------------------------------------------------------------------------------
// Pages

async function openParticipant(browser, server, room, name, { beforeGoto, query = '' } = {}) {
  const participant = await newPerson(browser, name, { viewport: { width: 960, height: 640 } }, { beforePage: beforeGoto });
  const { page } = participant;
  await page.goto(`${server.pageBase}/room/${encodeURIComponent(room)}?name=${encodeURIComponent(name)}${query}`);
  try {
    participant.id = await waitFor(`${name} to join room ${room}`, async () => {
      const s = await page.evaluate(() =>
        window.huizhen
          ? { id: window.huizhen.participantId, state: window.huizhen.state, errors: window.huizhen.errors }
          : null,
      );
      return { ok: !!(s && s.id && s.state === 'joined'), value: s && s.id, detail: s };
    });
  } catch (err) {
    await dumpFailure([participant]);
    await participant.context.close().catch(() => {});
    throw err;
  }
  return participant;
}
/**
 * Wait until every participant receives audio and decodes video from every other one. With
 * `{fresh: true}`, counters must grow past their values at the call, i.e. media flows now.
 */
async function waitForMediaFromOthers(all, label, opts = {}) {
  await waitForMedia(label, allPairs(all), opts);
}

/** `sharer` starts a screen share; each of `viewers` must decode it. Returns viewer -> track id. */
async function shareScreen(sharer, viewers, label) {
  const known = new Map();
  for (const p of viewers) {
    const snap = await snapshot(p);
    known.set(p, new Set(snap.remoteTracks.map((t) => t.track_id)));
  }
  await sharer.page.evaluate(() => window.huizhen.startScreenShare());
  const trackIds = new Map();
  for (const p of viewers) {
    const seen = known.get(p);
    const snap = await waitFor(`${label}: ${p.name} to decode ${sharer.name}'s screen share`, async () => {
      const s = await snapshot(p);
      const res = mediaFromPublishers(s, [sharer], { audio: false, filter: (t) => !seen.has(t.track_id) });
      return { ok: res.ok, value: s, detail: { problems: res.problems, errors: s.errors, tracks: s.remoteTracks, inbound: s.inbound } };
    });
    const screen = snap.remoteTracks.filter((t) => t.participant_id === sharer.id && !seen.has(t.track_id));
    assert.equal(screen.length, 1, `${label}: ${p.name} got exactly one new track from ${sharer.name}`);
    assert.equal(screen[0].kind, 'video');
    trackIds.set(p, screen[0].track_id);
  }
  return trackIds;
}

/** `sharer` stops sharing; each viewer must get track_removed for the screen track. */
async function stopSharing(sharer, trackIds) {
  await sharer.page.evaluate(() => window.huizhen.stopScreenShare());
  for (const [p, trackId] of trackIds) {
    await waitFor(`${p.name} to get track_removed for ${sharer.name}'s screen track ${trackId}`, async () => {
      const s = await p.page.evaluate(
        (id) => ({
          removed: window.huizhen.events.some((e) => e.dir === 'in' && e.type === 'track_removed' && e.msg.track_id === id),
          still: window.huizhen.remoteTracks.has(id),
        }),
        trackId,
      );
      return { ok: s.removed && !s.still, detail: s };
    });
  }
}

/** Counts of the client's negotiation incidents (glare, stale answers, offer timeouts). */
async function negotiationIncidents(participants) {
  const out = {};
  for (const p of participants) {
    out[p.name] = await p.page.evaluate(() => {
      const counts = {};
      for (const e of window.huizhen.events) {
        if (e.dir === 'local' && ['offer_collision', 'stale_answer', 'offer_timeout'].includes(e.type)) {
          counts[e.type] = (counts[e.type] || 0) + 1;
        }
      }
      counts.offers_sent = window.huizhen.events.filter((e) => e.dir === 'out' && e.type === 'offer').length;
      counts.offers_received = window.huizhen.events.filter((e) => e.dir === 'in' && e.type === 'offer').length;
      return counts;
    });
  }
  return out;
}

/**
 * Proxy a page's signaling socket through the test so that server frames can be held back.
 * `hold()` arms it: from the next server `offer` on, server frames are queued until the page
 * sends an `offer` of its own, which is forwarded first; then the queue is delivered. That makes
 * the offers cross deterministically (glare).
 */
function glareProxy() {
  const proxy = { armed: false, holding: false, queue: [], crossed: 0 };
  proxy.install = (context) =>
    context.routeWebSocket(/\/ws$/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((frame) => {
        server.send(frame);
        if (proxy.holding && typeof frame === 'string' && JSON.parse(frame).type === 'offer') {
          proxy.holding = false;
          proxy.crossed += 1;
          for (const f of proxy.queue.splice(0)) ws.send(f);
        }
      });
      server.onMessage((frame) => {
        if (proxy.armed && typeof frame === 'string' && JSON.parse(frame).type === 'offer') {
          proxy.armed = false;
          proxy.holding = true;
        }
        if (proxy.holding) proxy.queue.push(frame);
        else ws.send(frame);
      });
    });
  proxy.hold = () => {
    proxy.armed = true;
  };
  return proxy;
}

async function assertNoErrors(participants) {
  for (const p of participants) {
    const errors = await p.page.evaluate(() => window.huizhen.errors);
    assert.deepEqual(errors, [], `${p.name} saw errors: ${JSON.stringify(errors)}`);
  }
}

/** On failure: the pages' signaling events, then their browser consoles. */
async function dumpFailure(participants) {
  for (const p of participants) {
    try {
      const events = await eventLines(p);
      console.error(`--- ${p.name} (${p.id}) signaling events ---`);
      console.error(events.slice(-60).join('\n'));
    } catch {
      // page closed
    }
  }
  for (const p of participants) {
    console.error(`--- ${p.name} (${p.id}) browser console, last lines ---`);
    console.error(p.console.slice(-40).join('\n'));
  }
}

/** One SFU server of its own for `fn(server, participants)`; see withServer. */
function withSfuServer(name, announce, fn) {
  return withServer(() => startServer(name, announce), dumpFailure, fn);
}

// ---------------------------------------------------------------------------------------------
// Tests

test('three participants over UDP: audio/video, screen share, leave, metrics', (t) =>
  withBrowser(HOST_RULES, (browser) =>
    withSfuServer('udp', { announceUdp: true, announceTcp: true }, async (server, participants) => {
      const room = 'room-x';
      for (const name of ['Alice', 'Bob', 'Carol']) {
        participants.push(await openParticipant(browser, server, room, name));
      }
      const [alice, bob, carol] = participants;
      const ids = new Set(participants.map((p) => p.id));
      assert.equal(ids.size, 3, 'participant ids are distinct');

      // 1. Everyone decodes everyone else's camera and receives their microphone.
      await waitForMediaFromOthers(participants, 'camera+microphone');
      await assertNoErrors(participants);

      // 2. Alice shares her screen; Bob and Carol decode it on the newly announced mid.
      const firstShare = await shareScreen(alice, [bob, carol], 'first screen share');
      // The camera tracks keep flowing alongside the share.
      await waitForMediaFromOthers(participants, 'camera+microphone during screen share', { fresh: true });

      // 3. Alice stops sharing: the screen track is removed for Bob and Carol.
      await stopSharing(alice, firstShare);
      await assertNoErrors(participants);

      // 3b. Sharing again reuses the (now inactive) transceiver: a new track reaches the others.
      const secondShare = await shareScreen(alice, [bob, carol], 'second screen share');
      for (const [p, id] of secondShare) {
        assert.notEqual(id, firstShare.get(p), `${p.name}: the second share has a new track id`);
      }
      await stopSharing(alice, secondShare);
      await assertNoErrors(participants);

      // 4. Carol leaves: Alice and Bob get track_removed for all her tracks, then participant_left.
      const carolTracks = new Map();
      for (const p of [alice, bob]) {
        const snap = await snapshot(p);
        const ts = snap.remoteTracks.filter((t) => t.participant_id === carol.id).map((t) => t.track_id);
        assert.ok(ts.length >= 2, `${p.name} knows Carol's audio and video tracks before she leaves: ${JSON.stringify(ts)}`);
        carolTracks.set(p, ts);
      }
      await carol.page.evaluate(() => window.huizhen.leave());
      await waitFor('Carol to get bye {reason: "left"}', async () => {
        const byes = await carol.page.evaluate(() =>
          window.huizhen.events.filter((e) => e.dir === 'in' && e.type === 'bye').map((e) => e.msg.reason),
        );
        return { ok: byes.includes('left'), detail: byes };
      });
      for (const p of [alice, bob]) {
        const ts = carolTracks.get(p);
        await waitFor(`${p.name} to see Carol's tracks removed and Carol leave`, async () => {
          const s = await p.page.evaluate(
            ({ ids, carolId }) => {
              const h = window.huizhen;
              const removed = new Set(
                h.events.filter((e) => e.dir === 'in' && e.type === 'track_removed').map((e) => e.msg.track_id),
              );
              return {
                missingRemovals: ids.filter((id) => !removed.has(id)),
                left: h.events.some((e) => e.dir === 'in' && e.type === 'participant_left' && e.msg.participant_id === carolId),
                stillListed: [...h.remoteTracks.values()].filter((t) => t.participant_id === carolId).length,
              };
            },
            { ids: ts, carolId: carol.id },
          );
          return { ok: s.missingRemovals.length === 0 && s.left && s.stillListed === 0, detail: s };
        });
      }
      // Alice and Bob still get each other's media after the renegotiation that removed Carol.
      const remaining = [alice, bob];
      await waitForMediaFromOthers(remaining, 'camera+microphone after Carol left', { fresh: true });
      await assertNoErrors(remaining);

      // 5. The forwarding counters moved.
      const metrics = await fetchMetrics(server);
      for (const name of ['huizhen_sfu_rtp_packets_received_total', 'huizhen_sfu_rtp_packets_sent_total']) {
        const sum = metricSum(metrics, name);
        assert.notEqual(sum, null, `metric ${name} is exported`);
        assert.ok(sum > 0, `metric ${name} = ${sum}, want > 0`);
      }
      t.diagnostic(`negotiation: ${JSON.stringify(await negotiationIncidents(participants.filter((p) => p.name !== 'Carol')))}`);
    }),
  ),
);

test('offer glare: a client offer crossing a server offer is resolved (browser polite, server impolite)', (t) =>
  withBrowser(HOST_RULES, (browser) =>
    withSfuServer('glare', { announceUdp: true, announceTcp: false }, async (server, participants) => {
      const room = 'room-glare';
      const proxy = glareProxy();
      const gina = await openParticipant(browser, server, room, 'Gina');
      participants.push(gina);
      const hal = await openParticipant(browser, server, room, 'Hal', { beforeGoto: proxy.install });
      participants.push(hal);
      await waitForMediaFromOthers(participants, 'camera+microphone before glare');

      // Gina's share makes the server offer Hal a new track; the proxy holds that offer until
      // Hal has sent an offer for his own share, so both offers are in flight at once.
      proxy.hold();
      await gina.page.evaluate(() => window.huizhen.startScreenShare());
      await waitFor('the server offer to Hal to be held', async () => ({ ok: proxy.holding, detail: proxy }));
      await hal.page.evaluate(() => window.huizhen.startScreenShare());
      await waitFor('the offers to cross', async () => ({ ok: proxy.crossed === 1 && !proxy.holding, detail: proxy }));

      // Hal rolled back, answered, and offered again; both shares arrive.
      await waitForMediaFromOthers(participants, 'camera+microphone+screen after glare', { videoTracksEach: 2, fresh: true });
      const collisions = await hal.page.evaluate(() =>
        window.huizhen.events.filter((e) => e.dir === 'local' && e.type === 'offer_collision').length,
      );
      assert.ok(collisions >= 1, `Hal saw the offer collision (${collisions})`);
      await assertNoErrors(participants);
      t.diagnostic(`negotiation: ${JSON.stringify(await negotiationIncidents(participants))}`);
    }),
  ),
);

test('a participant without camera or microphone still offers and receives the others', () =>
  withBrowser(HOST_RULES, (browser) =>
    withSfuServer('nodevices', { announceUdp: true, announceTcp: false }, async (server, participants) => {
      const room = 'room-no-devices';
      const ivy = await openParticipant(browser, server, room, 'Ivy');
      participants.push(ivy);
      const noDevices = (context) =>
        context.addInitScript(() => {
          navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException('no camera or microphone', 'NotFoundError'));
        });
      const jon = await openParticipant(browser, server, room, 'Jon', { beforeGoto: noDevices });
      participants.push(jon);
      // Jon publishes nothing: his first offer carries only a data channel.
      const firstOffer = await waitFor("Jon's first offer", async () => {
        const sdp = await jon.page.evaluate(
          () => window.huizhen.events.find((e) => e.dir === 'out' && e.type === 'offer')?.msg.sdp,
        );
        return { ok: !!sdp, value: sdp };
      });
      assert.match(firstOffer, /^m=application /m, 'the offer of a client without devices has a data channel');
      assert.doesNotMatch(firstOffer, /^m=(audio|video) /m, 'and no media sections');
      await waitFor('Jon to decode Ivy', async () => {
        const snap = await snapshot(jon);
        const res = mediaFromPublishers(snap, [ivy]);
        return { ok: res.ok, detail: res.problems };
      });
      const ivySnap = await snapshot(ivy);
      assert.equal(ivySnap.remoteTracks.filter((x) => x.participant_id === jon.id).length, 0, 'Ivy receives no track from Jon');
      await assertNoErrors(participants);
    }),
  ),
);

test('three participants over ICE-TCP only: audio/video', (t) =>
  withBrowser(HOST_RULES_ICE_TCP, (browser) =>
    withSfuServer('tcp', { announceUdp: false, announceTcp: true }, async (server, participants) => {
      const room = 'room-tcp';
      for (const name of ['Dana', 'Eli', 'Fay']) {
        participants.push(await openParticipant(browser, server, room, name));
      }
      await waitForMediaFromOthers(participants, 'camera+microphone over TCP');
      for (const p of participants) {
        const snap = await snapshot(p);
        assert.ok(snap.pair, `${p.name} has a selected candidate pair`);
        assert.equal(snap.pair.remote.protocol, 'tcp', `${p.name} uses a TCP candidate: ${JSON.stringify(snap.pair)}`);
        assert.equal(snap.pair.remote.port, server.tcpPort, `${p.name} talks to the server's TCP port`);
      }
      await assertNoErrors(participants);
      const metrics = await fetchMetrics(server);
      assert.ok(metricSum(metrics, 'huizhen_sfu_rtp_packets_sent_total') > 0, 'packets were forwarded over TCP');
      t.diagnostic(`negotiation: ${JSON.stringify(await negotiationIncidents(participants.filter((p) => p.name !== 'Carol')))}`);
    }),
  ),
);

test('a 5 s signaling outage: media keeps flowing, the page resumes as the same participant', (t) =>
  withBrowser(HOST_RULES, (browser) =>
    withSfuServer('resume', { announceUdp: true, announceTcp: false }, async (server, participants) => {
      const room = 'room-resume';
      const ann = await openParticipant(browser, server, room, 'Ann');
      participants.push(ann);
      const ben = await openParticipant(browser, server, room, 'Ben');
      participants.push(ben);
      await waitForMediaFromOthers(participants, 'before the outage');
      const before = await snapshot(ben);
      const tracksBefore = before.remoteTracks.map((x) => `${x.track_id}@${x.mid}`).sort();

      await ben.page.evaluate(() => window.huizhen.dropSignaling(5000));
      await waitFor("Ben's call to wait for its socket", async () => {
        const state = await ben.page.evaluate(() => window.huizhen.state);
        return { ok: state === 'resuming', detail: state };
      });
      const start = { ann: await snapshot(ann), ben: await snapshot(ben), at: Date.now() };
      await sleep(3000);
      const during = { ann: await snapshot(ann), ben: await snapshot(ben), at: Date.now() };
      assert.equal(await ben.page.evaluate(() => window.huizhen.state), 'resuming', 'the socket is still down 3 s into the outage');
      const fps = (a, b, snapA, snapB, pub) => {
        const mids = snapB.remoteTracks.filter((x) => x.participant_id === pub.id && x.kind === 'video').map((x) => x.mid);
        const frames = (s) => s.inbound.filter((x) => mids.includes(x.mid)).reduce((n, x) => n + x.framesDecoded, 0);
        return ((frames(snapB) - frames(snapA)) * 1000) / (b - a);
      };
      const annFromBen = fps(start.at, during.at, start.ann, during.ann, ben);
      const benFromAnn = fps(start.at, during.at, start.ben, during.ben, ann);
      t.diagnostic(`during the outage: Ann decodes Ben at ${annFromBen.toFixed(1)} fps, Ben decodes Ann at ${benFromAnn.toFixed(1)} fps`);
      for (const [who, snapA, snapB, pub] of [
        ['Ann', start.ann, during.ann, ben],
        ['Ben', start.ben, during.ben, ann],
      ]) {
        const res = mediaFromPublishers(snapB, [pub], { baseline: snapA });
        assert.ok(res.ok, `${who} keeps receiving ${pub.name} during the outage: ${JSON.stringify(res.problems)}`);
      }

      // A restart asked for while the socket is down (a change of network drops both) is
      // offered once the call is back.
      const ufragBefore = await ben.page.evaluate(() => /a=ice-ufrag:(\S+)/.exec(window.huizhen.pc.localDescription.sdp)?.[1]);
      assert.ok(await ben.page.evaluate(() => window.huizhen.restartIce()), 'a restart is started while resuming');
      const resumed = await waitFor('Ben to resume', async () => {
        const s = await ben.page.evaluate(() => ({
          state: window.huizhen.state,
          id: window.huizhen.participantId,
          resumed: window.huizhen.events.filter((e) => e.dir === 'in' && e.type === 'resumed').length,
          joined: window.huizhen.events.filter((e) => e.dir === 'in' && e.type === 'joined').length,
        }));
        return { ok: s.state === 'joined' && s.resumed === 1, value: s, detail: s };
      });
      assert.equal(resumed.id, ben.id, 'the same participant id');
      assert.equal(resumed.joined, 1, 'no second join');
      const after = await snapshot(ben);
      assert.deepEqual(after.remoteTracks.map((x) => `${x.track_id}@${x.mid}`).sort(), tracksBefore, 'the same tracks on the same mids');
      const annSaw = await ann.page.evaluate(() =>
        window.huizhen.events.filter((e) => e.dir === 'in' && ['participant_left', 'participant_joined', 'track_removed'].includes(e.type)).map((e) => e.msg),
      );
      // Ben's arrival once, at his join; no leave, no second arrival, no track removed.
      assert.deepEqual(
        annSaw.map((m) => `${m.type}:${m.participant?.id ?? m.participant_id}`),
        [`participant_joined:${ben.id}`],
        `Ann saw nothing of the outage: ${JSON.stringify(annSaw)}`,
      );
      await waitFor('the restart offered after the resume', async () => {
        const u = await ben.page.evaluate(() => ({
          ufrag: /a=ice-ufrag:(\S+)/.exec(window.huizhen.pc.localDescription.sdp)?.[1],
          stable: window.huizhen.pc.signalingState === 'stable',
        }));
        return { ok: u.stable && u.ufrag !== ufragBefore, detail: { ufragBefore, u } };
      });
      await waitForMediaFromOthers(participants, 'after the resume', { fresh: true });
      const metrics = await fetchMetrics(server);
      assert.equal(metricSum(metrics, 'huizhen_sfu_resumes_total'), 1, 'one resume counted');
      assert.equal(metricSum(metrics, 'huizhen_sfu_ice_restarts_total'), 1, 'the restart reached the server');
      assert.equal(metricSum(metrics, 'huizhen_sfu_detached_participants'), 0, 'nobody detached now');
      await assertNoErrors(participants);
    }),
  ),
);

test('an ICE restart: new credentials, the same participant and tracks, media flows on', (t) =>
  withBrowser(HOST_RULES, (browser) =>
    withSfuServer('ice-restart', { announceUdp: true, announceTcp: false }, async (server, participants) => {
      const room = 'room-ice-restart';
      const cy = await openParticipant(browser, server, room, 'Cy');
      participants.push(cy);
      const di = await openParticipant(browser, server, room, 'Di');
      participants.push(di);
      await waitForMediaFromOthers(participants, 'before the restart');
      const ufrags = () =>
        di.page.evaluate(() => ({
          local: /a=ice-ufrag:(\S+)/.exec(window.huizhen.pc.localDescription.sdp)?.[1],
          remote: /a=ice-ufrag:(\S+)/.exec(window.huizhen.pc.remoteDescription.sdp)?.[1],
        }));
      const before = { ...(await ufrags()), tracks: (await snapshot(di)).remoteTracks.map((x) => `${x.track_id}@${x.mid}`).sort() };
      assert.ok(await di.page.evaluate(() => window.huizhen.restartIce()), 'the restart is started');
      const after = await waitFor('new ICE credentials on both sides', async () => {
        const u = await ufrags();
        const stable = await di.page.evaluate(() => window.huizhen.pc.signalingState === 'stable');
        return { ok: stable && u.local !== before.local && u.remote !== before.remote, value: u, detail: { before, u } };
      });
      t.diagnostic(`ufrags: client ${before.local} -> ${after.local}, server ${before.remote} -> ${after.remote}`);
      await waitForMediaFromOthers(participants, 'after the restart', { fresh: true });
      const snap = await snapshot(di);
      assert.equal(snap.participantId, di.id, 'the same participant');
      assert.deepEqual(snap.remoteTracks.map((x) => `${x.track_id}@${x.mid}`).sort(), before.tracks, 'the same tracks on the same mids');
      const cySaw = await cy.page.evaluate(() =>
        window.huizhen.events.filter((e) => e.dir === 'in' && ['participant_left', 'track_removed'].includes(e.type)).length,
      );
      assert.equal(cySaw, 0, 'Cy saw nobody leave and no track removed');
      const metrics = await fetchMetrics(server);
      assert.equal(metricSum(metrics, 'huizhen_sfu_ice_restarts_total'), 1, 'one ICE restart counted');
      await assertNoErrors(participants);
    }),
  ),
);

test('relay only: media through the embedded TURN over UDP, TCP and TLS', (t) =>
  withBrowser(HOST_RULES_ICE_TCP, async (browser) => {
    for (const transport of ['udp', 'tcp', 'tls']) {
      await withServer(
        () => startServer(`turn-${transport}`, { announceUdp: true, announceTcp: false, turnTransports: [transport] }),
        dumpFailure,
        async (server, participants) => {
          const room = `room-turn-${transport}`;
          for (const name of ['Gus', 'Hana']) {
            participants.push(await openParticipant(browser, server, room, name, { query: '&ice=relay' }));
          }
          await waitForMediaFromOthers(participants, `camera+microphone relayed over TURN/${transport}`);
          await waitForMediaFromOthers(participants, `media still flowing over TURN/${transport}`, { fresh: true });
          for (const p of participants) {
            const snap = await snapshot(p);
            assert.ok(snap.pair, `${p.name} has a selected candidate pair`);
            assert.equal(snap.pair.local.type, 'relay', `${p.name} sends through TURN: ${JSON.stringify(snap.pair)}`);
            assert.equal(snap.pair.local.relayProtocol, transport, `${p.name} reaches TURN over ${transport}: ${JSON.stringify(snap.pair)}`);
            assert.equal(snap.pair.remote.port, server.udpPort, `${p.name} is relayed to the server's media port`);
          }
          await assertNoErrors(participants);
          const metrics = await fetchMetrics(server);
          // Chromium may allocate more than once per page (one per gathering socket).
          const allocations = metricSum(metrics, 'huizhen_turn_allocations', `transport="${transport}"`);
          assert.ok(allocations >= 2, `each page holds an allocation over ${transport}: ${allocations}`);
          t.diagnostic(`${transport}: ${allocations} allocations held`);
          const relayedIn = metricSum(metrics, 'huizhen_turn_relayed_in_packets_total');
          const relayedOut = metricSum(metrics, 'huizhen_turn_relayed_out_packets_total');
          t.diagnostic(`${transport}: relayed in ${relayedIn}, out ${relayedOut}`);
          assert.ok(relayedIn > 100, `media was relayed in: ${relayedIn}`);
          assert.ok(relayedOut > 100, `media was relayed out: ${relayedOut}`);
          assert.equal(metricSum(metrics, 'huizhen_turn_refused_total', 'reason="forbidden_peer"'), 0, 'no peer refused');
          t.diagnostic(`${transport}: ${JSON.stringify((await snapshot(participants[0])).pair)}`);
        },
      );
    }
  }, { trustTurnCert: true }),
);
