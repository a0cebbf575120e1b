//! A recorded consultation end to end through the running server: webrtc-rs clients call
//! through the SFU, the doctor records, the patient refuses consent; the archive then holds a
//! signed manifest and encrypted segments of the doctor's tracks only, which verify with the
//! key-encryption key and export to files ffprobe reads as VP8 and Opus.
//!
//! The clients send synthetic (not decodable) media, so this test checks structure, codecs,
//! timing and the crypto chain; decodable recordings are checked in the recorder's own tests
//! with ffmpeg-made media.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::rs_client::{CandidateMode, RsPeer};
use common::*;
use huizhen_signaling::protocol::{ClientMessage, ServerMessage};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `join_consultation`, then hand the socket to a webrtc-rs peer.
async fn enter_call(mut ws: Ws, consultation: &str, name: &str, index: u8) -> RsPeer {
    send_msg(
        &mut ws,
        &ClientMessage::JoinConsultation {
            consultation: consultation.into(),
        },
    )
    .await;
    let (joined, _) = recv_until(&mut ws, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;
    let ServerMessage::Joined {
        participant_id,
        participants,
        ..
    } = joined
    else {
        unreachable!()
    };
    RsPeer::on_joined_socket(
        ws,
        Joined {
            participant_id,
            participants,
            ice_servers: Vec::new(),
        },
        name,
        index,
        CandidateMode::Trickle,
    )
    .await
    .expect("peer connects")
}

/// A doctor and a patient in a call through the server at `addr` (set up through its REST API
/// with `api_key`), the doctor recording, the patient having answered the consent request
/// with `consents`.
async fn recorded_call(addr: &str, api_key: &str, consents: bool) -> (RsPeer, RsPeer, String) {
    let soon = now_secs() * 1000 + 60_000;
    assert_eq!(
        http_json(
            addr,
            "POST",
            "/api/v1/clinics",
            Some(api_key),
            Some(json!({"id": "k", "doctor": "dr-li", "name": "K"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        http_json(
            addr,
            "POST",
            "/api/v1/appointments",
            Some(api_key),
            Some(json!({"id": "ap", "clinic": "k", "patient": "pat-a", "slot_start_ms": soon}))
        )
        .await
        .0,
        201
    );
    let token = |body: serde_json::Value| async move {
        let (status, reply) =
            http_json(addr, "POST", "/api/v1/tokens", Some(api_key), Some(body)).await;
        assert_eq!(status, 201, "{reply}");
        reply["token"].as_str().unwrap().to_owned()
    };
    let dt =
        token(json!({"sub": "dr-li", "name": "Dr Li", "role": "doctor", "clinics": ["k"]})).await;
    let pt =
        token(json!({"sub": "pat-a", "name": "A", "role": "patient", "appointment": "ap"})).await;
    let mut doctor_ws = authed_socket(addr, dt).await;
    let mut patient_ws = authed_socket(addr, pt).await;
    send_msg(
        &mut patient_ws,
        &ClientMessage::CheckIn {
            appointment: "ap".into(),
        },
    )
    .await;
    recv_until(&mut patient_ws, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Waiting { .. })
    })
    .await;
    send_msg(
        &mut doctor_ws,
        &ClientMessage::Invite {
            clinic: "k".into(),
            patient: None,
        },
    )
    .await;
    let (ringing, _) = recv_until(&mut patient_ws, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Ringing { .. })
    })
    .await;
    let ServerMessage::Ringing {
        invitation,
        consultation,
        ..
    } = ringing
    else {
        unreachable!()
    };
    send_msg(
        &mut patient_ws,
        &ClientMessage::AcceptInvitation { invitation },
    )
    .await;
    recv_until(&mut patient_ws, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsultationReady { .. })
    })
    .await;
    let doctor = enter_call(doctor_ws, &consultation, "doctor", 0).await;
    let patient = enter_call(patient_ws, &consultation, "patient", 1).await;
    doctor
        .wait_remote_tracks(2, WAIT)
        .await
        .expect("doctor receives the patient");
    patient
        .wait_remote_tracks(2, WAIT)
        .await
        .expect("patient receives the doctor");
    doctor.send(ClientMessage::StartRecording {
        consultation: consultation.clone(),
    });
    patient
        .wait_message("consent request", WAIT, |m| {
            matches!(m, ServerMessage::ConsentRequest { .. })
        })
        .await
        .unwrap();
    patient.send(ClientMessage::Consent {
        consultation: consultation.clone(),
        granted: consents,
    });
    patient
        .wait_message("consent applied", WAIT, |m| {
            matches!(m, ServerMessage::RecordingStatus { recorded, .. } if *recorded == consents)
        })
        .await
        .unwrap();
    (doctor, patient, consultation)
}

