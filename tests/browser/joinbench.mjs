// Join time, direct against relay-only through the embedded TURN (issue 10's target: the
// relay's p99 at most 1.5x the direct one's). A benchmark, not a test (`npm test` does not run
// it): the figures go into the README.
//
//   cd tests/browser && HUIZHEN_BIN=../../target/release/huizhen node joinbench.mjs [N] [udp|tcp|tls]
//
// One server (TURN over the given transport only), one page ("host") publishing in a room;
// then N times each, alternating: a fresh page joins the room direct, or with ?ice=relay, and
// the time from navigation to its first decoded video frame of the host is taken; the page
// closes. Prints p50/p90/p99 (nearest rank) of both and their ratio.

import { HOST_RULES_ICE_TCP, closeAll, newPerson, sleep, startServer, stopServer, withBrowser } from './harness.mjs';

const N = Number(process.argv[2] || 20);
const TRANSPORT = process.argv[3] || 'udp';

async function joinOnce(browser, server, room, name, query) {
  const person = await newPerson(browser, name, { viewport: { width: 640, height: 480 } });
  const start = Date.now();
  try {
    await person.page.goto(`${server.pageBase}/room/${room}?name=${name}${query}`);
    const deadline = start + 30_000;
    while (Date.now() < deadline) {
      const frames = await person.page.evaluate(async () => {
        const h = window.huizhen;
        if (!h || !h.pc) return 0;
        let n = 0;
        (await h.pc.getStats()).forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'video') n += s.framesDecoded || 0;
        });
        return n;
      });
      if (frames > 0) return Date.now() - start;
      await sleep(20);
    }
    throw new Error(`${name}: no frame within 30 s`);
  } finally {
    await person.context.close().catch(() => {});
  }
}

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

const server = await startServer(`joinbench-${TRANSPORT}`, { announceUdp: true, announceTcp: false, turnTransports: [TRANSPORT] });
try {
  await withBrowser(
    HOST_RULES_ICE_TCP,
    async (browser) => {
      const host = await newPerson(browser, 'host', { viewport: { width: 640, height: 480 } });
      await host.page.goto(`${server.pageBase}/room/bench?name=host`);
      await sleep(3000);
      const times = { direct: [], relay: [] };
      for (let i = 0; i < N; i++) {
        for (const kind of ['direct', 'relay']) {
          const t = await joinOnce(browser, server, 'bench', `${kind}${i}`, kind === 'relay' ? '&ice=relay' : '');
          times[kind].push(t);
        }
      }
      const rows = [];
      for (const kind of ['direct', 'relay']) {
        const s = [...times[kind]].sort((a, b) => a - b);
        rows.push({ kind, n: s.length, p50: pct(s, 50), p90: pct(s, 90), p99: pct(s, 99), all: times[kind] });
      }
      console.log(`| join (navigation to first frame), TURN/${TRANSPORT} | n | p50 | p90 | p99 |`);
      console.log('|---|---|---|---|---|');
      for (const r of rows) console.log(`| ${r.kind} | ${r.n} | ${r.p50} ms | ${r.p90} ms | ${r.p99} ms |`);
      console.log(`relay/direct p99: ${(rows[1].p99 / rows[0].p99).toFixed(2)}x, p50: ${(rows[1].p50 / rows[0].p50).toFixed(2)}x`);
      console.log(JSON.stringify(rows));
    },
    { trustTurnCert: TRANSPORT === 'tls' },
  );
} finally {
  await stopServer(server);
  await closeAll();
}
