//! Scenario 2 (and 3): durable clinic events per second with many doctors and patients at
//! once, and the server's memory growth per ended consultation.
//!
//! Every doctor has a clinic and works through its patients: a patient connects, checks in
//! (the clinic keeps `queue_depth` patients waiting), the doctor invites the first in line,
//! the patient accepts, the doctor ends the consultation. All doctors run at once. Events are
//! counted as audit rows (each is written durably before it is acted on); action latencies are
//! from sending the frame to the message the next step needs:
//!
//! | action | ends at |
//! | --- | --- |
//! | `check_in` | the patient's `waiting` |
//! | `invite` | the patient's `ringing` |
//! | `accept_invitation` | the patient's `consultation_ready` |
//! | `end_consultation` | the patient's `consultation_ended` |
//!
//! Appointments and tokens are created before the measured window, through the REST API.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::json;

use crate::client::{Api, Ws, WsError};
use crate::server::{Server, ServerDir, ServerSpec};
use crate::stats::{mib, Latency, Report};

/// Settings of the scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Doctors (clinics) working at once.
    pub doctors: usize,
    /// Consultations to run (appointments booked).
    pub consultations: usize,
    /// Patients each clinic keeps checked in ahead of the one being seen.
    pub queue_depth: usize,
    /// Longest measured window; doctors stop starting new consultations after it.
    pub max_secs: u64,
    /// Concurrent REST calls while booking.
    pub setup_concurrency: usize,
}

const SCENARIO: &str = "2 clinic events";
const MEMORY: &str = "3 memory";
/// Longest wait for any one reply.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Tally {
    check_in: Latency,
    invite: Latency,
    accept: Latency,
    end: Latency,
    auth: Latency,
    ended: u64,
    failures: Vec<String>,
}

struct Patient {
    id: String,
    appointment: String,
    token: String,
}