/// The doctor stops the recording and sees it stopped.
async fn stop_recording(doctor: &RsPeer, consultation: &str) {
    doctor.send(ClientMessage::StopRecording {
        consultation: consultation.to_owned(),
    });
    doctor
        .wait_message("stopped", WAIT, |m| {
            matches!(m, ServerMessage::RecordingStatus { active: false, .. })
        })
        .await
        .unwrap();
}

/// The manifest of the (only) recording in a local archive, once the spool has uploaded it.
async fn wait_for_manifest(archive_dir: &Path) -> std::path::PathBuf {
    let recordings = archive_dir.join("recordings");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = std::fs::read_dir(&recordings)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("manifest.json"))
            .filter(|p| p.exists());
        if let Some(p) = found {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no manifest archived in {}",
            recordings.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ffprobe_stream(file: &Path) -> serde_json::Value {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs (tests/run-all.sh installs ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consultation_is_recorded_for_consenting_participants_only() {
    init_tracing();
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.clinic.seed_demo = false;
    config.recorder.segment_ms = 1_000;
    config.recorder.keyframe_grace_ms = 500;
    const HOOK_SECRET: &str = "recording-hook-secret-0123";
    let (hook_url, hooks) = webhook_receiver(HOOK_SECRET).await;
    config.webhook.url = Some(hook_url);
    config.webhook.secret = Some(HOOK_SECRET.into());
    let data_dir = config.storage.data_dir.clone();
    let archive_dir = config.archive.local_dir.clone();
    let server = huizhen::server::start(config).await.unwrap();
    let (doctor, patient, consultation) =
        recorded_call(&server.http_addr().to_string(), server.api_key(), false).await;
    let media_doctor = doctor.start_media(Duration::from_millis(20));
    let media_patient = patient.start_media(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop_recording(&doctor, &consultation).await;
    media_doctor.stop().await;
    media_patient.stop().await;

    // The manifest reaches the archive once the spool has uploaded everything.
    let manifest_path = wait_for_manifest(&archive_dir).await;
    let manifest =
        huizhen::vault::Manifest::from_json(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let kek = huizhen::vault::LocalKek::from_file(&data_dir.join("recording-kek")).unwrap();
    let signer =
        huizhen::vault::load_signing_key(&data_dir.join("recording-signing-key.pem")).unwrap();
    let fetch = |key: &str| std::fs::read(archive_dir.join(key)).map_err(|e| e.to_string());
    let report = huizhen::vault::verify_recording(
        &manifest,
        fetch,
        huizhen::vault::Signers::Pinned(&[signer.verifying_key()]),
        Some(&kek),
    );
    assert!(report.is_ok(), "{report}");
    // The hospital's system hears that it is complete and archived.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let archived = hooks.lock().unwrap().iter().any(|v| {
            v["type"] == "recording.archived"
                && v["data"]["recording"] == manifest.recording_id.as_str()
        });
        if archived {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recording.archived webhook"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The refusing patient is absent; the decisions are in the manifest.
    assert!(!manifest.tracks.is_empty());
    assert!(
        manifest.tracks.iter().all(|t| t.participant == "dr-li"),
        "{:?}",
        manifest.tracks
    );
    let decisions: Vec<(&str, huizhen::vault::ConsentDecision)> = manifest
        .consents
        .iter()
        .map(|c| (c.user_id.as_str(), c.decision))
        .collect();
    assert!(decisions.contains(&("pat-a", huizhen::vault::ConsentDecision::Refused)));
    assert!(decisions.contains(&("dr-li", huizhen::vault::ConsentDecision::Granted)));

    // Export: each track decrypts and finalizes into a file ffprobe reads with its codec.
    let data_key = huizhen::vault::KeyWrapper::unwrap(&kek, &manifest.wrapped_key).unwrap();
    let mut codecs = Vec::new();
    for track in &manifest.tracks {
        let plain: Vec<Vec<u8>> = track
            .segments
            .iter()
            .map(|s| {
                huizhen::vault::open_recorded_segment(
                    &manifest,
                    s,
                    &data_key,
                    &fetch(&s.object_key).unwrap(),
                )
                .unwrap()
            })
            .collect();
        let file = data_dir.join(format!(
            "{}.{}",
            track.track_id,
            if track.codec == "h264" { "mkv" } else { "webm" }
        ));
        std::fs::write(&file, huizhen::recorder::finalize(&plain).unwrap()).unwrap();
        let probe = ffprobe_stream(&file);
        let codec = probe["streams"][0]["codec_name"]
            .as_str()
            .unwrap()
            .to_owned();
        let duration: f64 = probe["format"]["duration"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (2.0..=5.0).contains(&duration),
            "{codec} lasts {duration} s for a ~4 s recording"
        );
        codecs.push(codec);
    }
    codecs.sort();
    assert_eq!(codecs, ["opus", "vp8"]);
    doctor.close().await;
    patient.close().await;
    server.shutdown().await;

    cli_tools(&data_dir, &archive_dir, &manifest);
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// `huizhen recording list|verify|export` on the archive the call produced, then on a tampered
/// copy and with a wrong key.
fn cli_tools(data_dir: &Path, archive_dir: &Path, manifest: &huizhen::vault::Manifest) {
    let bin = env!("CARGO_BIN_EXE_huizhen");
    let config = data_dir.join("tools.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {:?}\n[archive]\nlocal_dir = {:?}\n",
            data_dir.display().to_string(),
            archive_dir.display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("recording")
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let id = manifest.recording_id.as_str();
    let (ok, listed) = run(&["list"]);
    assert!(ok && listed.contains(id), "{listed}");
    let (ok, report) = run(&["verify", id]);
    assert!(ok && report.contains("result: OK"), "{report}");
    let out_dir = data_dir.join("export");
    let (ok, written) = run(&["export", id, "--out", out_dir.to_str().unwrap()]);
    assert!(ok, "{written}");
    let files: Vec<_> = std::fs::read_dir(&out_dir).unwrap().flatten().collect();
    assert_eq!(files.len(), manifest.tracks.len());
    for f in files {
        let probe = ffprobe_stream(&f.path());
        assert!(probe["streams"][0]["codec_name"].is_string());
    }

    // A wrong key-encryption key: a clear error, nothing written.
    let wrong = data_dir.join("wrong-kek");
    std::fs::write(&wrong, [7u8; 32]).unwrap();
    let wrong_dir = data_dir.join("wrong-export");
    let (ok, text) = run(&[
        "export",
        id,
        "--out",
        wrong_dir.to_str().unwrap(),
        "--key",
        wrong.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("wrong key-encryption key"), "{text}");
    assert!(!wrong_dir.exists() || std::fs::read_dir(&wrong_dir).unwrap().next().is_none());

    // One flipped byte in one archived segment: verify names it, export refuses.
    let victim = &manifest.tracks[0].segments[1].object_key;
    let path = archive_dir.join(victim);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let (ok, report) = run(&["verify", id]);
    assert!(!ok && report.contains(victim.as_str()), "{report}");
    let tampered_dir = data_dir.join("tampered-export");
    let (ok, text) = run(&["export", id, "--out", tampered_dir.to_str().unwrap()]);
    assert!(!ok && text.contains("FAILED"), "{text}");
    assert!(
        !tampered_dir.exists(),
        "nothing exported from a tampered recording"
    );
}

/// A running `huizhen serve` process with its printed address and API key.
struct Process {
    child: std::process::Child,
    http: String,
    api_key: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(config: &Path) -> Process {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_huizhen"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut http, mut key) = (None, None);
    while http.is_none() || key.is_none() {
        let Some(Ok(line)) = lines.next() else { break };
        if line.contains("/room/demo") {
            http = line
                .split("http://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .map(str::to_owned);
        }
        if let Some(rest) = line.trim().strip_prefix("API key:") {
            key = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    Process {
        child,
        http: http.expect("address printed"),
        api_key: key.expect("API key printed"),
    }
}

async fn authed_socket(addr: &str, token: String) -> Ws {
    let mut ws = connect_ws(addr.parse().unwrap()).await;
    send_msg(&mut ws, &ClientMessage::Auth { token }).await;
    recv_until(&mut ws, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Authenticated { .. })
    })
    .await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_recording_keeps_the_completed_segments_and_marks_the_manifest() {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("huizhen-crash-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let data_dir = dir.join("data");
    let archive_dir = dir.join("archive");
    let config = dir.join("huizhen.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nudp_listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n[turn]\nudp_listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n\
             [storage]\ndata_dir = {:?}\n[archive]\nlocal_dir = {:?}\n[recorder]\nsegment_ms = 1000\nkeyframe_grace_ms = 500\n\
             [clinic]\nseed_demo = true\n",
            data_dir.display().to_string(),
            archive_dir.display().to_string()
        ),
    )
    .unwrap();
    let server = serve(&config);
    let (doctor, patient, _consultation) = recorded_call(&server.http, &server.api_key, true).await;
    let media_doctor = doctor.start_media(Duration::from_millis(20));
    let media_patient = patient.start_media(Duration::from_millis(20));
    // Wait until a few segments are journaled, then crash without any chance to clean up.
    let journal_dir = data_dir.join("recordings-journal");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let journaled = std::fs::read_dir(&journal_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| std::fs::read(e.path()).ok())
            .and_then(|b| huizhen::vault::Manifest::from_json(&b).ok())
            .map(|m| m.tracks.iter().map(|t| t.segments.len()).sum::<usize>())
            .unwrap_or(0);
        if journaled >= 6 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no segments journaled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    let _ = server.child.wait();
    media_doctor.stop().await;
    media_patient.stop().await;
    doctor.close().await;
    patient.close().await;
    drop(server);

    // Restart: the journal is signed as interrupted and archived with every spooled segment.
    let restarted = serve(&config);
    let manifest_path = wait_for_manifest(&archive_dir).await;
    let manifest =
        huizhen::vault::Manifest::from_json(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert!(
        manifest.interrupted.is_some(),
        "the manifest records the interruption"
    );
    assert!(
        manifest
            .tracks
            .iter()
            .map(|t| t.segments.len())
            .sum::<usize>()
            >= 6
    );
    // Every segment it lists reached the archive (spooled before the crash, uploaded after).
    let deadline = std::time::Instant::now() + WAIT;
    while manifest
        .tracks
        .iter()
        .flat_map(|t| t.segments.iter())
        .any(|s| !archive_dir.join(&s.object_key).exists())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "segments missing from the archive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(restarted);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_huizhen"))
        .args([
            "recording",
            "verify",
            &manifest.recording_id,
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("result: OK"),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_mid_call_loses_nothing() {
    use crate::common::s3::{S3sFs, ACCESS_KEY, BUCKET, SECRET_KEY};
    init_tracing();
    let root = std::env::temp_dir().join(format!("huizhen-s3rec-{:08x}", rand::random::<u32>()));
    let mut s3 = S3sFs::start(&root.join("s3"));
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.clinic.seed_demo = false;
    config.recorder.segment_ms = 1_000;
    config.recorder.keyframe_grace_ms = 500;
    config.archive.backend = huizhen::archive::ArchiveBackend::S3;
    config.archive.endpoint = Some(s3.endpoint());
    config.archive.bucket = Some(BUCKET.into());
    config.archive.access_key = Some(ACCESS_KEY.into());
    config.archive.secret_key = Some(SECRET_KEY.into());
    config.archive.retry_initial_ms = 100;
    config.archive.retry_max_ms = 500;
    let data_dir = config.storage.data_dir.clone();
    let server = huizhen::server::start(config).await.unwrap();
    let (doctor, patient, consultation) =
        recorded_call(&server.http_addr().to_string(), server.api_key(), true).await;
    let media_doctor = doctor.start_media(Duration::from_millis(20));
    let media_patient = patient.start_media(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // The store goes away mid-call: segments pile up in the spool.
    s3.kill();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let metrics = server.render_metrics();
    let depth: f64 = metrics
        .lines()
        .find(|l| l.starts_with("huizhen_archive_spool_depth "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("spool depth metric");
    assert!(
        depth >= 2.0,
        "segments wait in the spool during the outage (depth {depth})"
    );
    s3.restart();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop_recording(&doctor, &consultation).await;
    media_doctor.stop().await;
    media_patient.stop().await;
    // Everything reaches the bucket, in order, and the recording verifies from S3 alone.
    let store: std::sync::Arc<dyn huizhen::archive::ArchiveStore> = std::sync::Arc::new(s3.store());
    let deadline = std::time::Instant::now() + WAIT;
    let id = loop {
        let listed = huizhen::recorder::tools::list(store.as_ref())
            .await
            .unwrap();
        if let Some(r) = listed.first() {
            break r.id.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no manifest reached S3"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kek = huizhen::vault::LocalKek::from_file(&data_dir.join("recording-kek")).unwrap();
    let signer =
        huizhen::vault::load_signing_key(&data_dir.join("recording-signing-key.pem")).unwrap();
    let report = huizhen::recorder::tools::verify(
        store.as_ref(),
        &id,
        huizhen::vault::Signers::Pinned(&[signer.verifying_key()]),
        Some(&kek),
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{report}");
    let manifest = huizhen::recorder::tools::list(store.as_ref())
        .await
        .unwrap()
        .remove(0)
        .manifest;
    let segments: usize = manifest.tracks.iter().map(|t| t.segments.len()).sum();
    assert!(
        segments >= 4 * 5,
        "about 6 s of 4 tracks in 1 s segments, got {segments}"
    );
    assert_eq!(
        manifest.tracks.len(),
        4,
        "doctor and patient, audio and video"
    );
    doctor.close().await;
    patient.close().await;
    server.shutdown().await;
    drop(s3);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&data_dir);
}
