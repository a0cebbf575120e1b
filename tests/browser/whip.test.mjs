// WHIP in, WHEP out, with third-party and browser clients: a lecture published by GStreamer
// (Debian's simple-whip-client, `whip-client`: VP8 + Opus from test sources), or by a Chromium
// page (a canvas and an oscillator, sendonly, max-bundle), and watched on the WHEP player page
// (/watch/<room>, static/watch.js) in headless Chromium. One flow, two publishers.
//
// Topology (all inside 127.0.0.0/8): the server in the root namespace, bound to the root side of
// a veth (tests/impair/netns.sh, 127.77.X.1: HTTP, UDP media, TURN); whip-client in the
// namespace (127.77.X.2), where the veth is its only non-loopback interface, so libnice's only
// host candidate is 127.77.X.2 (libnice skips loopback interfaces; in the root namespace it
// would offer the machine's real addresses) and it has no STUN or TURN server; Chromium in the
// root namespace, opening http://127.77.X.1:PORT/watch/lecture (every other host unresolvable).
// tests/whip/publish.sh runs the client (and says why it needs a stub libgupnp-igd). GStreamer's
// DTLS presents an RSA client certificate: vendor/dimpl/PATCHES.md.
//
// Asserted, in order:
//   1. WHEP before anyone publishes: 409 with a Retry-After (a plain fetch with a recvonly
//      audio + video offer made by Chromium);
//   2. the watch page opened then waits (it got the 409) and keeps retrying;
//   3. the publisher publishes to /whip/room/lecture and connects (whip-client: its trickle
//      PATCHes are accepted, every candidate it sent is 127.77.X.2; Chromium: 201 with ETag and
//      the TURN Link headers);
//   4. the page plays: from getStats(), frames decoded grow by >= MIN_FRAMES and Opus packets
//      by >= MIN_PACKETS within MEASURE_MS, over a pair whose remote end is the server (and, from
//      whip-client, VP8 at 640x360); the TURN servers of the 201's Link headers were parsed;
//   5. a WHEP session made with fetch: 201 with Location, ETag, application/sdp;
//   6. DELETE of the viewer's session URL: 200, then 404; the page notices and comes back with
//      a new session that plays again;
//   7. leaving the page (pagehide) DELETEs its session (a DELETE from the test then gets 404);
//   8. the publisher leaves (whip-client on SIGTERM DELETEs its session; the Chromium one's
//      DELETE gets 200, then 404), and WHEP answers 409 again.
// whip-client is killed by pid whatever happens (TERM, then KILL after a bound), the namespace
// taken down; every wait is bounded.
//
// Needs root (the namespace) and, for the first test, whip-client (tests/run-all.sh installs
// simple-whip-client and the GStreamer plugins); skipped, saying why, without them. Run:
//   cd tests/browser && HUIZHEN_BIN=../../target/release/huizhen node --test whip.test.mjs
// Env: as harness.mjs and adaptive.mjs; HUIZHEN_TEST_KEEP_LOGS=1 keeps the server's directory
// (server.log and whip-client.log).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { impairmentUnavailable, namespaceDown, namespaceUp, startServerAt, stopServerAt } from './adaptive.mjs';
import { REPO_ROOT, closeAll, sleep, startRun, waitFor, withBrowser } from './harness.mjs';

const WAIT_MS = 30_000;
/** The page must decode this many more frames and receive this many more audio packets... */
const MIN_FRAMES = 60;
const MIN_PACKETS = 100;
/** ...within this long (30 fps and 50 packets/s are sent: 2 s would do). */
const MEASURE_MS = 10_000;
const ROOM = 'lecture';
const PUBLISH_SH = path.join(REPO_ROOT, 'tests', 'whip', 'publish.sh');

startRun({ what: 'the WHIP/WHEP test', waitMs: WAIT_MS });
after(closeAll);

// ---------------------------------------------------------------------------------------------
// The publisher: whip-client, killed by pid whatever happens

