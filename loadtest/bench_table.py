#!/usr/bin/env python3
"""Turns the JSON reports of loadtest/bench.sh into a markdown table with huizhen/Janus ratios.

Usage: bench_table.py DIR   (reads DIR/{huizhen,janus}-{followup,panel,teaching}[-capacity].json,
and DIR/adaptive-{followup,panel,teaching}-{base,single,simulcast,capped}.json of
BENCH_ADAPTIVE=1)
"""
import json
import os
import sys

SCENARIOS = ["followup", "panel", "teaching"]


def load(directory, name):
    path = os.path.join(directory, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def fmt(value, digits=1):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def load_text(r):
    s = r["scenario"]
    kind = s["kind"]
    if kind == "followup":
        text = f'{r["units"]} visits ({r["participants"]} participants)'
    elif kind == "panel":
        text = f'{r["units"]} rooms of {s["room_size"]} ({r["participants"]} participants)'
    else:
        text = f'{r["units"]} room, 1 → {s["observers"]} ({r["participants"]} participants)'
    relay, turn = r.get("relay"), r.get("turn")
    if relay:
        text += f', {relay["participants"]} relayed through TURN'
        if turn:
            text += f' ({turn["relayed_pps"]:,.0f} relayed pkt/s)'
    return text


def row(r):
    server = r.get("server") or {}
    rx = r["rx"]
    latency = r.get("server_latency")
    inside = f'{latency["p50_ms"]:.3f} / {latency["p99_ms"]:.3f}' if latency else "n/a"
    errors = sum(r.get("errors", {}).values())
    return (
        f'| {r["scenario"]["kind"]} | {r["target"]} | {load_text(r)} | {fmt(r["forwarded_pps"], 0)} '
        f'| {fmt(server.get("cpu_percent"))} | {fmt(per_core(r), 0)} | {fmt(server.get("cpu_ms_per_1000_packets"), 3)} '
        f'| {fmt(server.get("rss_kib_per_subscribed_track"))} | {rx["loss"] * 100:.3f} '
        f'| {rx["delay_p50_ms"]:.2f} / {rx["delay_p99_ms"]:.2f} | {inside} '
        f'| {rx["join_p50_ms"]} / {rx["join_p99_ms"]} | {fmt(r["generator"]["cpu_percent"])} | {errors} |'
    )


def per_core(r):
    """Forwarded packets/s one whole core would carry at this cost (forwarded / CPU share)."""
    server = r.get("server") or {}
    cpu = server.get("cpu_percent")
    if not cpu:
        return None
    return r["forwarded_pps"] / (cpu / 100.0)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


ADAPTIVE_VARIANTS = [
    ("base", "before adaptive media, one layer"),
    ("single", "current, one layer"),
    ("simulcast", "current, simulcast q,h,f"),
    ("capped", "current, simulcast, capped receivers"),
]


def group_text(r, name):
    for g in r.get("groups", []):
        if g["group"] == name:
            ended = ", ".join(f"{v} {k}" for k, v in sorted(g["ended_on"].items()))
            return (f'{g["receivers"]}: {g["received_pps_per_receiver"]:.0f} pkt/s, '
                    f'{g["video_kbps_per_stream"]:.0f} kbit/s per video, loss {g["loss"] * 100:.2f} %, '
                    f'p99 {g["delay_p99_ms"]:.0f} ms; ended on {ended}')
    return ""


def adaptive(directory):
    """The issue-9 cost table: old vs current server, per scenario, and what capped receivers got."""
    out = []
    rows = []
    ratios = []
    capped = []
    for scenario in SCENARIOS:
        runs = {v: load(directory, f"adaptive-{scenario}-{v}") for v, _ in ADAPTIVE_VARIANTS}
        if not any(runs.values()):
            continue
        for variant, what in ADAPTIVE_VARIANTS:
            r = runs[variant]
            if not r:
                continue
            server = r.get("server") or {}
            rows.append(
                f'| {scenario} | {what} | {load_text(r)} | {fmt(r["forwarded_pps"], 0)} | {fmt(server.get("cpu_percent"))} '
                f'| {fmt(server.get("cpu_ms_per_1000_packets"), 3)} | {fmt(server.get("rss_kib_per_subscribed_track"))} '
                f'| {r["rx"]["loss"] * 100:.3f} | {r["rx"]["delay_p50_ms"]:.2f} / {r["rx"]["delay_p99_ms"]:.2f} '
                f'| {fmt(r["generator"]["cpu_percent"])} | {sum(r.get("errors", {}).values())} |'
            )
            if variant == "capped":
                capped.append(f'| {scenario} | {group_text(r, "uncapped")} | {group_text(r, "capped")} '
                              f'| {r["tx"].get("tracks_paused", 0)} / {r["tx"].get("tracks_resumed", 0)} '
                              f'| {r["tx"].get("downlink_drops", 0)} |')
        base = (runs["base"] or {}).get("server")
        cells = []
        for variant in ("single", "simulcast", "capped"):
            cur = (runs[variant] or {}).get("server")
            cells.append(ratio(cur and cur["cpu_ms_per_1000_packets"], base and base["cpu_ms_per_1000_packets"]))
        ratios.append(f'| {scenario} | ' + " | ".join(cells) + " |")
    if not rows:
        return out
    out.append("| scenario | server, publishers | load | forwarded pkt/s | server CPU % of a core "
               "| server CPU ms per 1,000 pkts | server RSS KiB per subscribed track | loss % "
               "| delay p50 / p99 ms | generator CPU % | participants failed |")
    out.append("|" + " --- |" * 11)
    out.extend(rows)
    out.append("")
    out.append("CPU per forwarded packet, current / before adaptive media (target ≤ 1.25 with one layer):")
    out.append("")
    out.append("| scenario | one layer | simulcast | simulcast, capped receivers |")
    out.append("| --- | --- | --- | --- |")
    out.extend(ratios)
    if capped:
        out.append("")
        out.append("What the receivers got in the capped runs (window; `ended on`: the layer each video "
                   "was on at the end, `paused`: nothing for a second):")
        out.append("")
        out.append("| scenario | uncapped receivers | capped receivers | track_paused / resumed | link drops |")
        out.append("| --- | --- | --- | --- | --- |")
        out.extend(capped)
    return out


def main():
    directory = sys.argv[1]
    adaptive_rows = adaptive(directory)
    if adaptive_rows:
        print("\n".join(adaptive_rows))
        return
    out = []
    out.append(
        "| scenario | server | load | forwarded pkt/s | server CPU % of a core | pkt/s per core at this cost | server CPU ms per 1,000 pkts "
        "| server RSS KiB per subscribed track | loss % | delay p50 / p99 ms (end to end) "
        "| inside the server p50 / p99 ms | join p50 / p99 ms | generator CPU % | participants failed |"
    )
    out.append("|" + " --- |" * 14)
    ratios = []
    for scenario in SCENARIOS:
        hz = load(directory, f"huizhen-{scenario}")
        jn = load(directory, f"janus-{scenario}")
        for r in (hz, jn):
            if r:
                out.append(row(r))
        if hz and jn and hz.get("server") and jn.get("server"):
            ratios.append(
                f'| {scenario} | {ratio(hz["server"]["cpu_ms_per_1000_packets"], jn["server"]["cpu_ms_per_1000_packets"])} '
                f'| {ratio(hz["server"]["rss_kib_per_subscribed_track"], jn["server"]["rss_kib_per_subscribed_track"])} '
                f'| {ratio(hz["rx"]["delay_p99_ms"], jn["rx"]["delay_p99_ms"])} |'
            )
    if ratios:
        out.append("")
        out.append("huizhen / Janus (below 1: huizhen uses less):")
        out.append("")
        out.append("| scenario | CPU per forwarded packet | memory per subscribed track | delay p99 |")
        out.append("| --- | --- | --- | --- |")
        out.extend(ratios)
    for scenario, unit, what in (
        ("followup", "visits", "1.2 Mbit/s video + audio each way"),
        ("teaching", "rooms", "one teacher, 100 observers per room"),
    ):
        caps = {t: load(directory, f"{t}-{scenario}-capacity") for t in ("huizhen", "janus")}
        if not any(caps.values()):
            continue
        out.append("")
        out.append(f"Capacity, `{scenario}` ({what}), server on one core: the last step "
                   "with loss ≤ 1 % and end-to-end p99 delay ≤ 50 ms.")
        out.append("")
        out.append(f"| server | {unit} | participants | forwarded pkt/s | loss % | delay p99 ms | server CPU % | generator CPU % | stopped because |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        good = {}
        for target, r in caps.items():
            if not r or not r.get("capacity"):
                continue
            c = r["capacity"]
            g = c.get("last_good")
            good[target] = g
            if g:
                out.append(
                    f'| {target} | {g["units"]} | {g["participants"]} | {g["forwarded_pps"]:,.0f} | {g["loss"] * 100:.3f} '
                    f'| {g["delay_p99_ms"]:.2f} | {fmt(g.get("server_cpu_percent"))} | {g["generator_cpu_percent"]:.1f} | {c["stopped_because"]} |'
                )
            else:
                out.append(f'| {target} | none | | | | | | | {c["stopped_because"]} |')
        if good.get("huizhen") and good.get("janus"):
            out.append("")
            out.append(f'Capacity ratio huizhen / Janus (`{scenario}`): {ratio(good["huizhen"]["forwarded_pps"], good["janus"]["forwarded_pps"])}')
    print("\n".join(out))


if __name__ == "__main__":
    main()