pub async fn run(
    spec: &ServerSpec,
    dir: &ServerDir,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let server = Server::start(spec, dir)?;
    let api = Api::new(&server.http, &server.api_key)?;
    let rss_start = server.sample()?.rss;
    let doctors = settings.doctors.max(1);
    let slot = crate::now_ms() + 10 * 60_000;

    eprintln!(
        "[{SCENARIO}] booking {} appointments in {doctors} clinics",
        settings.consultations
    );
    let setup = Instant::now();
    let mut doctor_tokens = Vec::new();
    for d in 0..doctors {
        let (clinic, doctor) = (clinic_id(d), format!("ev-doctor-{d:03}"));
        api.create_clinic(&clinic, &doctor).await?;
        doctor_tokens.push(api.doctor_token(&doctor, &[&clinic]).await?);
    }
    let booked: Vec<anyhow::Result<(usize, Patient)>> =
        futures_util::stream::iter(0..settings.consultations)
            .map(|i| {
                let api = api.clone();
                async move {
                    let d = i % doctors;
                    let patient = format!("ev-patient-{i:06}");
                    let appointment = format!("ev-appt-{i:06}");
                    api.create_appointment(&appointment, &clinic_id(d), &patient, slot)
                        .await?;
                    let token = api.patient_token(&patient, &appointment).await?;
                    Ok((
                        d,
                        Patient {
                            id: patient,
                            appointment,
                            token,
                        },
                    ))
                }
            })
            .buffer_unordered(settings.setup_concurrency.max(1))
            .collect()
            .await;
    let mut queues: Vec<Vec<Patient>> = (0..doctors).map(|_| Vec::new()).collect();
    for b in booked {
        let (d, p) = b?;
        queues[d].push(p);
    }
    for q in &mut queues {
        q.sort_by(|a, b| a.id.cmp(&b.id));
    }
    let mut consoles = Vec::new();
    for (d, token) in doctor_tokens.iter().enumerate() {
        let mut ws = Ws::open_authenticated(&server.http, token, STEP_TIMEOUT).await?;
        ws.wait_for("queue", Instant::now() + STEP_TIMEOUT, |m| {
            m["clinic"] == clinic_id(d).as_str()
        })
        .await
        .context("a doctor's first queue")?;
        consoles.push(ws);
    }
    report.add(
        SCENARIO,
        "setup (booking, tokens, doctors online)",
        format!("{:.1} s", setup.elapsed().as_secs_f64()),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let head = api.audit_since(0, 100).await?.last_seq;
    let before = server.sample()?;
    eprintln!("[{SCENARIO}] running (at most {} s)", settings.max_secs);
    let tally = Rc::new(RefCell::new(Tally::default()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(settings.max_secs);
    let workers: Vec<_> = consoles
        .into_iter()
        .zip(queues)
        .enumerate()
        .map(|(d, (console, patients))| {
            let tally = tally.clone();
            let addr = server.http.clone();
            let depth = settings.queue_depth.max(1);
            async move { doctor(&addr, d, console, patients, depth, deadline, &tally).await }
        })
        .collect();
    let leftovers: Vec<Vec<Ws>> = futures_util::future::join_all(workers).await;
    let window = started.elapsed();
    let after = server.sample()?;
    let audit = api.audit_since(head, 1000).await?;
    for sockets in leftovers {
        for ws in sockets {
            ws.close().await;
        }
    }
    let tally = Rc::try_unwrap(tally)
        .ok()
        .expect("workers done")
        .into_inner();

    let secs = window.as_secs_f64();
    let cpu = (after.cpu - before.cpu).as_secs_f64();
    report.add(
        SCENARIO,
        "durable events/s (audit rows / window)",
        format!(
            "{:.0} events/s ({} rows in {:.1} s; target >= 2,000)",
            audit.rows as f64 / secs,
            audit.rows,
            secs
        ),
    );
    report.add(
        SCENARIO,
        "consultations completed",
        format!(
            "{} of {} ({:.1}/s, {} doctors, queue depth {})",
            tally.ended,
            settings.consultations,
            tally.ended as f64 / secs,
            doctors,
            settings.queue_depth
        ),
    );
    report.add(
        SCENARIO,
        "server CPU during the window",
        format!(
            "{:.0} % of a core ({:.2} ms per event)",
            cpu / secs * 100.0,
            cpu * 1000.0 / audit.rows.max(1) as f64
        ),
    );
    report.add(SCENARIO, "audit rows by kind", audit.kinds_text());
    report.add(SCENARIO, "check_in -> waiting", tally.check_in.summary());
    report.add(SCENARIO, "invite -> ringing", tally.invite.summary());
    report.add(
        SCENARIO,
        "accept_invitation -> consultation_ready",
        tally.accept.summary(),
    );
    report.add(
        SCENARIO,
        "end_consultation -> consultation_ended",
        tally.end.summary(),
    );
    report.add(SCENARIO, "patient connect + auth", tally.auth.summary());
    if !tally.failures.is_empty() {
        report.add(
            SCENARIO,
            "failures",
            format!("{}; first: {}", tally.failures.len(), tally.failures[0]),
        );
    }

    // Memory: settle, then compare with before the consultations (and before booking).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = server.sample()?.rss;
    let per = |bytes: f64| bytes * 10_000.0 / tally.ended.max(1) as f64;
    let growth = settled as f64 - before.rss as f64;
    let with_booking = settled as f64 - rss_start as f64;
    report.add(
        MEMORY,
        "server RSS: start / booked / after consultations",
        format!(
            "{} / {} / {}",
            mib(rss_start as f64),
            mib(before.rss as f64),
            mib(settled as f64)
        ),
    );
    report.add(
        MEMORY,
        "RSS growth per 10,000 ended consultations",
        format!(
            "{} (target <= 5 MiB; from {} consultations{})",
            mib(per(growth)),
            tally.ended,
            if tally.ended < 10_000 {
                ", extrapolated"
            } else {
                ""
            }
        ),
    );
    report.add(
        MEMORY,
        "  same, counting their booking (appointments, tokens)",
        mib(with_booking * 10_000.0 / tally.ended.max(1) as f64),
    );
    server.stop(Duration::from_secs(300))?;
    Ok(())
}

fn clinic_id(d: usize) -> String {
    format!("ev-clinic-{d:03}")
}

/// One doctor working through `patients`; returns the sockets still open.
async fn doctor(
    addr: &str,
    d: usize,
    mut console: Ws,
    patients: Vec<Patient>,
    depth: usize,
    deadline: Instant,
    tally: &RefCell<Tally>,
) -> Vec<Ws> {
    let clinic = clinic_id(d);
    let mut next = patients.into_iter();
    let mut waiting: VecDeque<(Patient, Ws)> = VecDeque::new();
    loop {
        while waiting.len() < depth && Instant::now() < deadline {
            let Some(patient) = next.next() else { break };
            match check_in(addr, &patient, tally).await {
                Ok(ws) => waiting.push_back((patient, ws)),
                Err(e) => tally
                    .borrow_mut()
                    .failures
                    .push(format!("check_in {}: {e}", patient.id)),
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        let Some((patient, ws)) = waiting.pop_front() else {
            break;
        };
        match consult(&clinic, &patient, &mut console, ws, tally).await {
            Ok(ws) => {
                tally.borrow_mut().ended += 1;
                ws.close().await;
            }
            Err(e) => tally
                .borrow_mut()
                .failures
                .push(format!("{}: {e}", patient.id)),
        }
    }
    let mut open: Vec<Ws> = waiting.into_iter().map(|(_, ws)| ws).collect();
    open.push(console);
    open
}

async fn check_in(addr: &str, patient: &Patient, tally: &RefCell<Tally>) -> Result<Ws, WsError> {
    let t0 = Instant::now();
    let mut ws = Ws::open_authenticated(addr, &patient.token, STEP_TIMEOUT).await?;
    tally.borrow_mut().auth.record(t0.elapsed());
    let sent = Instant::now();
    ws.send(&json!({ "type": "check_in", "appointment": patient.appointment }))
        .await?;
    let (_, at) = ws
        .wait_for("waiting", sent + STEP_TIMEOUT, |_| true)
        .await?;
    tally.borrow_mut().check_in.record(at - sent);
    Ok(ws)
}

/// Invite, accept, end; returns the patient's socket.
async fn consult(
    clinic: &str,
    patient: &Patient,
    console: &mut Ws,
    mut ws: Ws,
    tally: &RefCell<Tally>,
) -> Result<Ws, WsError> {
    let sent = Instant::now();
    console
        .send(&json!({ "type": "invite", "clinic": clinic, "patient": patient.id }))
        .await?;
    let (ringing, at) = tokio::select! {
        r = ws.wait_for("ringing", sent + STEP_TIMEOUT, |_| true) => r?,
        e = refusal(console, "invite") => return Err(e),
    };
    tally.borrow_mut().invite.record(at - sent);
    let invitation = ringing["invitation"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let consultation = ringing["consultation"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let sent = Instant::now();
    ws.send(&json!({ "type": "accept_invitation", "invitation": invitation }))
        .await?;
    let (_, at) = ws
        .wait_for("consultation_ready", sent + STEP_TIMEOUT, |m| {
            m["consultation"] == consultation.as_str()
        })
        .await?;
    tally.borrow_mut().accept.record(at - sent);
    // The doctor's console is told too; reading it keeps its backlog short.
    console
        .wait_for("consultation_ready", Instant::now() + STEP_TIMEOUT, |m| {
            m["consultation"] == consultation.as_str()
        })
        .await?;

    let sent = Instant::now();
    console
        .send(&json!({ "type": "end_consultation", "consultation": consultation }))
        .await?;
    let (_, at) = tokio::select! {
        r = ws.wait_for("consultation_ended", sent + STEP_TIMEOUT, |m| m["consultation"] == consultation.as_str()) => r?,
        e = refusal(console, "end_consultation") => return Err(e),
    };
    tally.borrow_mut().end.record(at - sent);
    Ok(ws)
}

/// Read the doctor's console (dropping what it shows) until the server refuses something or
/// closes it; raced against the patient's side of a doctor's action.
async fn refusal(console: &mut Ws, what: &str) -> WsError {
    let far = Instant::now() + STEP_TIMEOUT * 2;
    match console.wait_for("(refusal)", far, |_| false).await {
        Err(WsError::Refused { code, message, .. }) => WsError::Refused {
            what: what.to_owned(),
            code,
            message,
        },
        Err(e) => e,
        Ok(_) => WsError::Closed(what.to_owned()),
    }
}