const publishers = new Set();
process.on('exit', () => {
  for (const p of publishers) {
    try {
      p.proc.kill('SIGKILL');
    } catch {
      // gone
    }
  }
});

function startPublisher(nsName, url, logPath) {
  const fd = fs.openSync(logPath, 'a');
  const proc = spawn(PUBLISH_SH, [nsName, url], { stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const pub = { proc, pid: proc.pid, logPath, exited: null };
  publishers.add(pub);
  proc.on('exit', (code, signal) => {
    pub.exited = { code, signal };
  });
  proc.on('error', (err) => {
    pub.exited = { error: err.message };
  });
  return pub;
}

/** SIGTERM (whip-client then DELETEs its session), SIGKILL after `graceMs`. */
async function stopPublisher(pub, graceMs = 10_000) {
  if (!pub) return;
  if (!pub.exited) {
    pub.proc.kill('SIGTERM');
    const deadline = Date.now() + graceMs;
    while (!pub.exited && Date.now() < deadline) await sleep(50);
    if (!pub.exited) {
      pub.proc.kill('SIGKILL');
      const killDeadline = Date.now() + 5000;
      while (!pub.exited && Date.now() < killDeadline) await sleep(20);
    }
  }
  publishers.delete(pub);
}

function publisherLog(pub) {
  try {
    return fs.readFileSync(pub.logPath, 'utf8');
  } catch {
    return '';
  }
}

function tail(text, lines = 60) {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

// ---------------------------------------------------------------------------------------------
// WHEP over plain HTTP

/** A recvonly audio + video offer with its candidates, as a viewer's Chromium makes it. */
async function viewerOffer(page) {
  return page.evaluate(async () => {
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    await pc.setLocalDescription();
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 3000);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    const sdp = pc.localDescription.sdp;
    pc.close();
    return sdp;
  });
}

async function whepPost(server, offer) {
  const res = await fetch(`${server.base}/whep/room/${ROOM}`, {
    method: 'POST',
    headers: { 'content-type': 'application/sdp' },
    body: offer,
    signal: AbortSignal.timeout(5000),
  });
  return { res, body: await res.text() };
}

async function httpDelete(url) {
  const res = await fetch(url, { method: 'DELETE', signal: AbortSignal.timeout(5000) });
  await res.arrayBuffer();
  return res.status;
}

function iceServerLinks(res) {
  const link = res.headers.get('link') || '';
  return (link.match(/rel="?ice-server"?/g) || []).length;
}

function assertRetryAfter(res, what) {
  const ra = res.headers.get('retry-after');
  assert.ok(ra, `${what}: 409 without Retry-After`);
  const ok = /^\d+$/.test(ra.trim()) ? Number(ra) > 0 : Number.isFinite(Date.parse(ra));
  assert.ok(ok, `${what}: Retry-After ${JSON.stringify(ra)} is neither delta-seconds > 0 nor an HTTP date`);
  return ra;
}

// ---------------------------------------------------------------------------------------------
// The watch page

async function openWatch(browser, url) {
  const context = await browser.newContext({ viewport: { width: 960, height: 640 }, locale: 'en-US' });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  const viewer = { context, page, console: [], deletes: [] };
  page.on('console', (m) => {
    viewer.console.push(`${m.type()}: ${m.text()}`);
    if (viewer.console.length > 200) viewer.console.shift();
  });
  // The page's DELETEs, for the failure dump (the keepalive one of pagehide is sent after the
  // page is gone: Playwright reports its request, not its response).
  context.on('request', (req) => {
    if (req.method() === 'DELETE') viewer.deletes.push(req.url());
  });
  await page.goto(url);
  return viewer;
}

/** The page's state and what its RTCPeerConnection receives. */
function watchStats(viewer) {
  return viewer.page.evaluate(async () => {
    const w = window.__watch;
    if (!w) return null;
    const video = document.getElementById('player');
    const out = {
      state: w.state,
      session: w.session,
      iceServers: w.iceServers.length,
      attempts: w.attempts,
      errors: w.errors,
      events: w.events.slice(-12),
      element: { width: video.videoWidth, height: video.videoHeight, muted: video.muted, paused: video.paused },
      connectionState: w.pc ? w.pc.connectionState : null,
      video: null,
      audio: null,
      remote: null,
    };
    if (!w.pc || w.pc.signalingState === 'closed') return out;
    const stats = await w.pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        const codec = s.codecId ? stats.get(s.codecId)?.mimeType : null;
        if (s.kind === 'video') {
          out.video = { codec, framesDecoded: s.framesDecoded || 0, packetsReceived: s.packetsReceived || 0, width: s.frameWidth, height: s.frameHeight };
        } else if (s.kind === 'audio') {
          out.audio = { codec, packetsReceived: s.packetsReceived || 0, totalAudioEnergy: s.totalAudioEnergy || 0 };
        }
      } else if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        const remote = pair ? stats.get(pair.remoteCandidateId) : null;
        if (remote) out.remote = { address: remote.address, port: remote.port, protocol: remote.protocol, type: remote.candidateType };
      }
    });
    return out;
  });
}

