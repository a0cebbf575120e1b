//! The clinic over real HTTP and WebSocket on 127.0.0.1: the REST admin API, token checks and
//! every grant rule. Each refused action must get the right error code and an audit entry.

use crate::common;

use std::time::Duration;

use common::*;
use huizhen::auth::Claims;
use huizhen::server::ServerHandle;
use huizhen_signaling::clinic::Role;
use huizhen_signaling::protocol::{ClientMessage, ErrorCode, ServerMessage};
use serde_json::{json, Value};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// HTTP to the server under test: (status, JSON body).
async fn http(
    server: &ServerHandle,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    http_json(&server.http_addr().to_string(), method, path, key, body).await
}

fn token(server: &ServerHandle, claims: Claims) -> String {
    server.minter().mint(&claims).unwrap()
}

fn claims(sub: &str, role: Role) -> Claims {
    Claims::new(sub, format!("name of {sub}"), role, now_secs(), 3600)
}

/// A socket authenticated as `token`.
async fn authed(server: &ServerHandle, token: String) -> Ws {
    let mut ws = connect_ws(server.http_addr()).await;
    send_msg(&mut ws, &ClientMessage::Auth { token }).await;
    let (reply, _) = recv_until(&mut ws, REPLY_TIMEOUT, |m| {
        matches!(
            m,
            ServerMessage::Authenticated { .. } | ServerMessage::Error { .. }
        )
    })
    .await;
    assert!(
        matches!(reply, ServerMessage::Authenticated { .. }),
        "{reply:?}"
    );
    ws
}

