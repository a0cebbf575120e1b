//! Signaling resume over real WebSockets: a dropped socket keeps its participant for the
//! grace, a new socket takes it back with the token from `joined`, a half-open old socket is
//! told it was replaced, spent and expired tokens are refused, and the others never see the
//! participant leave.

use crate::common;

use std::time::Duration;

use common::{connect_ws, join_msg, metric_sum, next_event, recv_until, send_msg, WsEvent};
use huizhen_signaling::protocol::{ClientMessage, ErrorCode, ResumeGrant, ServerMessage};

const STEP: Duration = Duration::from_secs(5);

/// Join and return (participant id, resume grant).
async fn join_with_grant(ws: &mut common::Ws, room: &str, name: &str) -> (String, ResumeGrant) {
    send_msg(ws, &join_msg(room, name)).await;
    let (m, _) = recv_until(ws, STEP, |m| matches!(m, ServerMessage::Joined { .. })).await;
    let ServerMessage::Joined {
        participant_id,
        resume,
        ..
    } = m
    else {
        unreachable!()
    };
    (
        participant_id,
        resume.expect("joined carries a resume token"),
    )
}

async fn resume(ws: &mut common::Ws, token: &str) -> ServerMessage {
    send_msg(
        ws,
        &ClientMessage::Resume {
            token: token.to_owned(),
        },
    )
    .await;
    let (m, _) = recv_until(ws, STEP, |m| {
        matches!(
            m,
            ServerMessage::Resumed { .. } | ServerMessage::Error { .. }
        )
    })
    .await;
    m
}

/// Nothing but `pong`s and the listed message types for `d`.
async fn quiet_except(ws: &mut common::Ws, d: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(ws, left).await {
            None => return,
            Some(WsEvent::Msg(ServerMessage::ParticipantLeft { participant_id })) => {
                panic!("{what}: participant_left {participant_id}")
            }
            Some(WsEvent::Msg(ServerMessage::ParticipantJoined { participant })) => {
                panic!("{what}: participant_joined {participant:?}")
            }
            Some(WsEvent::Closed(why)) => panic!("{what}: socket closed: {why}"),
            Some(_) => {}
        }
    }
}