/** Wait until the page plays and both counters grew by the minimum within MEASURE_MS. */
async function assertPlaying(viewer, label, waitMs = WAIT_MS) {
  const first = await waitFor(`${label}: the page plays and decodes a first frame and audio`, async () => {
    const s = await watchStats(viewer);
    const ok = !!(s && s.state === 'playing' && s.video && s.video.framesDecoded > 0 && s.audio && s.audio.packetsReceived > 0);
    return { ok, value: s, detail: s };
  }, waitMs);
  const t0 = Date.now();
  const last = await waitFor(
    `${label}: ${MIN_FRAMES} more frames decoded and ${MIN_PACKETS} more audio packets within ${MEASURE_MS} ms`,
    async () => {
      const s = await watchStats(viewer);
      const ok = !!(
        s &&
        s.video &&
        s.audio &&
        s.video.framesDecoded - first.video.framesDecoded >= MIN_FRAMES &&
        s.audio.packetsReceived - first.audio.packetsReceived >= MIN_PACKETS
      );
      return { ok, value: s, detail: { first: { video: first.video, audio: first.audio }, now: s } };
    },
    MEASURE_MS,
    200,
  );
  return { first, last, ms: Date.now() - t0 };
}

async function dumpViewer(viewer) {
  if (!viewer) return;
  try {
    console.error(`--- watch page: ${JSON.stringify(await watchStats(viewer), null, 1)}`);
    console.error(`--- watch page events: ${JSON.stringify(await viewer.page.evaluate(() => window.__watch?.events))}`);
  } catch {
    // page gone
  }
  console.error(`--- watch page DELETEs: ${JSON.stringify(viewer.deletes)}`);
  console.error(`--- watch page console, last lines ---\n${viewer.console.slice(-30).join('\n')}`);
}

// ---------------------------------------------------------------------------------------------

function whipClientMissing() {
  try {
    execFileSync('sh', ['-c', 'command -v whip-client'], { stdio: 'ignore' });
    return null;
  } catch {
    return 'whip-client not installed (apt-get install simple-whip-client gstreamer1.0-nice gstreamer1.0-plugins-bad gstreamer1.0-plugins-good gstreamer1.0-plugins-base)';
  }
}

// ---------------------------------------------------------------------------------------------
// The two publishers: what differs between them is how they start, what is checked of their
// own side, and how they leave.

