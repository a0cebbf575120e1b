//! WHIP and WHEP over HTTP against a running server: the answer's headers (Location, ETag, the
//! embedded TURN as `Link: rel="ice-server"`), the documented error codes, trickle and ICE
//! restart by `PATCH` with `If-Match`, `DELETE`. Offers come from str0m peers (the media path
//! with real clients is the browser test `tests/browser/whip.test.mjs`: GStreamer's
//! simple-whip-client publishing, Chromium playing).

use std::time::Instant;

use reqwest::header::{HeaderMap, CONTENT_TYPE, ETAG, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

use crate::common::rs_client::RsPeer;
use crate::common::{self, metric_sum};

/// An offer of a str0m peer: sending (`send`) or receiving audio and video.
fn offer(send: bool) -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    let dir = if send {
        Direction::SendOnly
    } else {
        Direction::RecvOnly
    };
    change.add_media(MediaKind::Audio, dir, None, None, None);
    change.add_media(MediaKind::Video, dir, None, None, None);
    let (offer, _) = change.apply().unwrap();
    offer.to_sdp_string()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn request(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Reply {
    let mut req = reqwest::Client::new().request(method, url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = req.send().await.expect("request");
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap_or_default(),
    }
}

async fn post_sdp(url: &str, sdp: &str) -> Reply {
    request(
        reqwest::Method::POST,
        url,
        &[("content-type", "application/sdp")],
        sdp.to_owned(),
    )
    .await
}

fn header(reply: &Reply, name: impl reqwest::header::AsHeaderName) -> &str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_sessions_answer_with_location_etag_and_turn_and_follow_patch_and_delete() {
    common::init_tracing();
    let server = common::start_server().await;
    let base = format!("http://{}", server.http_addr());
    let room = common::unique_room("lecture");

    // Nobody publishes yet: a player is told to come back.
    let early = post_sdp(&format!("{base}/whep/room/{room}"), &offer(false)).await;
    assert_eq!(early.status, StatusCode::CONFLICT, "{}", early.body);
    assert_eq!(header(&early, RETRY_AFTER), "5");

    // A publisher over the WebSocket (webrtc-rs): its tracks are in the room once connected.
    let publisher = RsPeer::connect(server.http_addr(), &room, "lecturer", 0)
        .await
        .expect("the publisher connects");
    let whip = post_sdp(&format!("{base}/whip/room/{room}"), &offer(true)).await;
    assert_eq!(whip.status, StatusCode::CREATED, "{}", whip.body);
    assert_eq!(header(&whip, CONTENT_TYPE), "application/sdp");
    let whip_url = format!("{base}{}", header(&whip, LOCATION));
    assert!(whip_url.contains("/whip/session/"), "{whip_url}");
    assert!(
        whip.body.contains("a=recvonly"),
        "the server receives: {}",
        whip.body
    );
    let links: Vec<&str> = whip
        .headers
        .get_all("link")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(!links.is_empty(), "the embedded TURN is offered");
    for link in &links {
        assert!(link.starts_with("<turn:"), "{link}");
        assert!(link.contains("rel=\"ice-server\""), "{link}");
        assert!(
            link.contains("username=\"") && link.contains("credential=\""),
            "{link}"
        );
    }

    // The room has a publisher: a player gets its audio and video on its own m-lines.
    let whep = post_sdp(&format!("{base}/whep/room/{room}"), &offer(false)).await;
    assert_eq!(whep.status, StatusCode::CREATED, "{}", whep.body);
    let whep_url = format!("{base}{}", header(&whep, LOCATION));
    assert!(whep_url.contains("/whep/session/"), "{whep_url}");
    assert_eq!(whep.body.matches("a=sendonly").count(), 2, "{}", whep.body);
    let m = metrics(&base).await;
    assert_eq!(
        metric_sum(&m, "huizhen_signaling_whip_sessions{kind=\"whip\"}"),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "huizhen_signaling_whip_sessions{kind=\"whep\"}"),
        1.0
    );

    // PATCH: If-Match required (428), must match (412), a fragment only (415, 400).
    let etag = header(&whep, ETAG).to_owned();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    let frag = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let patch = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let url = whep_url.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request(reqwest::Method::PATCH, &url, &h, body).await
        }
    };
    let ct = ("content-type", "application/trickle-ice-sdpfrag".to_owned());
    let r = patch(vec![ct.clone()], frag).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_REQUIRED, "{}", r.body);
    let r = patch(vec![ct.clone(), ("if-match", "\"nope\"".into())], frag).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.body);
    let r = patch(
        vec![
            ("content-type", "application/sdp".into()),
            ("if-match", etag.clone()),
        ],
        frag,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.body);
    let r = patch(vec![ct.clone(), ("if-match", etag.clone())], "hello\r\n").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = patch(
        vec![ct.clone(), ("if-match", etag.clone())],
        "a=candidate:not a candidate\r\n",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        !r.body.contains("not a candidate"),
        "the reason does not quote the input: {}",
        r.body
    );
    // Trickle: a candidate, nothing to answer.
    let r = patch(vec![ct.clone(), ("if-match", etag.clone())], frag).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // ICE restart: new credentials answered with the server's new ones and a new ETag.
    let r = patch(
        vec![ct.clone(), ("if-match", "*".into())],
        "a=ice-ufrag:Rst1\r\na=ice-pwd:restartpassword0123456789\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 10 typ host\r\n",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(header(&r, CONTENT_TYPE), "application/trickle-ice-sdpfrag");
    let old_ufrag = whep
        .body
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .to_owned();
    let new_ufrag = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("new ufrag")
        .to_owned();
    assert_ne!(new_ufrag, old_ufrag);
    assert!(r.body.contains("a=ice-pwd:"), "{}", r.body);
    assert!(r.body.contains("a=candidate:"), "{}", r.body);
    let new_etag = header(&r, ETAG).to_owned();
    assert_ne!(new_etag, etag);
    // The old ETag no longer matches.
    let r = patch(vec![ct.clone(), ("if-match", etag.clone())], frag).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.body);
    let r = patch(vec![ct.clone(), ("if-match", new_etag.clone())], frag).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    // A WHIP session is not reachable as a WHEP one; methods the endpoints lack get 405.
    let r = request(
        reqwest::Method::DELETE,
        &whip_url.replace("/whip/", "/whep/"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = request(
        reqwest::Method::GET,
        &format!("{base}/whip/room/{room}"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // DELETE ends a session once.
    for url in [&whep_url, &whip_url] {
        let r = request(reqwest::Method::DELETE, url, &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let r = request(reqwest::Method::DELETE, url, &[], "").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let r = patch(vec![ct, ("if-match", "*".into())], frag).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let m = metrics(&base).await;
    assert_eq!(
        metric_sum(&m, "huizhen_signaling_whip_sessions{kind=\"whip\"}"),
        0.0
    );
    assert_eq!(
        metric_sum(&m, "huizhen_signaling_whip_sessions{kind=\"whep\"}"),
        0.0
    );
    assert!(
        metric_sum(
            &m,
            "huizhen_signaling_whip_requests_total{kind=\"whep\",method=\"patch\",status=\"412\"}"
        ) >= 2.0
    );
    drop(publisher);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_that_are_not_sdp_or_go_the_wrong_way_are_refused_with_their_codes() {
    common::init_tracing();
    let server = common::start_server().await;
    let base = format!("http://{}", server.http_addr());
    let room = common::unique_room("bad");
    let whip = format!("{base}/whip/room/{room}");
    let whep = format!("{base}/whep/room/{room}");

    let r = request(
        reqwest::Method::POST,
        &whip,
        &[("content-type", "text/plain")],
        offer(true),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.body);
    let r = post_sdp(&whip, "hello, this is not SDP").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body.len() < 200,
        "the reason does not quote the input: {}",
        r.body
    );
    let r = post_sdp(&whip, &offer(false)).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a WHIP offer that receives: {}",
        r.body
    );
    // (A publisher first, so a player's offer is judged on its directions, not refused 409.)
    let publisher = post_sdp(&whip, &offer(true)).await;
    assert_eq!(publisher.status, StatusCode::CREATED, "{}", publisher.body);
    let r = post_sdp(&whep, &offer(true)).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a WHEP offer that sends: {}",
        r.body
    );
    let r = post_sdp(&whip, &"v=0\r\n".repeat(20_000)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Consultation rooms only through the clinic, with a token.
    let r = post_sdp(&format!("{base}/whip/room/consult-c1"), &offer(true)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = post_sdp(&format!("{base}/whip/consultation/c1"), &offer(true)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.headers.get("www-authenticate").is_some());
    let r = request(
        reqwest::Method::POST,
        &format!("{base}/whep/consultation/c1"),
        &[
            ("content-type", "application/sdp"),
            ("authorization", "Bearer forged.token.x"),
        ],
        offer(false),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = post_sdp(&format!("{base}/whip/room/a%20b"), &offer(true)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // Nothing was left behind by the refusals: one session, the publisher's.
    let m = metrics(&base).await;
    assert_eq!(
        metric_sum(&m, "huizhen_signaling_whip_sessions{kind=\"whip\"}"),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "huizhen_signaling_whip_sessions{kind=\"whep\"}"),
        0.0
    );
    assert_eq!(metric_sum(&m, "huizhen_sfu_participants"), 1.0);
    server.shutdown().await;
}