fn error_code(m: &ServerMessage) -> Option<ErrorCode> {
    match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn a_dropped_socket_is_resumed_as_the_same_participant_and_nobody_sees_it_leave() {
    let server = common::start_server().await;
    let addr = server.http_addr();
    let room = common::unique_room("resume");
    let mut alice = connect_ws(addr).await;
    let (alice_id, _) = join_with_grant(&mut alice, &room, "alice").await;
    let mut bob = connect_ws(addr).await;
    let (bob_id, grant) = join_with_grant(&mut bob, &room, "bob").await;
    assert_eq!(grant.grace_seconds, 30, "the default grace");
    recv_until(&mut alice, STEP, |m| {
        matches!(m, ServerMessage::ParticipantJoined { participant } if participant.id == bob_id)
    })
    .await;

    // Bob's socket drops without `leave`.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = server.render_metrics();
    assert_eq!(
        metric_sum(&metrics, "huizhen_sfu_detached_participants"),
        1.0
    );
    assert_eq!(metric_sum(&metrics, "huizhen_sfu_participants"), 2.0);

    // A new socket takes him back: same id, the room as it is now.
    let mut bob2 = connect_ws(addr).await;
    let m = resume(&mut bob2, &grant.token).await;
    let ServerMessage::Resumed {
        participant_id,
        room: resumed_room,
        participants,
        tracks,
        resume: next,
        ..
    } = m
    else {
        panic!("expected resumed, got {m:?}");
    };
    assert_eq!(participant_id, bob_id);
    assert_eq!(resumed_room, room);
    assert_eq!(
        participants
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        vec![alice_id.as_str()]
    );
    assert!(tracks.is_empty(), "nobody published");
    assert_ne!(next.token, grant.token, "a fresh token for the next time");
    quiet_except(
        &mut alice,
        Duration::from_secs(1),
        "alice while bob resumed",
    )
    .await;
    // The resumed socket is joined: it negotiates like any other.
    send_msg(&mut bob2, &ClientMessage::Ping {}).await;
    recv_until(&mut bob2, STEP, |m| matches!(m, ServerMessage::Pong {})).await;
    let metrics = server.render_metrics();
    assert_eq!(
        metric_sum(&metrics, "huizhen_sfu_detached_participants"),
        0.0
    );
    assert_eq!(metric_sum(&metrics, "huizhen_sfu_resumes_total"), 1.0);

    // The old token is spent.
    let mut thief = connect_ws(addr).await;
    let m = resume(&mut thief, &grant.token).await;
    assert_eq!(error_code(&m), Some(ErrorCode::NotFound), "{m:?}");

    // A socket still open (half-open after a change of network) is told to go.
    let mut bob3 = connect_ws(addr).await;
    let m = resume(&mut bob3, &next.token).await;
    let ServerMessage::Resumed {
        participant_id,
        resume: third,
        ..
    } = m
    else {
        panic!("expected resumed, got {m:?}");
    };
    assert_eq!(participant_id, bob_id);
    let (bye, _) = recv_until(&mut bob2, STEP, |m| matches!(m, ServerMessage::Bye { .. })).await;
    assert_eq!(
        bye,
        ServerMessage::Bye {
            reason: "resumed_elsewhere".into()
        }
    );
    match next_event(&mut bob2, STEP).await {
        Some(WsEvent::Closed(_)) => {}
        other => panic!("the replaced socket closes, got {other:?}"),
    }
    quiet_except(
        &mut alice,
        Duration::from_millis(500),
        "alice after the takeover",
    )
    .await;

    // A real `leave` ends it for good, and its token with it.
    send_msg(&mut bob3, &ClientMessage::Leave {}).await;
    recv_until(&mut bob3, STEP, |m| matches!(m, ServerMessage::Bye { .. })).await;
    recv_until(&mut alice, STEP, |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
    })
    .await;
    let mut late = connect_ws(addr).await;
    let m = resume(&mut late, &third.token).await;
    assert_eq!(error_code(&m), Some(ErrorCode::NotFound), "{m:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn after_the_grace_the_participant_leaves_and_its_token_is_refused() {
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.signaling.resume_grace_seconds = 1;
    let server = huizhen::server::start(config).await.expect("server starts");
    let addr = server.http_addr();
    let room = common::unique_room("resume-grace");
    let mut alice = connect_ws(addr).await;
    join_with_grant(&mut alice, &room, "alice").await;
    let mut bob = connect_ws(addr).await;
    let (bob_id, grant) = join_with_grant(&mut bob, &room, "bob").await;
    assert_eq!(grant.grace_seconds, 1);
    drop(bob);
    // The liveness sweep removes him once the grace is over.
    recv_until(&mut alice, Duration::from_secs(10), |m| {
        matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
    })
    .await;
    let mut bob2 = connect_ws(addr).await;
    let m = resume(&mut bob2, &grant.token).await;
    assert_eq!(error_code(&m), Some(ErrorCode::NotFound), "{m:?}");
    let metrics = server.render_metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "huizhen_sfu_leaves_total{reason=\"signaling_closed\"}"
        ),
        1.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn resume_off_means_a_dropped_socket_leaves_at_once_and_joined_has_no_token() {
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.signaling.resume_grace_seconds = 0;
    let server = huizhen::server::start(config).await.expect("server starts");
    let addr = server.http_addr();
    let room = common::unique_room("resume-off");
    let mut alice = connect_ws(addr).await;
    send_msg(&mut alice, &join_msg(&room, "alice")).await;
    let (m, _) = recv_until(&mut alice, STEP, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;
    assert!(
        matches!(m, ServerMessage::Joined { resume: None, .. }),
        "{m:?}"
    );
    let mut bob = connect_ws(addr).await;
    send_msg(&mut bob, &join_msg(&room, "bob")).await;
    recv_until(&mut bob, STEP, |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;
    drop(bob);
    recv_until(&mut alice, STEP, |m| {
        matches!(m, ServerMessage::ParticipantLeft { .. })
    })
    .await;
    server.shutdown().await;
}