/** GStreamer's simple-whip-client in the namespace (VP8 640x360 and Opus from test sources). */
const GSTREAMER = {
  name: 'simple-whip-client',
  async start({ ns, server, t }) {
    const pub = startPublisher(ns.name, `${server.base}/whip/room/${ROOM}`, path.join(server.dir, 'whip-client.log'));
    t.diagnostic(`whip-client pid ${pub.pid}: ${PUBLISH_SH} ${ns.name} ${server.base}/whip/room/${ROOM}`);
    await waitFor('whip-client: PeerConnection connected', async () => {
      const log = publisherLog(pub);
      if (pub.exited) {
        // GStreamer's DTLS (webrtcbin, OpenSSL) presents a self-generated RSA certificate: a
        // server that only takes ECDSA client certificates fails the handshake
        // (vendor/dimpl/PATCHES.md).
        const hint = log.includes('DTLS failed') ? ' (DTLS failed: see vendor/dimpl/PATCHES.md, patch 1)' : '';
        throw Object.assign(new Error(`whip-client exited ${JSON.stringify(pub.exited)}${hint}:\n${tail(log)}`), { fatal: true });
      }
      return { ok: log.includes('PeerConnection connected'), detail: tail(log, 8) };
    });
    return {
      /** Its media as the page decodes it, and its own log: trickle and candidates. */
      check(s) {
        assert.match(String(s.video.codec), /VP8/i, "the video is the publisher's VP8");
        assert.equal(s.video.width, 640, "the publisher's 640x360 video");
        assert.equal(s.video.height, 360, "the publisher's 640x360 video");
        const plog = publisherLog(pub);
        assert.ok(!/\[trickle\] \d+/.test(plog), `a trickle PATCH failed:\n${plog.split('\n').filter((l) => l.includes('[trickle]')).join('\n')}`);
        // Its own candidates: trickled ("Sending candidates: ...") or put in the offer (-n);
        // not the answer's ("Found candidate"), which are the server's.
        const candidates = [...plog.matchAll(/(?:Sending candidates|Adding candidate to SDP): (?:a=)?candidate:\S+ \d+ (UDP|TCP) \d+ (\S+) \d+ typ (\w+)/gi)].map(
          (m) => `${m[1]} ${m[2]} ${m[3]}`,
        );
        assert.ok(candidates.length > 0, 'whip-client logged its candidates');
        for (const c of candidates) assert.equal(c.split(' ')[1], ns.nsAddr, `whip-client offered only ${ns.nsAddr}: ${c}`);
        t.diagnostic(`whip-client candidates: ${[...new Set(candidates)].join(', ')}`);
      },
      /** SIGTERM: it DELETEs its session. */
      async stop() {
        await stopPublisher(pub);
        const stopped = publisherLog(pub);
        assert.ok(stopped.includes('Disconnecting from server (Shutting down)'), `whip-client shut down:\n${tail(stopped, 15)}`);
        assert.ok(!/Disconnecting from server \(Shutting down\)[\s\S]*\[\d{3}\]/.test(stopped), `whip-client's DELETE failed:\n${tail(stopped, 15)}`);
      },
      async cleanup(failed) {
        if (failed) console.error(`--- whip-client log (${pub.logPath}), last lines ---\n${tail(publisherLog(pub), 80)}`);
        await stopPublisher(pub);
      },
    };
  },
};

