//! Smoke test of the load generator against a real huizhen (in this process, on 127.0.0.1):
//! each scenario with a handful of participants for a few seconds. It asserts that nobody
//! crashed or was refused, that every receiver got media and that the JSON report is complete;
//! no timing thresholds (those belong to `loadtest/bench.sh`).

use std::process::Command;

use huizhen::config::Config;
use serde_json::Value;

/// Runs the generator binary with `args` against `server`; returns its JSON report.
fn run_generator(server: &huizhen::server::ServerHandle, args: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!(
        "huizhen-loadtest-smoke-{}-{}",
        std::process::id(),
        args.join("-")
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    let url = format!("ws://{}/ws", server.http_addr());
    let pid = std::process::id().to_string();
    let metrics = format!("http://{}/metrics", server.http_addr());
    let output = Command::new(env!("CARGO_BIN_EXE_huizhen-loadtest"))
        .args([
            "--url",
            &url,
            "--server-pid",
            &pid,
            "--quiet",
            "--require-media",
            "--warmup",
            "1",
        ])
        .args([
            "--json",
            json.to_str().expect("utf-8 path"),
            "--metrics-url",
            &metrics,
        ])
        .args(args)
        .output()
        .expect("the generator runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "generator {args:?} failed: {:?}\n{stdout}\n{stderr}",
        output.status
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON report written"))
            .expect("JSON report parses");
    let _ = std::fs::remove_dir_all(&dir);
    report
}

fn check(report: &Value, participants: u64, receivers: u64, subscribed_tracks: u64) {
    assert_eq!(report["target"], "huizhen");
    assert_eq!(report["participants"], participants, "{report:#}");
    assert_eq!(report["subscribed_tracks"], subscribed_tracks, "{report:#}");
    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "nobody stopped early: {report:#}"
    );
    let rx = &report["rx"];
    assert_eq!(
        rx["joins"], receivers,
        "every receiver got media: {report:#}"
    );
    assert_eq!(rx["join_failures"], 0);
    assert!(rx["received"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(
        rx["foreign"], 0,
        "every payload arrived intact and was ours"
    );
    // Both kinds from every publisher at every receiver.
    assert_eq!(rx["streams"], subscribed_tracks, "{report:#}");
    assert!(report["forwarded_pps"].as_f64().unwrap() > 0.0);
    assert!(
        report["server"]["cpu_ms_per_1000_packets"]
            .as_f64()
            .unwrap()
            > 0.0,
        "server CPU sampled"
    );
    assert!(
        report["generator"]["rss_mib"].as_f64().unwrap() > 0.0,
        "generator sampled"
    );
    assert!(
        report["server_latency"]["packets"].as_u64().unwrap() > 0,
        "server histogram scraped: {report:#}"
    );
}

/// Runs the generator on a blocking thread (the server keeps serving on the runtime).
async fn generator(
    server: &std::sync::Arc<huizhen::server::ServerHandle>,
    args: &'static [&'static str],
) -> Value {
    let server = server.clone();
    tokio::task::spawn_blocking(move || run_generator(&server, args))
        .await
        .expect("the generator thread finishes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_huizhen_with_media_received() {
    let server = huizhen::server::start(Config::loopback_for_tests())
        .await
        .expect("server starts");
    let server = std::sync::Arc::new(server);

    let followup = generator(
        &server,
        &["--scenario", "followup", "--units", "2", "--duration", "5"],
    )
    .await;
    check(&followup, 4, 4, 8);

    let panel = generator(
        &server,
        &[
            "--scenario",
            "panel",
            "--units",
            "1",
            "--room-size",
            "4",
            "--duration",
            "5",
        ],
    )
    .await;
    check(&panel, 4, 4, 24);

    let teaching = generator(
        &server,
        &[
            "--scenario",
            "teaching",
            "--units",
            "1",
            "--observers",
            "4",
            "--duration",
            "5",
        ],
    )
    .await;
    check(&teaching, 5, 4, 8);

    // Simulcast publishers, half of the receivers behind an 800 kbit/s downlink: everyone
    // still gets media, the report has both groups, the publishers sent three layers. At
    // 600 kbit/s the three low layers and the voices (~548 kbit/s on the wire) fit the link
    // but not the estimate (~500 kbit/s), so one video per capped receiver was paused at the
    // start and, by design, never resumed (a resume needs 1.1 times the need): the test
    // passed only when that video had delivered a packet before its pause (a race, lost in
    // CI). At 800 kbit/s each video paused at the start came back (six standalone runs).
    // The receivers are still capped far below the three top layers (~2.4 Mbit/s).
    let adaptive = generator(
        &server,
        &[
            "--scenario",
            "panel",
            "--units",
            "1",
            "--room-size",
            "4",
            // Long enough for a video paused at the start to come back: a receiver whose
            // first second lost heavily (a debug-built generator on a loaded machine) has its
            // link left unprobed for PROBE_EMBARGO (5 s), a resume waits 3 s at least and needs
            // its estimate sustained for 2 s; in 6 s such a video was never received.
            "--duration",
            "15",
            "--simulcast",
            "q,h,f",
            "--downlink-kbps",
            "800",
            "--capped-share",
            "0.5",
        ],
    )
    .await;
    check(&adaptive, 4, 4, 24);
    assert_eq!(adaptive["simulcast"], serde_json::json!(["q", "h", "f"]));
    let groups = adaptive["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{adaptive:#}");
    for g in groups {
        assert_eq!(g["receivers"], 2, "{adaptive:#}");
        assert!(g["received_pps"].as_f64().unwrap() > 0.0, "{adaptive:#}");
    }
    assert!(
        adaptive["tx"]["downlink_delivered"].as_u64().unwrap() > 0,
        "{adaptive:#}"
    );

    // A short capacity search: it measures steps and names a last good one or a reason.
    let capacity = generator(
        &server,
        &[
            "--scenario",
            "followup",
            "--units",
            "1",
            "--find-capacity",
            "--step-units",
            "1",
            "--step-secs",
            "2",
            "--max-units",
            "2",
            "--duration",
            "15",
        ],
    )
    .await;
    let steps = capacity["capacity"]["steps"]
        .as_array()
        .expect("capacity steps");
    assert!(!steps.is_empty(), "{capacity:#}");
    assert!(capacity["capacity"]["stopped_because"].as_str().is_some());

    // The server saw the load as well: its forwarding counter moved.
    let metrics = server.render_metrics();
    let forwarded: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("huizhen_sfu_rtp_packets_sent_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(forwarded > 1000.0, "server forwarded {forwarded} packets");
    match std::sync::Arc::try_unwrap(server) {
        Ok(server) => server.shutdown().await,
        Err(_) => panic!("server handle still shared"),
    }
}

/// `--relay-share 0.5`: one of the two in each visit allocates on the server's embedded TURN
/// (UDP) with the credential of `joined` and connects relay-only; both still get media, the
/// report tells the relayed receivers apart, and the server's TURN counters moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_share_connects_through_the_servers_turn() {
    let server = huizhen::server::start(Config::loopback_for_tests())
        .await
        .expect("server starts");
    let server = std::sync::Arc::new(server);
    let report = generator(
        &server,
        &[
            "--scenario",
            "followup",
            "--units",
            "2",
            "--duration",
            "6",
            "--relay-share",
            "0.5",
        ],
    )
    .await;
    check(&report, 4, 4, 8);
    assert_eq!(report["relay"]["participants"], 2, "{report:#}");
    assert_eq!(report["relay"]["allocations"], 2, "{report:#}");
    let paths = report["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 2, "{report:#}");
    for p in paths {
        assert_eq!(p["receiving"], 2, "{report:#}");
        assert!(p["received_pps"].as_f64().unwrap() > 0.0, "{report:#}");
    }
    let turn = &report["turn"];
    assert!(
        turn["relayed_in_packets"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert!(
        turn["relayed_out_packets"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    match std::sync::Arc::try_unwrap(server) {
        Ok(server) => server.shutdown().await,
        Err(_) => panic!("server handle still shared"),
    }
}
