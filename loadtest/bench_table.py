#!/usr/bin/env python3
"""Turns the JSON reports of loadtest/bench.sh into a markdown table with huizhen/Janus ratios.

Usage: bench_table.py DIR   (reads DIR/{huizhen,janus}-{followup,panel,teaching}[-capacity].json)
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
        return f'{r["units"]} visits ({r["participants"]} participants)'
    if kind == "panel":
        return f'{r["units"]} rooms of {s["room_size"]} ({r["participants"]} participants)'
    return f'{r["units"]} room, 1 → {s["observers"]} ({r["participants"]} participants)'


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


def main():
    directory = sys.argv[1]
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
