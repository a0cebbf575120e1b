//! The `huizhen` binary: starts on defaults-with-overrides, prints its links, stops cleanly on
//! SIGTERM, and refuses a bad config file with the field's name.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_huizhen");

fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

#[test]
fn serve_prints_links_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("huizhen-cli-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("huizhen.toml");
    std::fs::write(
        &config,
        format!(
            "[archive]\nlocal_dir = \"{}\"\n",
            dir.join("archive").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
            "--udp-listen",
            "127.0.0.1:0",
            "--tcp-listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.join("data").to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start huizhen");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut http_addr = None;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let Some(Ok(line)) = lines.next() else { break };
        seen.push(line.clone());
        if let Some(rest) = line.split("http://").nth(1) {
            if line.contains("/room/demo") {
                http_addr = rest.split('/').next().map(str::to_owned);
                break;
            }
        }
    }
    let addr = http_addr.expect("a room link on stdout");
    // The development-mode warnings come first; into a pipe, without colour codes.
    assert!(
        seen.iter().any(|l| l.contains("WARN")),
        "a warning was logged: {seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains('\u{1b}')),
        "no escape codes in piped output: {seen:?}"
    );
    assert_eq!(http_status(&addr, "/readyz"), Some(200));

    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status after SIGTERM: {exit}");
}

#[test]
fn bad_config_is_refused_with_the_field_name() {
    let dir = std::env::temp_dir().join(format!("huizhen-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[media]\nkeyframe_throttle_ms = 3\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("media.keyframe_throttle_ms"), "{stderr}");

    let out = Command::new(BIN)
        .args(["config", "check", "configs/huizhen.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tools never create what they read: pointed at an empty place they fail, name the path they
/// looked at, and leave nothing behind (before: a fresh database with a new secret, whose
/// tokens the server refused, or an empty archive, and exit 0).
#[test]
fn tools_refuse_missing_data_naming_the_path_and_create_nothing() {
    let dir = std::env::temp_dir().join(format!("huizhen-cli-empty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let data_arg = data.to_str().unwrap();
    for args in [
        vec![
            "token",
            "--data-dir",
            data_arg,
            "--sub",
            "u1",
            "--name",
            "A",
            "--role",
            "patient",
        ],
        vec!["audit", "verify", "--data-dir", data_arg],
        vec!["audit", "export", "--data-dir", data_arg],
    ] {
        let (ok, stderr) = run(&args);
        assert!(!ok, "{args:?} failed");
        assert!(
            stderr.contains(&data.join("huizhen.db").display().to_string()),
            "{args:?} names the database it looked for: {stderr}"
        );
    }
    // The archive: by default `huizhen-archive` in the current directory.
    let (ok, stderr) = run(&["recording", "list"]);
    assert!(!ok);
    assert!(stderr.contains("huizhen-archive"), "{stderr}");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing was created in {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
