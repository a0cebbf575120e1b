//! The final table for people.

use std::fmt::Write;

use crate::run::Report;

/// The report as a two-column table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<38} {value}");
    };
    row("target", r.target.clone());
    row(
        "scenario",
        format!(
            "{:?}: {} units, {} participants ({} publish), {} subscribed tracks",
            r.scenario.kind, r.units, r.participants, r.publishers, r.subscribed_tracks
        ),
    );
    row(
        "media per publisher",
        format!(
            "audio 50 pkt/s + video {:.2} Mbit/s at {} fps = {:.0} pkt/s",
            r.video_bitrate as f64 / 1e6,
            r.fps,
            r.publisher_pps
        ),
    );
    if !r.simulcast.is_empty() {
        row("simulcast layers", r.simulcast.join(", "));
    }
    if let Some(d) = &r.downlink {
        row(
            "capped downlink",
            format!(
                "{:.0} kbit/s, queue {:.0} ms, {:.0} % of the receivers",
                d.kbps,
                d.queue_ms,
                d.capped_share * 100.0
            ),
        );
    }
    if let Some(relay) = &r.relay {
        row(
            "relayed through TURN/UDP",
            format!(
                "{} of {} participants ({} publish; --relay-share {}), {} allocations, {} failed",
                relay.participants,
                r.participants,
                relay.publishers,
                relay.share,
                relay.allocations,
                relay.allocation_failures
            ),
        );
    }
    row("measured window", format!("{:.1} s", r.measured_secs));
    row(
        "forwarded packets/s (received)",
        format!("{:.0}", r.forwarded_pps),
    );
    if let Some(s) = &r.server {
        row("server CPU", format!("{:.1} % of a core", s.cpu_percent));
        row(
            "server CPU per 1,000 forwarded packets",
            format!("{:.3} ms", s.cpu_ms_per_1000_packets),
        );
        row(
            "server memory",
            format!(
                "{:.1} MiB ({:.1} KiB per subscribed track)",
                s.rss_mib, s.rss_kib_per_subscribed_track
            ),
        );
    } else {
        row("server CPU and memory", "n/a (give --server-pid)".into());
    }
    if let Some(l) = &r.server_latency {
        row(
            "time inside the server p50 / p99",
            format!(
                "{:.3} / {:.3} ms (server histogram, {} packets)",
                l.p50_ms, l.p99_ms, l.packets
            ),
        );
    }
    row(
        "generator CPU",
        format!(
            "{:.1} % of a core ({:.3} ms per 1,000 received packets)",
            r.generator.cpu_percent, r.generator.cpu_ms_per_1000_packets
        ),
    );
    row(
        "loss",
        format!(
            "{:.3} % ({} of {} packets), {} reordered",
            r.rx.loss * 100.0,
            r.rx.lost,
            r.rx.expected,
            r.rx.reordered
        ),
    );
    row(
        "delay p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            r.rx.delay_p50_ms, r.rx.delay_p99_ms, r.rx.delay_max_ms
        ),
    );
    if r.rx.restarts > 0 || r.rx.skipped_by_server > 0 {
        row(
            "layer switches + resumes seen",
            format!(
                "{} ({} packets skipped by the server before a keyframe, not loss)",
                r.rx.restarts, r.rx.skipped_by_server
            ),
        );
    }
    row(
        "jitter (mean, RFC 3550)",
        format!("{:.2} ms", r.rx.jitter_mean_ms),
    );
    if r.groups.len() > 1 || r.downlink.is_some() {
        for g in &r.groups {
            let ended: Vec<String> = g.ended_on.iter().map(|(k, v)| format!("{v} {k}")).collect();
            row(
                &format!("{:?} receivers", g.group).to_lowercase(),
                format!(
                    "{}: {:.0} pkt/s each, video {:.0} kbit/s per stream, loss {:.3} %, delay p50/p99 {:.1}/{:.1} ms, videos ended on: {}",
                    g.receivers,
                    g.received_pps_per_receiver,
                    g.video_kbps_per_stream,
                    g.loss * 100.0,
                    g.delay_p50_ms,
                    g.delay_p99_ms,
                    ended.join(", ")
                ),
            );
        }
        row(
            "capped link / adaptive signaling",
            format!(
                "{} datagrams dropped, {} delivered; {} track_paused, {} track_resumed",
                r.tx.downlink_drops,
                r.tx.downlink_delivered,
                r.tx.tracks_paused,
                r.tx.tracks_resumed
            ),
        );
    }
    if !r.simulcast.is_empty() {
        row(
            "keyframe requests / publish_layers",
            format!(
                "{} ({} naming a layer) / {}",
                r.tx.keyframe_requests, r.tx.keyframe_requests_by_rid, r.tx.publish_layers
            ),
        );
    }
    for p in &r.paths {
        row(
            &format!("{:?} receivers", p.path).to_lowercase(),
            format!(
                "{} ({} receiving): {:.0} pkt/s each, loss {:.3} % ({} of {}), delay p50/p99 {:.2}/{:.2} ms",
                p.receivers,
                p.receiving,
                p.received_pps_per_receiver,
                p.loss * 100.0,
                p.lost,
                p.expected,
                p.delay_p50_ms,
                p.delay_p99_ms
            ),
        );
    }
    if let Some(t) = &r.turn {
        row(
            "TURN relayed (server, window)",
            format!(
                "in {} / out {} packets ({:.0} pkt/s both ways), {:.1} MB; {} allocations held, {} refused",
                t.relayed_in_packets,
                t.relayed_out_packets,
                t.relayed_pps,
                t.relayed_bytes as f64 / 1e6,
                t.allocations,
                t.refused
            ),
        );
    }
    if r.relay.is_some() {
        row(
            "TURN client (generator)",
            format!(
                "{} channel binds, {} refreshes, {} errors, {} datagrams dropped",
                r.tx.turn_channel_binds, r.tx.turn_refreshes, r.tx.turn_errors, r.tx.turn_dropped
            ),
        );
    }
    row(
        "join time p50 / p99",
        format!(
            "{} / {} ms ({} joined, {} failed)",
            r.rx.join_p50_ms, r.rx.join_p99_ms, r.rx.joins, r.rx.join_failures
        ),
    );
    if !r.errors.is_empty() {
        row("participants stopped early", format!("{:?}", r.errors));
    }
    if let Some(c) = &r.capacity {
        match &c.last_good {
            Some(s) => row(
                "capacity (last good step)",
                format!(
                    "{} units, {} participants, {:.0} forwarded pkt/s, p99 {:.2} ms, loss {:.3} %",
                    s.units,
                    s.participants,
                    s.forwarded_pps,
                    s.delay_p99_ms,
                    s.loss * 100.0
                ),
            ),
            None => row(
                "capacity (last good step)",
                "none: the first step was over the limits".into(),
            ),
        }
        row("capacity search stopped", c.stopped_because.clone());
    }
    out
}