/// Send `msg` and expect an error with `code`, skipping notifications.
async fn expect_refused(ws: &mut Ws, msg: ClientMessage, code: ErrorCode) {
    send_msg(ws, &msg).await;
    let (reply, _) = recv_until(ws, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;
    match reply {
        ServerMessage::Error { code: got, message } => {
            assert_eq!(got, code, "{msg:?} refused with {message}")
        }
        _ => unreachable!(),
    }
}

async fn audit_entries(server: &ServerHandle) -> Vec<Value> {
    let (status, body) = http(server, "GET", "/api/v1/audit", Some(server.api_key()), None).await;
    assert_eq!(status, 200);
    body.as_array().cloned().unwrap_or_default()
}

/// Wait until the audit trail holds an entry matching `pred`.
async fn expect_audit(server: &ServerHandle, what: &str, pred: impl Fn(&Value) -> bool) {
    for _ in 0..50 {
        if audit_entries(server).await.iter().any(&pred) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no audit entry for {what}: {:#?}",
        audit_entries(server).await
    );
}

fn refused_entry(command: &'static str, code: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| {
        e["kind"] == "refused" && e["details"]["command"] == command && e["details"]["code"] == code
    }
}

async fn setup() -> ServerHandle {
    init_tracing();
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.clinic.seed_demo = false;
    let server = huizhen::server::start(config).await.expect("server starts");
    let key = server.api_key().to_owned();
    for (id, doctor) in [("cardio", "dr-li"), ("derm", "dr-wu")] {
        let (status, body) = http(
            &server,
            "POST",
            "/api/v1/clinics",
            Some(&key),
            Some(json!({ "id": id, "doctor": doctor, "name": id })),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let soon = now_secs() * 1000 + 5 * 60_000;
    for (id, patient) in [("appt-a", "pat-a"), ("appt-b", "pat-b")] {
        let (status, body) = http(
            &server,
            "POST",
            "/api/v1/appointments",
            Some(&key),
            Some(
                json!({ "id": id, "clinic": "cardio", "patient": patient, "slot_start_ms": soon }),
            ),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_needs_the_key_and_validates_input() {
    let server = setup().await;
    let key = server.api_key().to_owned();
    assert_eq!(
        http(&server, "GET", "/api/v1/clinics", None, None).await.0,
        401
    );
    assert_eq!(
        http(
            &server,
            "GET",
            "/api/v1/clinics",
            Some("wrong-key-wrong-key"),
            None
        )
        .await
        .0,
        401
    );
    let (status, clinics) = http(&server, "GET", "/api/v1/clinics", Some(&key), None).await;
    assert_eq!(status, 200);
    assert_eq!(clinics.as_array().unwrap().len(), 2);
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/clinics",
        Some(&key),
        Some(json!({ "id": "x y" })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_request");
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/appointments",
        Some(&key),
        Some(json!({ "id": "z", "clinic": "nope", "patient": "p", "slot_start_ms": 1 })),
    )
    .await;
    assert_eq!(
        status, 400,
        "a time outside 2000-2100 is refused before anything else: {body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("slot_start_ms"),
        "{body}"
    );
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/appointments",
        Some(&key),
        Some(json!({ "id": "z", "clinic": "nope", "patient": "p", "slot_start_ms": 1_900_000_000_000u64 })),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/tokens",
        Some(&key),
        Some(json!({ "sub": "pat-a", "name": "A", "role": "patient", "appointment": "appt-a" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let minted = body["token"].as_str().unwrap().to_owned();
    let _ws = authed(&server, minted).await;
    // Time slots: appointments must fit one with room left.
    let nine = 1_900_000_000_000u64;
    let (status, slots) = http(
        &server,
        "POST",
        "/api/v1/clinics/derm/slots",
        Some(&key),
        Some(json!({ "start_ms": nine, "count": 3, "capacity": 1 })),
    )
    .await;
    assert_eq!(status, 201, "{slots}");
    assert_eq!(slots.as_array().unwrap().len(), 3);
    let book = |id: &str, at: u64| json!({ "id": id, "clinic": "derm", "patient": id, "slot_start_ms": at });
    assert_eq!(
        http(
            &server,
            "POST",
            "/api/v1/appointments",
            Some(&key),
            Some(book("s1", nine))
        )
        .await
        .0,
        201
    );
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/appointments",
        Some(&key),
        Some(book("s2", nine)),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("invalid_state")),
        "{body}"
    );
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/appointments",
        Some(&key),
        Some(book("s3", nine + 1)),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (_, slots) = http(
        &server,
        "GET",
        "/api/v1/clinics/derm/slots",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(slots[0]["booked"], 1);
    assert_eq!(slots[1]["booked"], 0);
    let (status, spec) = http(&server, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/appointments"]["post"].is_object());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_audited() {
    let server = setup().await;
    let mut ws = connect_ws(server.http_addr()).await;
    // Clinic messages need auth first.
    expect_refused(
        &mut ws,
        ClientMessage::CheckIn {
            appointment: "appt-a".into(),
        },
        ErrorCode::NotAuthenticated,
    )
    .await;
    // Forged: signed with another key.
    let other = huizhen::auth::AuthConfig {
        hs256_secret: Some("another-secret-another-secret-another-secret".into()),
        ..Default::default()
    };
    let forger = huizhen::auth::TokenMinter::new(&other).unwrap();
    let forged = forger.mint(&claims("pat-a", Role::Patient)).unwrap();
    expect_refused(
        &mut ws,
        ClientMessage::Auth { token: forged },
        ErrorCode::InvalidToken,
    )
    .await;
    // Expired an hour ago.
    let old = Claims::new("pat-a", "A", Role::Patient, now_secs() - 7200, 3600);
    expect_refused(
        &mut ws,
        ClientMessage::Auth {
            token: token(&server, old),
        },
        ErrorCode::ExpiredToken,
    )
    .await;
    // Three refusals before authenticating: the stranger's socket is closed.
    let (closing, _) = recv_until(&mut ws, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;
    assert!(
        matches!(
            closing,
            ServerMessage::Error {
                code: ErrorCode::TooManyRefusals,
                ..
            }
        ),
        "{closing:?}"
    );
    assert!(matches!(
        next_event(&mut ws, REPLY_TIMEOUT).await,
        Some(WsEvent::Closed(_))
    ));
    let mut ws = connect_ws(server.http_addr()).await;
    expect_refused(
        &mut ws,
        ClientMessage::Auth {
            token: "not.a.jwt".into(),
        },
        ErrorCode::InvalidToken,
    )
    .await;
    expect_audit(&server, "expired token", |e| {
        e["kind"] == "token_refused" && e["details"]["code"] == "expired_token"
    })
    .await;
    // The refusal names the claimed user, marked unverified, and the source as a keyed hash.
    expect_audit(&server, "forged token", |e| {
        e["kind"] == "token_refused"
            && e["details"]["code"] == "invalid_token"
            && e["details"]["claimed_user"] == "pat-a"
            && e["details"]["claimed_user_verified"] == false
            && e["details"]["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("src-") && !s.contains("127"))
    })
    .await;
    expect_audit(&server, "clinic message before auth", |e| {
        e["kind"] == "refused"
            && e["details"]["code"] == "not_authenticated"
            && e["subject"] == "appt-a"
    })
    .await;
    // A token is also checked on a plain room join: the verified name is used.
    let mut join = connect_ws(server.http_addr()).await;
    send_text(
        &mut join,
        r#"{"type":"join","v":1,"room":"r","display_name":"x","token":"garbage"}"#,
    )
    .await;
    let (reply, _) = recv_until(&mut join, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;
    assert!(matches!(
        reply,
        ServerMessage::Error {
            code: ErrorCode::InvalidToken,
            ..
        }
    ));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_rule_is_enforced_and_audited() {
    let server = setup().await;
    let mut doctor_claims = claims("dr-li", Role::Doctor);
    doctor_claims.clinics = vec!["cardio".into()];
    let mut a_claims = claims("pat-a", Role::Patient);
    a_claims.appointment = Some("appt-a".into());
    let mut doctor = authed(&server, token(&server, doctor_claims)).await;
    let mut a = authed(&server, token(&server, a_claims)).await;
    let mut b = authed(&server, token(&server, claims("pat-b", Role::Patient))).await;

    // A patient cannot check in to another patient's appointment.
    expect_refused(
        &mut b,
        ClientMessage::CheckIn {
            appointment: "appt-a".into(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    expect_audit(
        &server,
        "foreign check-in",
        refused_entry("check_in", "forbidden"),
    )
    .await;
    // Unknown appointment.
    expect_refused(
        &mut b,
        ClientMessage::CheckIn {
            appointment: "appt-zzz".into(),
        },
        ErrorCode::NotFound,
    )
    .await;

    send_msg(
        &mut a,
        &ClientMessage::CheckIn {
            appointment: "appt-a".into(),
        },
    )
    .await;
    let (waiting, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Waiting { .. })
    })
    .await;
    assert!(
        matches!(
            waiting,
            ServerMessage::Waiting {
                position: Some(1),
                ..
            }
        ),
        "{waiting:?}"
    );
    send_msg(
        &mut b,
        &ClientMessage::CheckIn {
            appointment: "appt-b".into(),
        },
    )
    .await;
    recv_until(&mut b, REPLY_TIMEOUT, |m| {
        matches!(
            m,
            ServerMessage::Waiting {
                position: Some(2),
                ..
            }
        )
    })
    .await;

    // A patient cannot invite, move up, or end.
    expect_refused(
        &mut b,
        ClientMessage::Invite {
            clinic: "cardio".into(),
            patient: None,
        },
        ErrorCode::Forbidden,
    )
    .await;
    expect_audit(
        &server,
        "patient invites",
        refused_entry("invite", "forbidden"),
    )
    .await;
    expect_refused(
        &mut b,
        ClientMessage::MoveUp {
            clinic: "cardio".into(),
            patient: "pat-b".into(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    // A doctor of another clinic cannot invite here.
    let mut wu = claims("dr-wu", Role::Doctor);
    wu.clinics = vec!["derm".into()];
    let mut other_doctor = authed(&server, token(&server, wu)).await;
    expect_refused(
        &mut other_doctor,
        ClientMessage::Invite {
            clinic: "cardio".into(),
            patient: None,
        },
        ErrorCode::Forbidden,
    )
    .await;

    // The doctor invites the first in line: a rings.
    send_msg(
        &mut doctor,
        &ClientMessage::Invite {
            clinic: "cardio".into(),
            patient: None,
        },
    )
    .await;
    let (ringing, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
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
    // b cannot answer a's invitation.
    expect_refused(
        &mut b,
        ClientMessage::AcceptInvitation {
            invitation: invitation.clone(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    expect_audit(
        &server,
        "foreign answer",
        refused_entry("accept_invitation", "forbidden"),
    )
    .await;
    // A second invitation while one is outstanding is refused.
    expect_refused(
        &mut doctor,
        ClientMessage::Invite {
            clinic: "cardio".into(),
            patient: None,
        },
        ErrorCode::InvalidState,
    )
    .await;

    send_msg(&mut a, &ClientMessage::AcceptInvitation { invitation }).await;
    let (ready, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsultationReady { .. })
    })
    .await;
    let ServerMessage::ConsultationReady { room, .. } = ready else {
        unreachable!()
    };
    assert!(room.starts_with("consult-"));

    // Nobody reaches the consultation's room by name.
    let mut sneaky = connect_ws(server.http_addr()).await;
    send_msg(&mut sneaky, &join_msg(&room, "sneaky")).await;
    let (reply, _) = recv_until(&mut sneaky, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;
    assert!(
        matches!(
            reply,
            ServerMessage::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{reply:?}"
    );
    // b cannot join a's consultation.
    expect_refused(
        &mut b,
        ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    expect_audit(
        &server,
        "foreign join",
        refused_entry("join_consultation", "forbidden"),
    )
    .await;

    // a and the doctor enter the call.
    for ws in [&mut a, &mut doctor] {
        send_msg(
            ws,
            &ClientMessage::JoinConsultation {
                consultation: consultation.clone(),
            },
        )
        .await;
        let (joined, _) = recv_until(ws, REPLY_TIMEOUT, |m| {
            matches!(m, ServerMessage::Joined { .. })
        })
        .await;
        assert!(matches!(joined, ServerMessage::Joined { room: r, .. } if r == room));
    }

    // A companion waits; the patient cannot admit; the doctor can.
    let mut companion_claims = claims("son-of-a", Role::Companion);
    companion_claims.appointment = Some("appt-a".into());
    let mut companion = authed(&server, token(&server, companion_claims)).await;
    // The companion learns which consultation to ask for.
    let (open, _) = recv_until(&mut companion, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsultationOpen { .. })
    })
    .await;
    assert_eq!(
        open,
        ServerMessage::ConsultationOpen {
            consultation: consultation.clone()
        }
    );
    send_msg(
        &mut companion,
        &ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    recv_until(&mut companion, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::WaitingForApproval { .. })
    })
    .await;
    recv_until(&mut doctor, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::CompanionWaiting { .. })
    })
    .await;
    expect_refused(
        &mut a,
        ClientMessage::Admit {
            consultation: consultation.clone(),
            user: "son-of-a".into(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    expect_audit(
        &server,
        "patient admits",
        refused_entry("admit", "forbidden"),
    )
    .await;
    send_msg(
        &mut doctor,
        &ClientMessage::Admit {
            consultation: consultation.clone(),
            user: "son-of-a".into(),
        },
    )
    .await;
    recv_until(&mut companion, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsultationReady { .. })
    })
    .await;
    // Admitted: joining again now enters the room.
    send_msg(
        &mut companion,
        &ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    recv_until(&mut companion, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;

    // An observer may join (without publishing); an expert needs a real link.
    let mut observer_claims = claims("student", Role::Observer);
    observer_claims.consultation = Some(consultation.clone());
    let mut observer = authed(&server, token(&server, observer_claims)).await;
    send_msg(
        &mut observer,
        &ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    recv_until(&mut observer, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;
    let mut fake_expert = claims("fake-expert", Role::Expert);
    fake_expert.consultation = Some(consultation.clone());
    fake_expert.jti = Some("made-up-link".into());
    let mut fake = authed(&server, token(&server, fake_expert)).await;
    expect_refused(
        &mut fake,
        ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
        ErrorCode::Forbidden,
    )
    .await;

    // The doctor's expert link works, until the consultation ends.
    send_msg(
        &mut doctor,
        &ClientMessage::InviteExpert {
            consultation: consultation.clone(),
            display_name: Some("Prof. Zhang".into()),
        },
    )
    .await;
    let (link, _) = recv_until(&mut doctor, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ExpertLink { .. })
    })
    .await;
    let ServerMessage::ExpertLink { path, .. } = link else {
        unreachable!()
    };
    let expert_token = path
        .split("token=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let mut expert = authed(&server, expert_token.clone()).await;
    send_msg(
        &mut expert,
        &ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    recv_until(&mut expert, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;

    // Only the doctor ends.
    expect_refused(
        &mut a,
        ClientMessage::EndConsultation {
            consultation: consultation.clone(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    expect_audit(
        &server,
        "patient ends",
        refused_entry("end_consultation", "forbidden"),
    )
    .await;
    send_msg(
        &mut doctor,
        &ClientMessage::EndConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    for ws in [&mut a, &mut expert, &mut companion] {
        recv_until(ws, REPLY_TIMEOUT, |m| {
            matches!(m, ServerMessage::ConsultationEnded { .. })
        })
        .await;
    }
    // Everyone's media session in the room is closed.
    recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Bye { .. })
    })
    .await;

    // The expert link is dead now, even for its owner on a fresh socket.
    let mut again = authed(&server, expert_token).await;
    expect_refused(
        &mut again,
        ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
        ErrorCode::LinkExpired,
    )
    .await;
    expect_audit(
        &server,
        "expired link",
        refused_entry("join_consultation", "link_expired"),
    )
    .await;

    // The whole trail is a valid hash chain and names the flow's events; every refusal above
    // (12 by the clinic, 1 by the session: the room joined by name) left an entry.
    expect_audit(
        &server,
        "room joined by name",
        refused_entry("join", "forbidden"),
    )
    .await;
    let entries = audit_entries(&server).await;
    let refused = entries.iter().filter(|e| e["kind"] == "refused").count();
    assert_eq!(refused, 13, "one audit entry per refused action");
    for kind in [
        "checked_in",
        "invited",
        "answered",
        "joined",
        "admitted",
        "consultation_ended",
    ] {
        assert!(
            entries.iter().any(|e| e["kind"] == kind),
            "no {kind} entry in {entries:#?}"
        );
    }
    let parsed: Vec<huizhen::audit::AuditEntry> =
        serde_json::from_value(Value::Array(entries)).unwrap();
    huizhen::audit::verify(&parsed).expect("audit chain verifies");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consultation_start_and_end_reach_the_hospital_system_signed() {
    const SECRET: &str = "hook-secret-0123456789";
    let (url, seen) = webhook_receiver(SECRET).await;
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.clinic.seed_demo = false;
    config.webhook.url = Some(url);
    config.webhook.secret = Some(SECRET.into());
    let server = huizhen::server::start(config).await.unwrap();
    let key = server.api_key().to_owned();
    let soon = now_secs() * 1000 + 60_000;
    assert_eq!(
        http(
            &server,
            "POST",
            "/api/v1/clinics",
            Some(&key),
            Some(json!({"id": "ent", "doctor": "dr-e", "name": "ENT"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        http(
            &server,
            "POST",
            "/api/v1/appointments",
            Some(&key),
            Some(json!({"id": "ap", "clinic": "ent", "patient": "pp", "slot_start_ms": soon}))
        )
        .await
        .0,
        201
    );
    let mut dc = claims("dr-e", Role::Doctor);
    dc.clinics = vec!["ent".into()];
    let mut doctor = authed(&server, token(&server, dc)).await;
    let mut patient = authed(&server, token(&server, claims("pp", Role::Patient))).await;
    send_msg(
        &mut patient,
        &ClientMessage::CheckIn {
            appointment: "ap".into(),
        },
    )
    .await;
    recv_until(&mut patient, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Waiting { .. })
    })
    .await;
    send_msg(
        &mut doctor,
        &ClientMessage::Invite {
            clinic: "ent".into(),
            patient: None,
        },
    )
    .await;
    let (ringing, _) = recv_until(&mut patient, REPLY_TIMEOUT, |m| {
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
        &mut patient,
        &ClientMessage::AcceptInvitation { invitation },
    )
    .await;
    recv_until(&mut doctor, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsultationReady { .. })
    })
    .await;
    send_msg(
        &mut doctor,
        &ClientMessage::EndConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    recv_until(&mut patient, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsultationEnded { .. })
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let types: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("").to_owned())
            .collect();
        if types.contains(&"consultation.started".to_owned())
            && types.contains(&"consultation.ended".to_owned())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "webhooks not received: {types:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = seen
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "consultation.ended")
        .cloned()
        .unwrap();
    assert_eq!(ended["data"]["consultation"], consultation.as_str());
    assert_eq!(ended["data"]["clinic"], "ent");
    assert!(ended["data"]["ended_at_ms"].as_u64().is_some());
    let roles: Vec<&str> = ended["data"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["role"].as_str())
        .collect();
    assert_eq!(roles, ["patient"], "who took part is reported");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_asks_everyone_and_audits_each_decision() {
    let server = setup().await;
    let mut dc = claims("dr-li", Role::Doctor);
    dc.clinics = vec!["cardio".into()];
    let mut ac = claims("pat-a", Role::Patient);
    ac.appointment = Some("appt-a".into());
    let mut doctor = authed(&server, token(&server, dc)).await;
    let mut a = authed(&server, token(&server, ac)).await;
    send_msg(
        &mut a,
        &ClientMessage::CheckIn {
            appointment: "appt-a".into(),
        },
    )
    .await;
    recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Waiting { .. })
    })
    .await;
    send_msg(
        &mut doctor,
        &ClientMessage::Invite {
            clinic: "cardio".into(),
            patient: None,
        },
    )
    .await;
    let (ringing, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
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
    send_msg(&mut a, &ClientMessage::AcceptInvitation { invitation }).await;
    for ws in [&mut a, &mut doctor] {
        send_msg(
            ws,
            &ClientMessage::JoinConsultation {
                consultation: consultation.clone(),
            },
        )
        .await;
        recv_until(ws, REPLY_TIMEOUT, |m| {
            matches!(m, ServerMessage::Joined { .. })
        })
        .await;
    }
    // Only the doctor may start it.
    expect_refused(
        &mut a,
        ClientMessage::StartRecording {
            consultation: consultation.clone(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    send_msg(
        &mut doctor,
        &ClientMessage::StartRecording {
            consultation: consultation.clone(),
        },
    )
    .await;
    let (request, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsentRequest { .. })
    })
    .await;
    let ServerMessage::ConsentRequest { recording, .. } = request else {
        unreachable!()
    };
    let (status, _) = recv_until(
        &mut doctor,
        REPLY_TIMEOUT,
        |m| matches!(m, ServerMessage::ConsentStatus { user, .. } if user == "pat-a"),
    )
    .await;
    assert!(
        matches!(status, ServerMessage::ConsentStatus { ref decision, .. } if decision == "pending")
    );
    // The patient refuses: told they are not recorded; the doctor sees it.
    send_msg(
        &mut a,
        &ClientMessage::Consent {
            consultation: consultation.clone(),
            granted: false,
        },
    )
    .await;
    let (mine, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::RecordingStatus { .. })
    })
    .await;
    assert_eq!(
        mine,
        ServerMessage::RecordingStatus {
            consultation: consultation.clone(),
            recording: recording.clone(),
            active: true,
            recorded: false
        }
    );
    recv_until(
        &mut doctor,
        REPLY_TIMEOUT,
        |m| matches!(m, ServerMessage::ConsentStatus { decision, .. } if decision == "refused"),
    )
    .await;
    // A companion admitted later is asked on entry.
    let mut cc = claims("son-of-a", Role::Companion);
    cc.appointment = Some("appt-a".into());
    let mut companion = authed(&server, token(&server, cc)).await;
    send_msg(
        &mut companion,
        &ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    recv_until(&mut companion, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::WaitingForApproval { .. })
    })
    .await;
    send_msg(
        &mut doctor,
        &ClientMessage::Admit {
            consultation: consultation.clone(),
            user: "son-of-a".into(),
        },
    )
    .await;
    recv_until(&mut companion, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsultationReady { .. })
    })
    .await;
    send_msg(
        &mut companion,
        &ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    recv_until(&mut companion, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsentRequest { .. })
    })
    .await;
    send_msg(
        &mut companion,
        &ClientMessage::Consent {
            consultation: consultation.clone(),
            granted: true,
        },
    )
    .await;
    recv_until(&mut companion, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::RecordingStatus { recorded: true, .. })
    })
    .await;
    // A refresh during the recording shows its state again.
    let mut ac2 = claims("pat-a", Role::Patient);
    ac2.appointment = Some("appt-a".into());
    let mut a_again = authed(&server, token(&server, ac2)).await;
    send_msg(
        &mut a_again,
        &ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    let (again, _) = recv_until(&mut a_again, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::RecordingStatus { .. })
    })
    .await;
    assert!(
        matches!(
            again,
            ServerMessage::RecordingStatus {
                active: true,
                recorded: false,
                ..
            }
        ),
        "{again:?}"
    );
    // The refreshed page took over the seat: the old socket was told and closed.
    let (bye, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Bye { .. })
    })
    .await;
    assert_eq!(
        bye,
        ServerMessage::Bye {
            reason: "replaced".into()
        }
    );
    // Stop: everyone is told.
    send_msg(
        &mut doctor,
        &ClientMessage::StopRecording {
            consultation: consultation.clone(),
        },
    )
    .await;
    recv_until(&mut a_again, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::RecordingStatus { active: false, .. })
    })
    .await;
    // Each decision is in the audit trail and in the consultation's record.
    expect_audit(&server, "refusal", |e| {
        e["kind"] == "consent_decided"
            && e["actor"] == "pat-a"
            && e["details"]["decision"] == "refused"
    })
    .await;
    expect_audit(&server, "grant", |e| {
        e["kind"] == "consent_decided"
            && e["actor"] == "son-of-a"
            && e["details"]["decision"] == "granted"
    })
    .await;
    let (_, c) = http(
        &server,
        "GET",
        &format!("/api/v1/consultations/{consultation}"),
        Some(server.api_key()),
        None,
    )
    .await;
    let consents = &c["recordings"][0]["consents"];
    let decisions: Vec<(&str, &str)> = consents
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["user"].as_str().unwrap(), x["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        decisions,
        [
            ("dr-li", "granted"),
            ("pat-a", "refused"),
            ("son-of-a", "granted")
        ]
    );
    // The operator's view of the call's media: participants by server id, no names.
    let path = format!("/api/v1/consultations/{consultation}/media");
    let (status, m) = http(&server, "GET", &path, Some(server.api_key()), None).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["consultation"], consultation.as_str());
    let people = m["media"]["participants"].as_array().expect("participants");
    assert!(!people.is_empty(), "{m}");
    assert!(
        people
            .iter()
            .all(|p| p["id"].as_str().is_some_and(|id| id.starts_with('p'))),
        "{m}"
    );
    for name in ["dr-li", "pat-a", "son-of-a"] {
        assert!(!m.to_string().contains(name), "{name} in {m}");
    }
    let (status, _) = http(&server, "GET", &path, None, None).await;
    assert_eq!(status, 401);
    let (status, _) = http(
        &server,
        "GET",
        "/api/v1/consultations/no-such/media",
        Some(server.api_key()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_minted_tokens_respect_the_configured_lifetime_cap() {
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.auth.max_lifetime_secs = 3600;
    // The demo links (12 h by default) are capped instead of failing the start.
    let server = huizhen::server::start(config)
        .await
        .expect("starts with a 1 h cap");
    assert!(server.dev_info().is_some());
    let key = server.api_key().to_owned();
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/tokens",
        Some(&key),
        Some(json!({ "sub": "u1", "name": "U", "role": "patient", "ttl_secs": 7200 })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("3600"), "{body}");
    server.shutdown().await;
}

/// The doctor invites pat-a, who answers and enters the call's SFU room on `a`.
async fn running_call(server: &ServerHandle) -> (Ws, Ws, String) {
    let (doctor, a, consultation, _) = running_call_with_grant(server).await;
    (doctor, a, consultation)
}

/// [`running_call`], with the patient's resume grant from `joined`.
async fn running_call_with_grant(
    server: &ServerHandle,
) -> (Ws, Ws, String, huizhen_signaling::protocol::ResumeGrant) {
    let mut dc = claims("dr-li", Role::Doctor);
    dc.clinics = vec!["cardio".into()];
    let mut ac = claims("pat-a", Role::Patient);
    ac.appointment = Some("appt-a".into());
    let mut doctor = authed(server, token(server, dc)).await;
    let mut a = authed(server, token(server, ac)).await;
    send_msg(
        &mut a,
        &ClientMessage::CheckIn {
            appointment: "appt-a".into(),
        },
    )
    .await;
    recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Waiting { .. })
    })
    .await;
    send_msg(
        &mut doctor,
        &ClientMessage::Invite {
            clinic: "cardio".into(),
            patient: None,
        },
    )
    .await;
    let (ringing, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
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
    send_msg(&mut a, &ClientMessage::AcceptInvitation { invitation }).await;
    recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ConsultationReady { .. })
    })
    .await;
    send_msg(
        &mut a,
        &ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    let (joined, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;
    let ServerMessage::Joined {
        resume: Some(grant),
        ..
    } = joined
    else {
        panic!("joined with a resume grant: {joined:?}")
    };
    (doctor, a, consultation, grant)
}

/// Wait until the SFU holds `n` participants.
async fn expect_participants(server: &ServerHandle, n: f64) {
    expect_metric(server, "huizhen_sfu_participants", n).await;
}

/// Wait until the metric `name` sums to `n`.
async fn expect_metric(server: &ServerHandle, name: &str, n: f64) {
    for _ in 0..100 {
        if metric_sum(&server.render_metrics(), name) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "expected {name} {n}: {}",
        metric_sum(&server.render_metrics(), name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_socket_of_the_same_user_takes_over_the_seat_and_the_old_one_leaves_media() {
    let server = setup().await;
    let (_doctor, mut a, consultation) = running_call(&server).await;
    expect_participants(&server, 1.0).await;
    expect_metric(&server, "huizhen_sfu_detached_participants", 0.0).await;
    let mut ac = claims("pat-a", Role::Patient);
    ac.appointment = Some("appt-a".into());
    let mut again = authed(&server, token(&server, ac)).await;
    let (bye, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Bye { .. })
    })
    .await;
    assert_eq!(
        bye,
        ServerMessage::Bye {
            reason: "replaced".into()
        }
    );
    assert!(
        matches!(
            next_event(&mut a, REPLY_TIMEOUT).await,
            Some(WsEvent::Closed(_))
        ),
        "the old socket closes"
    );
    // Its media session is kept for the resume grace (the new socket may be the same device
    // after a change of network), without a socket.
    expect_metric(&server, "huizhen_sfu_detached_participants", 1.0).await;
    expect_participants(&server, 1.0).await;
    expect_audit(&server, "takeover", |e| {
        e["kind"] == "session_replaced" && e["actor"] == "pat-a"
    })
    .await;
    // The new socket holds the seat and enters the call afresh (a reload: no resume): the
    // old participant is superseded at once, one media participant, not two.
    send_msg(
        &mut again,
        &ClientMessage::JoinConsultation { consultation },
    )
    .await;
    recv_until(&mut again, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;
    expect_participants(&server, 1.0).await;
    expect_metric(&server, "huizhen_sfu_detached_participants", 0.0).await;
    assert_eq!(
        metric_sum(
            &server.render_metrics(),
            "huizhen_sfu_leaves_total{reason=\"signaling_closed\"}"
        ),
        1.0,
        "the superseded participant left"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_whose_socket_is_replaced_resumes_the_same_participant_and_seat() {
    let server = setup().await;
    let (_doctor, mut a, _consultation, grant) = running_call_with_grant(&server).await;
    expect_participants(&server, 1.0).await;
    // A change of network: a new socket of the same patient while the old one lingers.
    let mut ac = claims("pat-a", Role::Patient);
    ac.appointment = Some("appt-a".into());
    let mut again = authed(&server, token(&server, ac)).await;
    recv_until(
        &mut a,
        REPLY_TIMEOUT,
        |m| matches!(m, ServerMessage::Bye { reason } if reason == "replaced"),
    )
    .await;
    // Somebody else's socket cannot take the participant, even with the token.
    let mut other = authed(&server, token(&server, claims("pat-b", Role::Patient))).await;
    send_msg(
        &mut other,
        &ClientMessage::Resume {
            token: grant.token.clone(),
        },
    )
    .await;
    let (refused, _) = recv_until(&mut other, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;
    assert!(
        matches!(
            refused,
            ServerMessage::Error {
                code: ErrorCode::NotAuthenticated,
                ..
            }
        ),
        "{refused:?}"
    );
    // The patient's new socket resumes: same participant, nothing renegotiated.
    send_msg(
        &mut again,
        &ClientMessage::Resume {
            token: grant.token.clone(),
        },
    )
    .await;
    let (resumed, _) = recv_until(&mut again, REPLY_TIMEOUT, |m| {
        matches!(
            m,
            ServerMessage::Resumed { .. } | ServerMessage::Error { .. }
        )
    })
    .await;
    assert!(
        matches!(resumed, ServerMessage::Resumed { .. }),
        "{resumed:?}"
    );
    expect_participants(&server, 1.0).await;
    expect_metric(&server, "huizhen_sfu_detached_participants", 0.0).await;
    expect_metric(&server, "huizhen_sfu_resumes_total", 1.0).await;
    // The resumed socket speaks for the seat: leaving the consultation works from it.
    send_msg(&mut again, &ClientMessage::Leave {}).await;
    recv_until(
        &mut again,
        REPLY_TIMEOUT,
        |m| matches!(m, ServerMessage::Bye { reason } if reason == "left"),
    )
    .await;
    expect_participants(&server, 0.0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expert_link_holds_one_live_session() {
    let server = setup().await;
    let (mut doctor, _a, consultation) = running_call(&server).await;
    send_msg(
        &mut doctor,
        &ClientMessage::InviteExpert {
            consultation: consultation.clone(),
            display_name: None,
        },
    )
    .await;
    let (link, _) = recv_until(&mut doctor, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::ExpertLink { .. })
    })
    .await;
    let ServerMessage::ExpertLink { path, .. } = link else {
        unreachable!()
    };
    let expert_token = path
        .split("token=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let mut first = authed(&server, expert_token.clone()).await;
    send_msg(
        &mut first,
        &ClientMessage::JoinConsultation {
            consultation: consultation.clone(),
        },
    )
    .await;
    recv_until(&mut first, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;
    expect_participants(&server, 2.0).await;
    // The same link from a second and a third socket: never more than one listener.
    let mut second = authed(&server, expert_token.clone()).await;
    recv_until(
        &mut first,
        REPLY_TIMEOUT,
        |m| matches!(m, ServerMessage::Bye { reason } if reason == "replaced"),
    )
    .await;
    let mut third = authed(&server, expert_token).await;
    recv_until(
        &mut second,
        REPLY_TIMEOUT,
        |m| matches!(m, ServerMessage::Bye { reason } if reason == "replaced"),
    )
    .await;
    // The first socket's participant is kept for the resume grace, without a socket; only the
    // holder of its resume token (the first device) could take it back.
    expect_participants(&server, 2.0).await;
    expect_metric(&server, "huizhen_sfu_detached_participants", 1.0).await;
    send_msg(
        &mut third,
        &ClientMessage::JoinConsultation { consultation },
    )
    .await;
    recv_until(&mut third, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;
    // Joining afresh supersedes it: the patient and one expert, never two listeners on one link.
    expect_participants(&server, 2.0).await;
    expect_metric(&server, "huizhen_sfu_detached_participants", 0.0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_warned_renewed_and_ended_with_its_token() {
    let server = setup().await;
    // A token with 3 s left: the warning comes at once (less than a minute left).
    let mut short = claims("pat-b", Role::Patient);
    short.iat = now_secs() - 3597;
    short.exp = short.iat + 3600;
    let mut b = authed(&server, token(&server, short)).await;
    let (warning, _) = recv_until(&mut b, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::TokenExpiring { .. })
    })
    .await;
    assert!(
        matches!(warning, ServerMessage::TokenExpiring { expires_at, expires_at_ms } if expires_at <= now_secs() + 3 && expires_at_ms == expires_at * 1000)
    );
    // A fresh token of the same user extends the session...
    send_msg(
        &mut b,
        &ClientMessage::Auth {
            token: token(&server, claims("pat-b", Role::Patient)),
        },
    )
    .await;
    let (renewed, _) = recv_until(&mut b, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::TokenRenewed { .. })
    })
    .await;
    assert!(
        matches!(renewed, ServerMessage::TokenRenewed { expires_at, expires_at_ms } if expires_at > now_secs() + 3000 && expires_at_ms == expires_at * 1000)
    );
    // ...and one of another user is refused on this socket.
    expect_refused(
        &mut b,
        ClientMessage::Auth {
            token: token(&server, claims("pat-a", Role::Patient)),
        },
        ErrorCode::Forbidden,
    )
    .await;
    // Past the old expiry the renewed session is still there.
    tokio::time::sleep(Duration::from_secs(4)).await;
    send_msg(&mut b, &ClientMessage::Ping {}).await;
    recv_until(&mut b, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Pong {})
    })
    .await;

    // Without renewal the session ends at expiry with a typed reason, and is audited.
    let mut short = claims("pat-a", Role::Patient);
    short.iat = now_secs() - 3598;
    short.exp = short.iat + 3600;
    let mut a = authed(&server, token(&server, short)).await;
    let (bye, _) = recv_until(&mut a, Duration::from_secs(10), |m| {
        matches!(m, ServerMessage::Bye { .. })
    })
    .await;
    assert_eq!(
        bye,
        ServerMessage::Bye {
            reason: "token_expired".into()
        }
    );
    assert!(matches!(
        next_event(&mut a, REPLY_TIMEOUT).await,
        Some(WsEvent::Closed(_))
    ));
    expect_audit(&server, "expiry", |e| {
        e["kind"] == "session_expired" && e["actor"] == "pat-a"
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_ends_its_live_session_and_stays_refused() {
    let server = setup().await;
    let key = server.api_key().to_owned();
    let (status, minted) = http(
        &server,
        "POST",
        "/api/v1/tokens",
        Some(&key),
        Some(json!({ "sub": "pat-a", "name": "A", "role": "patient", "appointment": "appt-a" })),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let (tok, jti) = (
        minted["token"].as_str().unwrap().to_owned(),
        minted["jti"].as_str().unwrap().to_owned(),
    );
    expect_audit(&server, "issue", |e| {
        e["kind"] == "token_issued" && e["subject"] == jti.as_str()
    })
    .await;
    let mut a = authed(&server, tok.clone()).await;
    send_msg(
        &mut a,
        &ClientMessage::CheckIn {
            appointment: "appt-a".into(),
        },
    )
    .await;
    recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Waiting { .. })
    })
    .await;
    let (status, body) = http(
        &server,
        "POST",
        &format!("/api/v1/tokens/{jti}/revoke"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(
        (status, body["sessions_ended"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    // The answer came after the session was ended: the socket already has its bye.
    let (bye, _) = recv_until(&mut a, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Bye { .. })
    })
    .await;
    assert_eq!(
        bye,
        ServerMessage::Bye {
            reason: "revoked".into()
        }
    );
    expect_audit(&server, "revocation", |e| {
        e["kind"] == "token_revoked"
            && e["subject"] == jti.as_str()
            && e["actor"]
                .as_str()
                .is_some_and(|k| k.starts_with("api-key:") && !k.contains(&key))
    })
    .await;
    let mut again = connect_ws(server.http_addr()).await;
    expect_refused(
        &mut again,
        ClientMessage::Auth { token: tok },
        ErrorCode::RevokedToken,
    )
    .await;
    expect_audit(&server, "revoked token refused", |e| {
        e["kind"] == "token_refused"
            && e["details"]["code"] == "revoked_token"
            && e["details"]["claimed_user"] == "pat-a"
            && e["details"]["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("src-"))
    })
    .await;
    // All of a user's tokens: a doctor's live console ends too.
    let mut dc = claims("dr-li", Role::Doctor);
    dc.clinics = vec!["cardio".into()];
    let mut doctor = authed(&server, token(&server, dc.clone())).await;
    let (status, _) = http(
        &server,
        "POST",
        "/api/v1/users/dr-li/revoke-tokens",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, 200);
    recv_until(
        &mut doctor,
        REPLY_TIMEOUT,
        |m| matches!(m, ServerMessage::Bye { reason } if reason == "revoked"),
    )
    .await;
    let mut again = connect_ws(server.http_addr()).await;
    expect_refused(
        &mut again,
        ClientMessage::Auth {
            token: token(&server, dc),
        },
        ErrorCode::RevokedToken,
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookings_are_strict_durable_and_audited() {
    let server = setup().await;
    let key = server.api_key().to_owned();
    let soon = now_secs() * 1000 + 5 * 60_000;
    let book = |id: &str, patient: &str, at: u64| json!({ "id": id, "clinic": "cardio", "patient": patient, "slot_start_ms": at });
    // The same booking again is a no-op (200); other content under the same id is a conflict.
    assert_eq!(
        http(
            &server,
            "POST",
            "/api/v1/appointments",
            Some(&key),
            Some(book("appt-a", "pat-a", soon))
        )
        .await
        .0,
        200
    );
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/appointments",
        Some(&key),
        Some(book("appt-a", "intruder", soon)),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    // Out-of-range fields are named.
    for (bad, field) in [
        (book("x", "p", 1 << 63), "slot_start_ms"),
        (book("x", "p", 5), "slot_start_ms"),
        (
            json!({ "id": "x".repeat(129), "clinic": "cardio", "patient": "p", "slot_start_ms": soon }),
            "id",
        ),
        (
            json!({ "id": "x", "clinic": "cardio", "patient": "p\u{200b}", "slot_start_ms": soon }),
            "patient",
        ),
    ] {
        let (status, body) = http(
            &server,
            "POST",
            "/api/v1/appointments",
            Some(&key),
            Some(bad),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{body}"
        );
    }
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/clinics",
        Some(&key),
        Some(json!({ "id": "k", "doctor": "d", "name": "" })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Reschedule and cancel while idle; refused while the patient waits or the call runs.
    let (status, moved) = http(
        &server,
        "POST",
        "/api/v1/appointments/appt-b/reschedule",
        Some(&key),
        Some(json!({ "slot_start_ms": soon + 60_000 })),
    )
    .await;
    assert_eq!(
        (status, moved["slot_start"].as_u64()),
        (200, Some(soon + 60_000)),
        "{moved}"
    );
    let (_doctor, _a, consultation) = running_call(&server).await;
    let (status, body) = http(
        &server,
        "DELETE",
        "/api/v1/appointments/appt-a",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, _) = http(
        &server,
        "POST",
        "/api/v1/appointments/appt-a/reschedule",
        Some(&key),
        Some(json!({ "slot_start_ms": soon })),
    )
    .await;
    assert_eq!(status, 409);
    let (status, cancelled) = http(
        &server,
        "DELETE",
        "/api/v1/appointments/appt-b",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        http(
            &server,
            "GET",
            "/api/v1/appointments/appt-b",
            Some(&key),
            None
        )
        .await
        .0,
        404
    );
    expect_audit(&server, "cancel", |e| {
        e["kind"] == "appointment_cancelled"
            && e["subject"] == "appt-b"
            && e["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("api-key:"))
    })
    .await;
    // Reads: the clinic's queue and its consultations (paged).
    let (status, queue) = http(
        &server,
        "GET",
        "/api/v1/clinics/cardio/queue",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(
        (status, queue.as_array().map(Vec::len)),
        (200, Some(0)),
        "{queue}"
    );
    let (status, page) = http(
        &server,
        "GET",
        "/api/v1/clinics/cardio/consultations?limit=1",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["consultations"][0]["id"], consultation.as_str());
    // The consultation was started by the doctor's invitation.
    expect_audit(&server, "start", |e| {
        e["kind"] == "consultation_started" && e["actor"] == "dr-li"
    })
    .await;
    // A wrong key is refused and recorded, bounded.
    for _ in 0..20 {
        assert_eq!(
            http(&server, "GET", "/api/v1/clinics", Some("wrong"), None)
                .await
                .0,
            401
        );
    }
    let rows = audit_entries(&server).await;
    let unauthorized = rows
        .iter()
        .filter(|e| e["kind"] == "api_unauthorized")
        .count();
    assert_eq!(
        unauthorized, 1,
        "twenty 401s in one interval: one row now, the count at its end"
    );
    server.shutdown().await;
}