/** A Chromium page publishing a canvas and an oscillator over WHIP (sendonly, max-bundle). */
const CHROMIUM = {
  name: 'Chromium',
  async start({ server, browser, t }) {
    const page = await browser.newPage();
    const offer = await page.evaluate(async () => {
      const c = document.createElement('canvas');
      c.width = 640;
      c.height = 360;
      document.body.appendChild(c);
      const g = c.getContext('2d');
      let n = 0;
      setInterval(() => {
        g.fillStyle = `hsl(${n++ % 360},80%,50%)`;
        g.fillRect(0, 0, 640, 360);
        g.fillStyle = '#fff';
        g.fillText(String(n), 20 + (n % 500), 180);
      }, 33);
      const ac = new AudioContext();
      const o = ac.createOscillator();
      const d = ac.createMediaStreamDestination();
      o.connect(d);
      o.start();
      const pc = (window.pubPc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' }));
      pc.addTransceiver(d.stream.getAudioTracks()[0], { direction: 'sendonly' });
      pc.addTransceiver(c.captureStream(30).getVideoTracks()[0], { direction: 'sendonly' });
      await pc.setLocalDescription();
      await new Promise((r) => {
        const timer = setTimeout(r, 3000);
        pc.onicegatheringstatechange = () => {
          if (pc.iceGatheringState === 'complete') {
            clearTimeout(timer);
            r();
          }
        };
      });
      return pc.localDescription.sdp;
    });
    const res = await fetch(`${server.base}/whip/room/${ROOM}`, { method: 'POST', headers: { 'content-type': 'application/sdp' }, body: offer });
    const answer = await res.text();
    t.diagnostic(`WHIP POST: ${res.status} location=${res.headers.get('location')} etag=${res.headers.get('etag')} links=${iceServerLinks(res)}`);
    assert.equal(res.status, 201, answer);
    assert.ok(res.headers.get('etag'), 'ETag present');
    assert.ok(iceServerLinks(res) > 0, 'the embedded TURN in Link rel=ice-server');
    const location = new URL(res.headers.get('location'), server.base).href;
    await page.evaluate(async (sdp) => window.pubPc.setRemoteDescription({ type: 'answer', sdp }), answer);
    await waitFor('the Chromium publisher to connect', async () => {
      const st = await page.evaluate(() => window.pubPc.connectionState);
      return { ok: st === 'connected', detail: st };
    });
    return {
      check() {},
      /** It ends its session with DELETE. */
      async stop() {
        assert.equal(await httpDelete(location), 200, 'DELETE of the WHIP session');
        assert.equal(await httpDelete(location), 404, 'second DELETE of the WHIP session');
        await page.close();
      },
      async cleanup() {
        await page.close().catch(() => {});
      },
    };
  },
};

/** The lecture: a player waits, `publisher` publishes, the player plays, sessions end. */
async function lecture(t, publisher) {
  const ns = await namespaceUp();
  let server = null;
  let pub = null;
  let viewer = null;
  let ok = false;
  try {
    server = await startServerAt(ns.rootAddr, 'whip');
    await withBrowser(`MAP * ~NOTFOUND, EXCLUDE ${ns.rootAddr}`, async (browser) => {
      const scratch = await browser.newPage();

      // 1. Nobody publishes yet: 409 with Retry-After.
      const early = await whepPost(server, await viewerOffer(scratch));
      assert.equal(early.res.status, 409, `WHEP before anyone publishes: status ${early.res.status} ${early.body}`);
      const ra = assertRetryAfter(early.res, 'WHEP before anyone publishes');
      t.diagnostic(`WHEP before publishing: 409, Retry-After: ${ra}`);

      // 2. The page opened before the broadcast waits for it.
      viewer = await openWatch(browser, `${server.base}/watch/${ROOM}`);
      await waitFor('the watch page to wait for the broadcast (409)', async () => {
        const s = await watchStats(viewer);
        return { ok: !!s && s.state === 'waiting' && s.events.some((e) => e.type === 'post' && e.status === 409), detail: s };
      });

      // 3. Publish.
      pub = await publisher.start({ ns, server, browser, t });

      // 4. The page plays.
      // The page may be sleeping out the server's Retry-After (plus up to 50 % jitter; the page
      // takes at most 60 s of it) when the broadcast starts.
      const raMs = /^\d+$/.test(ra.trim()) ? Math.min(60, Number(ra)) * 1000 : 0;
      const play = await assertPlaying(viewer, 'watch page', WAIT_MS + 1.5 * raMs);
      const s = play.last;
      t.diagnostic(
        `watch page: ${s.video.framesDecoded - play.first.video.framesDecoded} frames, ` +
          `${s.audio.packetsReceived - play.first.audio.packetsReceived} audio packets in ${play.ms} ms; ` +
          `${s.video.codec} ${s.video.width}x${s.video.height}, ${s.audio.codec} (totalAudioEnergy ${s.audio.totalAudioEnergy}), remote ${JSON.stringify(s.remote)}`,
      );
      assert.match(String(s.audio.codec), /opus/i, "the audio is the publisher's Opus");
      assert.equal(s.remote?.address, ns.rootAddr, "media comes from the server's address");
      assert.ok(s.element.width > 0 && s.element.muted, `the video element shows the picture, muted: ${JSON.stringify(s.element)}`);
      assert.ok(await viewer.page.locator('#btn-sound').isVisible(), 'the "tap for sound" button is shown while muted');
      pub.check(s);

      // 5. A WHEP session made by hand: the headers.
      const direct = await whepPost(server, await viewerOffer(scratch));
      assert.equal(direct.res.status, 201, `WHEP POST while publishing: status ${direct.res.status} ${direct.body}`);
      const loc = direct.res.headers.get('location');
      assert.ok(loc && /\/whep\/session\//.test(loc), `Location: ${loc}`);
      assert.ok(direct.res.headers.get('etag'), 'ETag present');
      assert.match(direct.res.headers.get('content-type') || '', /^application\/sdp/, 'the answer is application/sdp');
      assert.ok(direct.body.startsWith('v=0'), 'the body is an SDP answer');
      const links = iceServerLinks(direct.res);
      t.diagnostic(`WHEP 201: Location ${loc}, ETag ${direct.res.headers.get('etag')}, ${links} Link rel=ice-server`);
      assert.equal(s.iceServers, links, 'the page parsed as many ICE servers as the Link headers name');
      const directUrl = new URL(loc, server.base).href;
      assert.equal(await httpDelete(directUrl), 200, 'DELETE of a fresh WHEP session');

      // 6. DELETE the viewer's session: 200, then 404; the page comes back with a new session.
      const session = s.session;
      assert.ok(session, 'the page knows its session URL');
      assert.equal(await httpDelete(session), 200, `DELETE ${session}`);
      assert.equal(await httpDelete(session), 404, `second DELETE ${session}`);
      await waitFor('the page to notice its session ended and start a new one', async () => {
        const x = await watchStats(viewer);
        return { ok: !!x && x.session && x.session !== session, detail: x };
      });
      await assertPlaying(viewer, 'watch page after its session was deleted');

      // 7. Leaving the page (pagehide) DELETEs its session.
      const last = (await watchStats(viewer)).session;
      await viewer.page.goto('about:blank');
      // Nothing to poll without deleting it ourselves: give the keepalive DELETE a moment.
      await sleep(2000);
      assert.equal(await httpDelete(last), 404, `DELETE ${last} after the page left (its pagehide DELETE came first)`);

      // 8. The publisher leaves (its session ends), and nobody publishes any more.
      await pub.stop();
      await waitFor('WHEP to answer 409 again once the publisher left', async () => {
        const r = await whepPost(server, await viewerOffer(scratch));
        if (r.res.status === 201) {
          const l = r.res.headers.get('location');
          if (l) await httpDelete(new URL(l, server.base).href);
        }
        return { ok: r.res.status === 409, detail: `status ${r.res.status} ${r.body.slice(0, 200)}` };
      }, 10_000, 500);
    });
    ok = true;
  } finally {
    if (!ok) {
      await dumpViewer(viewer);
      if (server) {
        try {
          console.error(`--- server log, last lines ---\n${tail(fs.readFileSync(server.logPath, 'utf8'), 80)}`);
        } catch {
          // no log
        }
      }
    }
    if (pub) await pub.cleanup(!ok);
    if (server) await stopServerAt(server, { keep: !ok });
    namespaceDown(ns.name);
  }
}

const noNamespaces = impairmentUnavailable();

test('a lecture published with simple-whip-client (WHIP) plays on the watch page (WHEP)', { skip: noNamespaces || whipClientMissing() || false }, (t) =>
  lecture(t, GSTREAMER),
);

test('a lecture published from Chromium over WHIP plays on the watch page (WHEP)', { skip: noNamespaces || false }, (t) => lecture(t, CHROMIUM));
