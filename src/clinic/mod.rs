//! The clinic service: the async edge around the sans-IO [`ClinicEngine`].
//!
//! One task owns the engine and works in batches (group commit):
//!
//! ```text
//!  requests (sockets, REST) ──> apply each to the engine ──> events ──> audit rows + effects
//!           (all that queued                                 (notify.rs: messages, SFU,
//!            up, at most MAX_BATCH)                            recorder, webhooks, replies)
//!                                      │
//!      store.commit(changed rows, audit rows, revocations)  ── one transaction, one fsync
//!                                      │
//!      ok: carry out the effects (replies, notifications)   failed: answer every request
//!                                                           "not saved", reload from the store
//!      engine.evict_history(now): ended consultations and past appointments leave memory
//! ```
//!
//! So nobody (WebSocket reply, REST 2xx, notification, webhook) hears of a change before it is
//! on disk, a change costs the rows it touched, and while one commit waits for its fsync the
//! next batch gathers. The service also holds the live sessions: one socket per identity (a
//! second takes over), each ending with its token (warned first, renewable on the socket) or
//! its revocation. Refusals are audited through [`refusals::RefusalLog`], bounded per source.

pub mod dev;
mod notify;
pub mod refusals;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use huizhen_signaling::clinic::{
    Actor, Appointment, AppointmentId, Booking, Clinic, ClinicEngine, ClinicError, ClinicId,
    ConsultationId, InvitationId, JoinOutcome, Millis, QueueRow, Role, Slot, UserId,
};
use huizhen_signaling::protocol::{ErrorCode, ServerMessage};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::auth::{Claims, TokenMinter};
use crate::edge::{MediaCommand, MediaHandle};
use crate::recorder::task::RecorderCommand;
use crate::sfu::{LeaveReason, ParticipantId};
use crate::store::{ClinicStore, PendingAudit, Revocation};
use crate::webhook::WebhookHandle;
use refusals::{RefusalLog, Refused};

/// How long expert links stay valid at most (they also die when the consultation ends).
const EXPERT_LINK_TTL_SECS: u64 = 4 * 3600;
/// Capacity of the request channel.
const REQUEST_QUEUE: usize = 1024;
/// Most requests applied and committed together.
const MAX_BATCH: usize = 256;
/// A session is told this long before its token expires.
const EXPIRY_WARNING_SECS: u64 = 60;
/// Refusals are aggregated per this interval ([`RefusalLog`]).
const REFUSAL_INTERVAL_MS: u64 = 60_000;
/// Distinct refusal keys per interval before the rest share one overflow row.
const REFUSAL_KEYS: usize = 64;
/// Session end reasons sent in `bye`.
pub const BYE_REPLACED: &str = "replaced";
/// The token expired.
pub const BYE_TOKEN_EXPIRED: &str = "token_expired";
/// The token was revoked.
pub const BYE_REVOKED: &str = "revoked";

/// Run short blocking work (a SQLite write) from async code: on the multi-threaded runtime the
/// worker hands its other tasks away first; elsewhere (tests on a current-thread runtime) the
/// work simply runs, as it is short.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Current wall-clock time.
pub fn now_ms() -> Millis {
    Millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// A clinic action of an authenticated user (the clinic messages of the protocol).
#[derive(Debug, Clone)]
pub enum ClinicCommand {
    /// Patient enters (or re-enters) the waiting room.
    CheckIn(AppointmentId),
    /// Patient leaves the waiting room.
    LeaveQueue,
    /// Doctor away / back.
    SetAway(ClinicId, bool),
    /// Doctor calls the next (or a chosen) patient.
    Invite(ClinicId, Option<UserId>),
    /// Doctor withdraws an invitation.
    CancelInvitation(InvitationId),
    /// Doctor moves a patient up.
    MoveUp(ClinicId, UserId),
    /// Patient answers.
    Accept(InvitationId),
    /// Patient declines.
    Decline(InvitationId),
    /// Take a seat in a consultation's call.
    Join(ConsultationId),
    /// Leave a consultation's call for good.
    LeaveConsultation(ConsultationId),
    /// Doctor admits a companion.
    Admit(ConsultationId, UserId),
    /// Doctor creates an expert link.
    InviteExpert(ConsultationId, Option<String>),
    /// Doctor ends the consultation.
    End(ConsultationId),
    /// Doctor starts recording (consent is asked of everyone).
    StartRecording(ConsultationId),
    /// Doctor stops recording.
    StopRecording(ConsultationId),
    /// A participant's consent decision.
    Consent(ConsultationId, bool),
}

impl ClinicCommand {
    /// Every command name, for pre-registering metric label values.
    const NAMES: &'static [&'static str] = &[
        "check_in",
        "leave_queue",
        "set_away",
        "invite",
        "cancel_invitation",
        "move_up",
        "accept_invitation",
        "decline_invitation",
        "join_consultation",
        "leave_consultation",
        "admit",
        "invite_expert",
        "end_consultation",
        "start_recording",
        "stop_recording",
        "consent",
    ];

    /// What the command targets, for the audit row of a refusal.
    pub fn subject(&self) -> Option<String> {
        Some(match self {
            ClinicCommand::CheckIn(a) => a.0.clone(),
            ClinicCommand::LeaveQueue => return None,
            ClinicCommand::SetAway(c, _)
            | ClinicCommand::Invite(c, _)
            | ClinicCommand::MoveUp(c, _) => c.0.clone(),
            ClinicCommand::CancelInvitation(i)
            | ClinicCommand::Accept(i)
            | ClinicCommand::Decline(i) => i.0.clone(),
            ClinicCommand::Join(c)
            | ClinicCommand::LeaveConsultation(c)
            | ClinicCommand::Admit(c, _)
            | ClinicCommand::InviteExpert(c, _)
            | ClinicCommand::End(c)
            | ClinicCommand::StartRecording(c)
            | ClinicCommand::StopRecording(c)
            | ClinicCommand::Consent(c, _) => c.0.clone(),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            ClinicCommand::CheckIn(_) => "check_in",
            ClinicCommand::LeaveQueue => "leave_queue",
            ClinicCommand::SetAway(..) => "set_away",
            ClinicCommand::Invite(..) => "invite",
            ClinicCommand::CancelInvitation(_) => "cancel_invitation",
            ClinicCommand::MoveUp(..) => "move_up",
            ClinicCommand::Accept(_) => "accept_invitation",
            ClinicCommand::Decline(_) => "decline_invitation",
            ClinicCommand::Join(_) => "join_consultation",
            ClinicCommand::LeaveConsultation(_) => "leave_consultation",
            ClinicCommand::Admit(..) => "admit",
            ClinicCommand::InviteExpert(..) => "invite_expert",
            ClinicCommand::End(_) => "end_consultation",
            ClinicCommand::StartRecording(_) => "start_recording",
            ClinicCommand::StopRecording(_) => "stop_recording",
            ClinicCommand::Consent(..) => "consent",
        }
    }
}

/// A successful command's result for the requesting session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandReply {
    /// Done; notifications carry the rest.
    Done,
    /// Join this SFU room.
    EnterRoom {
        /// The room.
        room: String,
        /// May send media.
        may_publish: bool,
    },
    /// A companion waits for approval.
    WaitingForApproval,
}

/// A refused command: wire code and message.
pub type Refusal = (ErrorCode, String);

/// A reply channel of a request that changes state: answered after the commit.
pub type Reply<T> = oneshot::Sender<Result<T, Refusal>>;

/// A clinic's slots with how many appointments each holds.
pub type SlotBookings = Vec<(Slot, usize)>;

/// Administrative requests from the REST API (already authorised by API key).
#[derive(Debug)]
pub enum AdminRequest {
    /// Create or replace a clinic.
    UpsertClinic(Clinic, Reply<()>),
    /// Book an appointment.
    AddAppointment(Appointment, Reply<Booking>),
    /// Move an appointment to another slot.
    Reschedule(AppointmentId, Millis, Reply<Appointment>),
    /// Cancel an appointment.
    Cancel(AppointmentId, Reply<Appointment>),
    /// All clinics.
    ListClinics(Reply<Vec<Clinic>>),
    /// Add time slots to a clinic: start, count, capacity; answers all its slots and bookings.
    AddSlots(ClinicId, Millis, u32, u32, Reply<SlotBookings>),
    /// A clinic's slots with their bookings.
    ListSlots(ClinicId, Reply<SlotBookings>),
    /// A clinic's waiting room, in order.
    Queue(ClinicId, Reply<Vec<QueueRow>>),
    /// A token was issued (audited before it is handed out).
    TokenIssued {
        /// Its id.
        jti: String,
        /// Its subject.
        user: String,
        /// Its role.
        role: Role,
        /// Its expiry (seconds).
        expires_at: u64,
        /// Done.
        reply: Reply<()>,
    },
    /// Revoke a token or all of a user's; answers how many live sessions were ended.
    Revoke(Revocation, Reply<usize>),
}

/// A request to the clinic task.
#[derive(Debug)]
pub enum ClinicRequest {
    /// An authenticated socket opened.
    Connect {
        /// Session id (unique per socket).
        session: u64,
        /// Who.
        actor: Actor,
        /// Their display name.
        display_name: String,
        /// The token's `iat` and `exp` (seconds).
        token_times: (u64, u64),
        /// Keyed hash of the socket's source address (for the audit row of a refusal).
        source: Option<String>,
        /// The socket's outgoing queue.
        events: mpsc::Sender<ServerMessage>,
        /// Consultations where the user holds a seat, or why the session is refused.
        reply: Reply<Vec<String>>,
    },
    /// A fresh token for an open session.
    Renew {
        /// Session id.
        session: u64,
        /// Who the new token names.
        actor: Actor,
        /// The new token's `iat` and `exp` (seconds).
        token_times: (u64, u64),
        /// Done, or why not.
        reply: Reply<()>,
    },
    /// An authenticated socket closed.
    Disconnect {
        /// Session id.
        session: u64,
    },
    /// A clinic command.
    Command {
        /// The session sending it.
        session: u64,
        /// Who.
        actor: Actor,
        /// What.
        command: ClinicCommand,
        /// Outcome.
        reply: Reply<CommandReply>,
    },
    /// A session entered a consultation's SFU room as `participant`.
    InRoom {
        /// Session id.
        session: u64,
        /// The consultation.
        consultation: ConsultationId,
        /// Its SFU participant.
        participant: ParticipantId,
    },
    /// Record a refusal that happened before the clinic (a bad token, a wrong API key).
    Refused(Refused),
    /// REST API, with the API key's id as the actor.
    Admin {
        /// The key's id (never the key).
        actor: String,
        /// What.
        request: AdminRequest,
    },
}

/// Handle to the clinic task.
#[derive(Clone)]
pub struct ClinicHandle {
    requests: mpsc::Sender<ClinicRequest>,
}

/// The clinic task is gone.
#[derive(Debug, thiserror::Error)]
#[error("the clinic service is not running")]
pub struct ClinicGone;

fn unavailable() -> Refusal {
    (
        ErrorCode::Unavailable,
        "the clinic service is not running".to_owned(),
    )
}

impl ClinicHandle {
    /// Send a request.
    pub async fn send(&self, request: ClinicRequest) -> Result<(), ClinicGone> {
        self.requests.send(request).await.map_err(|_| ClinicGone)
    }

    /// Send a request built around a reply channel and wait for the (committed) answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> ClinicRequest) -> Result<T, Refusal> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply)).await.map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }

    /// Run a command of `session` and wait for its outcome.
    pub async fn command(
        &self,
        session: u64,
        actor: Actor,
        command: ClinicCommand,
    ) -> Result<CommandReply, Refusal> {
        self.ask(|reply| ClinicRequest::Command {
            session,
            actor,
            command,
            reply,
        })
        .await
    }

    /// An admin request by API key `actor`.
    pub async fn admin<T>(
        &self,
        actor: &str,
        make: impl FnOnce(Reply<T>) -> AdminRequest,
    ) -> Result<T, Refusal> {
        let actor = actor.to_owned();
        self.ask(|reply| ClinicRequest::Admin {
            actor,
            request: make(reply),
        })
        .await
    }
}

/// Clinic metrics (`huizhen_clinic_` registry); labels are command names, event kinds and
/// session end reasons, never ids.
#[derive(Clone)]
struct ClinicMetrics {
    commands: IntCounterVec,
    events: IntCounterVec,
    commits: IntCounter,
    commit_failures: IntCounter,
    commit_seconds: Histogram,
    batch_requests: Histogram,
    live_appointments: IntGauge,
    live_consultations: IntGauge,
    sessions_ended: IntCounterVec,
    refusals: IntCounterVec,
}

impl ClinicMetrics {
    fn new(registry: &Registry) -> ClinicMetrics {
        let commands = IntCounterVec::new(
            Opts::new("commands_total", "Clinic commands, by command and result"),
            &["command", "result"],
        )
        .expect("metric");
        let events = IntCounterVec::new(
            Opts::new("events_total", "Clinic events, by kind"),
            &["kind"],
        )
        .expect("metric");
        let commits = IntCounter::new(
            "commits_total",
            "Store transactions committed (each a batch of requests)",
        )
        .expect("metric");
        let commit_failures = IntCounter::new(
            "commit_failures_total",
            "Store commits that failed (the batch was answered unavailable)",
        )
        .expect("metric");
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "commit_duration_seconds",
                "Time of one store commit, including its fsync",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
            ]),
        )
        .expect("metric");
        let batch_requests = Histogram::with_opts(
            HistogramOpts::new("batch_requests", "Requests applied and committed together")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("metric");
        let live_appointments =
            IntGauge::new("live_appointments", "Appointments held in memory").expect("metric");
        let live_consultations =
            IntGauge::new("live_consultations", "Consultations held in memory").expect("metric");
        let sessions_ended = IntCounterVec::new(
            Opts::new(
                "sessions_ended_total",
                "Sessions the server ended, by reason",
            ),
            &["reason"],
        )
        .expect("metric");
        let refusals = IntCounterVec::new(
            Opts::new("refusals_total", "Refused requests, by audit kind"),
            &["kind"],
        )
        .expect("metric");
        for m in [&commands, &events, &sessions_ended, &refusals] {
            registry.register(Box::new(m.clone())).expect("metric");
        }
        registry
            .register(Box::new(commits.clone()))
            .expect("metric");
        registry
            .register(Box::new(commit_failures.clone()))
            .expect("metric");
        registry
            .register(Box::new(commit_seconds.clone()))
            .expect("metric");
        registry
            .register(Box::new(batch_requests.clone()))
            .expect("metric");
        registry
            .register(Box::new(live_appointments.clone()))
            .expect("metric");
        registry
            .register(Box::new(live_consultations.clone()))
            .expect("metric");
        for command in ClinicCommand::NAMES {
            for result in ["ok", "refused"] {
                commands.with_label_values(&[command, result]);
            }
        }
        for kind in crate::audit::EVENT_KINDS {
            events.with_label_values(&[kind]);
        }
        for reason in [BYE_REPLACED, BYE_TOKEN_EXPIRED, BYE_REVOKED] {
            sessions_ended.with_label_values(&[reason]);
        }
        for kind in ["refused", "token_refused", "api_unauthorized"] {
            refusals.with_label_values(&[kind]);
        }
        ClinicMetrics {
            commands,
            events,
            commits,
            commit_failures,
            commit_seconds,
            batch_requests,
            live_appointments,
            live_consultations,
            sessions_ended,
            refusals,
        }
    }
}

/// A live, authenticated session.
struct Socket {
    session: u64,
    actor: Actor,
    events: mpsc::Sender<ServerMessage>,
    /// The token's `iat` (for revocations of a user's tokens).
    issued_at: u64,
    /// The token's `exp` (seconds).
    expires_at: u64,
    /// `token_expiring` was sent for this `expires_at`.
    warned: bool,
}

/// Something to do once the batch that caused it is committed.
pub(crate) enum Effect {
    /// A message to one socket.
    Send(mpsc::Sender<ServerMessage>, u64, ServerMessage),
    /// A command to the SFU.
    Media(MediaCommand),
    /// A command to the recorder.
    Recorder(RecorderCommand),
    /// A webhook to the hospital's system.
    Webhook(&'static str, u64, serde_json::Value),
    /// Answer a request: with its result if the commit succeeded, else with the failure.
    Reply(Box<dyn FnOnce(Result<(), Refusal>) + Send>),
}

/// What the clinic task needs.
pub struct ClinicParts {
    /// The state machine (restored from the store).
    pub engine: ClinicEngine,
    /// Persistence and audit.
    pub store: Arc<dyn ClinicStore>,
    /// Mints expert links.
    pub minter: Arc<TokenMinter>,
    /// The SFU.
    pub media: MediaHandle,
    /// Webhooks to the hospital system.
    pub webhooks: WebhookHandle,
    /// The recorder.
    pub recorder: crate::recorder::task::RecorderHandle,
    /// Revocations in force (from the store).
    pub revocations: Vec<Revocation>,
    /// Metrics registry (`huizhen_clinic_`).
    pub registry: Registry,
}

pub(crate) struct Service {
    recorder: crate::recorder::task::RecorderHandle,
    /// SFU participants of sessions in a consultation's room.
    in_room: HashMap<u64, (ConsultationId, ParticipantId)>,
    engine: ClinicEngine,
    store: Arc<dyn ClinicStore>,
    minter: Arc<TokenMinter>,
    media: MediaHandle,
    webhooks: WebhookHandle,
    metrics: ClinicMetrics,
    sockets: Vec<Socket>,
    names: HashMap<UserId, String>,
    revocations: Vec<Revocation>,
    refusals: RefusalLog,
    // ----- the batch being built -----
    audit: Vec<PendingAudit>,
    new_revocations: Vec<Revocation>,
    effects: RefCell<Vec<Effect>>,
}

/// Start the clinic task.
pub fn spawn(
    parts: ClinicParts,
    shutdown: watch::Receiver<bool>,
) -> (ClinicHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let service = Service {
        recorder: parts.recorder,
        in_room: HashMap::new(),
        metrics: ClinicMetrics::new(&parts.registry),
        engine: parts.engine,
        store: parts.store,
        minter: parts.minter,
        media: parts.media,
        webhooks: parts.webhooks,
        sockets: Vec::new(),
        names: HashMap::new(),
        revocations: parts.revocations,
        refusals: RefusalLog::new(REFUSAL_INTERVAL_MS, REFUSAL_KEYS),
        audit: Vec::new(),
        new_revocations: Vec::new(),
        effects: RefCell::new(Vec::new()),
    };
    let task = tokio::spawn(run(service, rx, shutdown));
    (ClinicHandle { requests: tx }, task)
}

async fn run(
    mut service: Service,
    mut requests: mpsc::Receiver<ClinicRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Whatever the start-up changed (a restart's grace marks, the demo seed) is written first.
    service.flush(now_ms()).await;
    loop {
        let sleep = match service.poll_timeout() {
            Some(at) => Duration::from_millis(at.since(now_ms()).max(1)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            request = requests.recv() => match request {
                Some(r) => {
                    let mut n = 1;
                    service.handle(now_ms(), r);
                    while n < MAX_BATCH {
                        match requests.try_recv() {
                            Ok(r) => {
                                service.handle(now_ms(), r);
                                n += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    service.metrics.batch_requests.observe(n as f64);
                    // Under a steady stream of requests the timer branch may not win: timers
                    // that are due run with the batch.
                    let now = now_ms();
                    if service.poll_timeout().is_some_and(|t| t <= now) {
                        service.on_timeout(now);
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep(sleep) => service.on_timeout(now_ms()),
        }
        service.flush(now_ms()).await;
    }
    // Refusals counted in the current interval are written before the process goes.
    let now = now_ms();
    let pending = service.refusals.flush(Millis(u64::MAX));
    service.audit.extend(pending);
    service.flush(now).await;
    info!("clinic service stopped");
}

fn refusal(e: &ClinicError) -> Refusal {
    (ErrorCode::from_clinic(e.code()), e.to_string())
}

impl Service {
    pub(crate) fn effect(&self, effect: Effect) {
        self.effects.borrow_mut().push(effect);
    }

    /// Answer `reply` with `value` once the batch is committed.
    fn reply<T: Send + 'static>(&self, reply: Reply<T>, value: Result<T, Refusal>) {
        self.effect(Effect::Reply(Box::new(move |committed| {
            let _ = reply.send(committed.and(value));
        })));
    }

    fn poll_timeout(&self) -> Option<Millis> {
        let sessions = self.sockets.iter().map(|s| {
            let at = if s.warned {
                s.expires_at
            } else {
                s.expires_at.saturating_sub(EXPIRY_WARNING_SECS)
            };
            Millis(at.saturating_mul(1000))
        });
        [
            self.engine.poll_timeout(),
            self.refusals.poll_timeout(),
            sessions.min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timeout(&mut self, now: Millis) {
        // Revocations stop mattering once every token they cover has expired.
        let now_s = now.0 / 1000;
        self.revocations.retain(|r| match r {
            Revocation::Token { keep_until_s, .. } | Revocation::User { keep_until_s, .. } => {
                *keep_until_s > now_s
            }
        });
        self.engine.handle_timeout(now);
        self.after_change_by(now, None);
        let rows = self.refusals.flush(now);
        self.audit.extend(rows);
        self.expire_sessions(now);
    }

    /// Commit the batch, then carry out its effects; see the module docs.
    async fn flush(&mut self, now: Millis) {
        let changes = self.engine.take_changes();
        let audit = std::mem::take(&mut self.audit);
        let revocations = std::mem::take(&mut self.new_revocations);
        let effects = std::mem::take(self.effects.get_mut());
        let wrote_clinic_rows = !changes.is_empty();
        let result = if changes.is_empty() && audit.is_empty() && revocations.is_empty() {
            Ok(())
        } else {
            let store = self.store.clone();
            let timer = self.metrics.commit_seconds.start_timer();
            let result = blocking(|| store.commit(&changes, &audit, &revocations));
            timer.observe_duration();
            result.map(|_| self.metrics.commits.inc())
        };
        match result {
            Ok(()) => {
                for effect in effects {
                    self.carry_out(effect, Ok(())).await;
                }
            }
            Err(e) => {
                // Loud: the batch is lost, and everyone who asked is told so.
                tracing::error!(error = %e, rows = changes.rows(), audit = audit.len(), "CLINIC BATCH NOT SAVED");
                self.metrics.commit_failures.inc();
                let failure = (
                    ErrorCode::Unavailable,
                    "the change could not be saved; try again".to_owned(),
                );
                for effect in effects {
                    if let Effect::Reply(_) = effect {
                        self.carry_out(effect, Err(failure.clone())).await;
                    }
                }
                self.reload(now);
            }
        }
        if wrote_clinic_rows {
            self.engine.evict_history(now);
        }
        // Display names of users who are gone (no socket, no place, no seat) go too; checked
        // only when they clearly outnumber the live sessions, so the scan is amortised.
        if self.names.len() > 2 * self.sockets.len() + 256 {
            let (sockets, engine) = (&self.sockets, &self.engine);
            self.names.retain(|user, _| {
                sockets.iter().any(|s| &s.actor.user == user) || engine.is_live_user(user)
            });
        }
        let (appointments, consultations) = self.engine.live_counts();
        self.metrics.live_appointments.set(appointments as i64);
        self.metrics.live_consultations.set(consultations as i64);
    }

    /// Carry out one effect. Takes `&mut self` so that the future holds no shared reference
    /// to the service (which is `Send` but not `Sync`).
    async fn carry_out(&mut self, effect: Effect, committed: Result<(), Refusal>) {
        match effect {
            Effect::Send(events, session, message) => {
                if events.try_send(message).is_err() {
                    warn!(session, "clinic notification dropped: socket queue full");
                }
            }
            Effect::Media(command) => {
                let _ = self.media.send(command).await;
            }
            Effect::Recorder(command) => self.recorder.command(command).await,
            Effect::Webhook(kind, at_ms, payload) => self.webhooks.send(kind, at_ms, payload),
            Effect::Reply(reply) => reply(committed),
        }
    }

    /// After a failed commit the engine holds changes the store does not: rebuild it from the
    /// store, as a restart would (everyone's grace period starts now).
    fn reload(&mut self, now: Millis) {
        let settings = self.engine.settings().clone();
        let horizon = settings.history_horizon_ms;
        let store = self.store.clone();
        match blocking(|| store.load_live(now, horizon)) {
            Ok(snapshot) => {
                self.engine = ClinicEngine::from_snapshot(settings, snapshot, now);
                for s in &self.sockets {
                    if s.actor.role == Role::Doctor {
                        for clinic in &s.actor.clinics {
                            let _ = self
                                .engine
                                .set_doctor_presence(&s.actor, clinic, true, false);
                        }
                    }
                }
                while self.engine.poll_event().is_some() {}
            }
            Err(e) => {
                tracing::error!(error = %e, "clinic state could not be reloaded after a failed commit")
            }
        }
    }

    fn handle(&mut self, now: Millis, request: ClinicRequest) {
        match request {
            ClinicRequest::Connect {
                session,
                actor,
                display_name,
                token_times,
                source,
                events,
                reply,
            } => self.connect(
                now,
                session,
                actor,
                display_name,
                token_times,
                source,
                events,
                reply,
            ),
            ClinicRequest::Renew {
                session,
                actor,
                token_times,
                reply,
            } => {
                let result = self.renew(session, &actor, token_times);
                self.reply(reply, result);
            }
            ClinicRequest::InRoom {
                session,
                consultation,
                participant,
            } => {
                if let Some(user) = self
                    .sockets
                    .iter()
                    .find(|s| s.session == session)
                    .map(|s| s.actor.user.clone())
                {
                    self.in_room
                        .insert(session, (consultation.clone(), participant));
                    // A participant resumed on a new socket takes its seat again.
                    if self.engine.rejoined(&user, &consultation) {
                        self.after_change_by(now, None);
                    }
                    self.apply_recording(&consultation);
                } else {
                    // The session ended while it was joining: its media goes too.
                    self.effect(Effect::Media(MediaCommand::Leave {
                        participant,
                        reason: LeaveReason::SignalingClosed,
                    }));
                }
            }
            ClinicRequest::Disconnect { session } => {
                if let Some(socket) = self.remove_session(session) {
                    self.left(now, &socket);
                }
            }
            ClinicRequest::Command {
                session,
                actor,
                command,
                reply,
            } => {
                let name = command.name();
                let subject = command.subject();
                let result = if self.sockets.iter().any(|s| s.session == session) {
                    self.execute(now, &actor, command.clone())
                } else {
                    Err((
                        ErrorCode::NotAuthenticated,
                        "this session has ended; authenticate again".to_owned(),
                    ))
                };
                if let (Ok(CommandReply::EnterRoom { .. }), ClinicCommand::Join(c)) =
                    (&result, &command)
                {
                    // Entering (or re-entering after a refresh) a recorded call: show the
                    // recording state again, and ask again if the answer is still pending.
                    self.push_recording_view(&actor, c);
                }
                let label = if result.is_ok() { "ok" } else { "refused" };
                self.metrics
                    .commands
                    .with_label_values(&[name, label])
                    .inc();
                if let Err((code, message)) = &result {
                    self.refused(
                        now,
                        Refused {
                            kind: "refused",
                            actor: Some(actor.user.0.clone()),
                            subject,
                            command: name.to_owned(),
                            code: code.as_str(),
                            source: None,
                            claimed_user: None,
                            reason: message.clone(),
                        },
                    );
                }
                self.reply(reply, result);
                self.after_change_by(now, Some(&actor.user));
            }
            ClinicRequest::Refused(refused) => self.refused(now, refused),
            ClinicRequest::Admin { actor, request } => {
                self.admin(now, &actor, request);
                self.after_change_by(now, None);
            }
        }
    }

    /// Audit a refusal (bounded by the [`RefusalLog`]).
    fn refused(&mut self, now: Millis, refused: Refused) {
        self.metrics
            .refusals
            .with_label_values(&[refused.kind])
            .inc();
        if let Some(row) = self.refusals.record(now, refused) {
            self.audit.push(row);
        }
    }

    fn push_audit(
        &mut self,
        now: Millis,
        kind: &str,
        actor: Option<String>,
        subject: Option<String>,
        details: serde_json::Value,
    ) {
        self.audit.push(PendingAudit {
            at_ms: now.0,
            kind: kind.to_owned(),
            actor,
            subject,
            details,
        });
    }

    // ----- sessions -----

    #[allow(clippy::too_many_arguments)]
    fn connect(
        &mut self,
        now: Millis,
        session: u64,
        actor: Actor,
        display_name: String,
        (issued_at, expires_at): (u64, u64),
        source: Option<String>,
        events: mpsc::Sender<ServerMessage>,
        reply: Reply<Vec<String>>,
    ) {
        if self.is_revoked(&actor, issued_at) {
            self.refused(
                now,
                Refused {
                    kind: "token_refused",
                    actor: None,
                    subject: None,
                    command: "auth".into(),
                    code: ErrorCode::RevokedToken.as_str(),
                    source,
                    claimed_user: Some(actor.user.0.clone()),
                    reason: "the token was revoked".into(),
                },
            );
            self.reply(
                reply,
                Err((ErrorCode::RevokedToken, "this token was revoked".into())),
            );
            return;
        }
        // One live session per identity: an older socket of the same user is replaced.
        let replaced: Vec<u64> = self
            .sockets
            .iter()
            .filter(|s| s.actor.user == actor.user)
            .map(|s| s.session)
            .collect();
        for old in replaced {
            if let Some(socket) = self.remove_session(old) {
                self.end_session(&socket, BYE_REPLACED);
                self.push_audit(
                    now,
                    "session_replaced",
                    Some(actor.user.0.clone()),
                    None,
                    json!({ "role": actor.role.as_str() }),
                );
            }
        }
        self.names.insert(actor.user.clone(), display_name);
        let seats = self
            .engine
            .seats_of(&actor.user)
            .iter()
            .map(|c| c.0.clone())
            .collect();
        self.reply(reply, Ok(seats));
        if actor.role == Role::Doctor {
            for clinic in actor.clinics.clone() {
                let _ = self
                    .engine
                    .set_doctor_presence(&actor, &clinic, true, false);
            }
        }
        self.sockets.push(Socket {
            session,
            actor: actor.clone(),
            events,
            issued_at,
            expires_at,
            warned: false,
        });
        if let Some(open) = self.open_consultation_for(&actor) {
            self.send_to_user(&actor.user, open);
        }
        self.push_views_to(&actor, now);
        self.after_change_by(now, None);
    }

    fn renew(
        &mut self,
        session: u64,
        actor: &Actor,
        (issued_at, expires_at): (u64, u64),
    ) -> Result<(), Refusal> {
        if self.is_revoked(actor, issued_at) {
            return Err((ErrorCode::RevokedToken, "this token was revoked".into()));
        }
        let socket = self
            .sockets
            .iter_mut()
            .find(|s| s.session == session)
            .ok_or((
                ErrorCode::NotAuthenticated,
                "this session has ended; authenticate again".to_owned(),
            ))?;
        if socket.actor.user != actor.user || socket.actor.role != actor.role {
            return Err((
                ErrorCode::Forbidden,
                "a session cannot change identity; open a new socket for another user".into(),
            ));
        }
        socket.actor = actor.clone();
        socket.issued_at = issued_at;
        socket.expires_at = expires_at;
        socket.warned = false;
        Ok(())
    }

    fn is_revoked(&self, actor: &Actor, issued_at: u64) -> bool {
        self.revocations
            .iter()
            .any(|r| r.covers(actor.token_id.as_deref(), &actor.user.0, issued_at))
    }

    fn remove_session(&mut self, session: u64) -> Option<Socket> {
        let pos = self.sockets.iter().position(|s| s.session == session)?;
        Some(self.sockets.remove(pos))
    }

    /// The server ends a session: `bye` to the socket (which then closes) and its media goes.
    fn end_session(&mut self, socket: &Socket, reason: &'static str) {
        self.metrics
            .sessions_ended
            .with_label_values(&[reason])
            .inc();
        self.effect(Effect::Send(
            socket.events.clone(),
            socket.session,
            ServerMessage::Bye {
                reason: reason.to_owned(),
            },
        ));
        if let Some((_, participant)) = self.in_room.remove(&socket.session) {
            if reason == BYE_REPLACED {
                // Another socket of the same user took over, most likely to resume this
                // participant (a change of network with the old socket half-open): its media
                // is kept for the resume grace, as when a socket closes.
                self.effect(Effect::Media(MediaCommand::Detach {
                    participant,
                    session: socket.session,
                }));
            } else {
                self.effect(Effect::Recorder(RecorderCommand::Unassign { participant }));
                self.effect(Effect::Media(MediaCommand::Leave {
                    participant,
                    reason: LeaveReason::SignalingClosed,
                }));
            }
        }
    }

    /// A session is gone (closed, expired, revoked): the user's place and seats start their
    /// grace period unless another socket of theirs is live.
    fn left(&mut self, now: Millis, socket: &Socket) {
        self.in_room.remove(&socket.session);
        let user = &socket.actor.user;
        if self.sockets.iter().any(|s| &s.actor.user == user) {
            return;
        }
        self.engine.disconnected(now, user);
        // The doctor's queue shows who is disconnected right away.
        if let Some(view) = self.engine.patient_view(now, user) {
            self.broadcast_clinic(now, &view.clinic);
        }
        if socket.actor.role == Role::Doctor {
            for clinic in socket.actor.clinics.clone() {
                let _ = self
                    .engine
                    .set_doctor_presence(&socket.actor, &clinic, false, false);
            }
        }
        self.after_change_by(now, None);
    }

    /// Warn sessions whose token expires soon; end those whose token expired.
    fn expire_sessions(&mut self, now: Millis) {
        let now_s = now.0 / 1000;
        let mut expired = Vec::new();
        for s in &mut self.sockets {
            if s.expires_at <= now_s {
                expired.push(s.session);
            } else if !s.warned && s.expires_at.saturating_sub(EXPIRY_WARNING_SECS) <= now_s {
                s.warned = true;
                let message = ServerMessage::TokenExpiring {
                    expires_at: s.expires_at,
                    expires_at_ms: s.expires_at.saturating_mul(1000),
                };
                self.effects
                    .get_mut()
                    .push(Effect::Send(s.events.clone(), s.session, message));
            }
        }
        for session in expired {
            if let Some(socket) = self.remove_session(session) {
                self.end_session(&socket, BYE_TOKEN_EXPIRED);
                self.push_audit(
                    now,
                    "session_expired",
                    Some(socket.actor.user.0.clone()),
                    None,
                    json!({ "role": socket.actor.role.as_str(), "expires_at": socket.expires_at }),
                );
                self.left(now, &socket);
            }
        }
    }

    fn revoke(&mut self, now: Millis, key: &str, revocation: Revocation) -> usize {
        let (kind, subject) = match &revocation {
            Revocation::Token { jti, .. } => ("token_revoked", jti.clone()),
            Revocation::User { user, .. } => ("user_tokens_revoked", user.clone()),
        };
        self.push_audit(now, kind, Some(key.to_owned()), Some(subject), json!({}));
        let ended: Vec<u64> = self
            .sockets
            .iter()
            .filter(|s| {
                revocation.covers(s.actor.token_id.as_deref(), &s.actor.user.0, s.issued_at)
            })
            .map(|s| s.session)
            .collect();
        self.revocations.push(revocation.clone());
        self.new_revocations.push(revocation);
        for session in &ended {
            if let Some(socket) = self.remove_session(*session) {
                self.end_session(&socket, BYE_REVOKED);
                self.push_audit(
                    now,
                    "session_revoked",
                    Some(socket.actor.user.0.clone()),
                    None,
                    json!({ "role": socket.actor.role.as_str(), "by": key }),
                );
                self.left(now, &socket);
            }
        }
        ended.len()
    }

    // ----- administration -----

    fn admin(&mut self, now: Millis, key: &str, request: AdminRequest) {
        let actor = Some(key.to_owned());
        match request {
            AdminRequest::UpsertClinic(clinic, reply) => {
                let existed = self.engine.clinic(&clinic.id).is_some();
                self.push_audit(
                    now,
                    if existed { "clinic_updated" } else { "clinic_created" },
                    actor,
                    Some(clinic.id.0.clone()),
                    json!({ "doctor": clinic.doctor.0, "name": clinic.name, "slot_minutes": clinic.slot_minutes }),
                );
                self.engine.upsert_clinic(clinic);
                self.reply(reply, Ok(()));
            }
            AdminRequest::AddAppointment(appointment, reply) => {
                let result = self.book(now, appointment.clone());
                if let Ok(Booking::Created) = result {
                    self.push_audit(
                        now,
                        "appointment_booked",
                        actor,
                        Some(appointment.id.0.clone()),
                        json!({ "clinic": appointment.clinic.0, "patient": appointment.patient.0, "slot_start_ms": appointment.slot_start.0 }),
                    );
                }
                self.reply(reply, result);
            }
            AdminRequest::Reschedule(id, slot_start, reply) => {
                let result = self
                    .engine
                    .reschedule_appointment(now, &id, slot_start)
                    .map_err(|e| refusal(&e));
                if result.is_ok() {
                    self.push_audit(
                        now,
                        "appointment_rescheduled",
                        actor,
                        Some(id.0.clone()),
                        json!({ "slot_start_ms": slot_start.0 }),
                    );
                }
                self.reply(reply, result);
            }
            AdminRequest::Cancel(id, reply) => {
                let result = match self.engine.appointment(&id) {
                    Some(_) => self.engine.cancel_appointment(&id).map_err(|e| refusal(&e)),
                    None => match self.stored_appointment(&id) {
                        Ok(Some(_)) => Err((
                            ErrorCode::Conflict,
                            "this appointment is history and cannot be cancelled".into(),
                        )),
                        Ok(None) => Err(refusal(&ClinicError::NotFound("appointment"))),
                        Err(e) => Err(e),
                    },
                };
                if let Ok(a) = &result {
                    self.push_audit(
                        now,
                        "appointment_cancelled",
                        actor,
                        Some(id.0.clone()),
                        json!({ "clinic": a.clinic.0, "patient": a.patient.0, "slot_start_ms": a.slot_start.0 }),
                    );
                }
                self.reply(reply, result);
            }
            AdminRequest::AddSlots(clinic, start, count, capacity, reply) => {
                let result = self
                    .engine
                    .add_slots(&clinic, start, count, capacity)
                    .map(|_| self.engine.slot_bookings(&clinic))
                    .map_err(|e| refusal(&e));
                if result.is_ok() {
                    self.push_audit(
                        now,
                        "slots_added",
                        actor,
                        Some(clinic.0.clone()),
                        json!({ "start_ms": start.0, "count": count, "capacity": capacity }),
                    );
                }
                self.reply(reply, result);
            }
            AdminRequest::ListSlots(clinic, reply) => {
                let result = match self.engine.clinic(&clinic) {
                    Some(_) => Ok(self.engine.slot_bookings(&clinic)),
                    None => Err(refusal(&ClinicError::NotFound("clinic"))),
                };
                self.reply(reply, result);
            }
            AdminRequest::ListClinics(reply) => {
                let clinics = self.engine.clinics().cloned().collect();
                self.reply(reply, Ok(clinics));
            }
            AdminRequest::Queue(clinic, reply) => {
                let result = match self.engine.clinic(&clinic) {
                    Some(_) => Ok(self.engine.queue_rows(now, &clinic)),
                    None => Err(refusal(&ClinicError::NotFound("clinic"))),
                };
                self.reply(reply, result);
            }
            AdminRequest::TokenIssued {
                jti,
                user,
                role,
                expires_at,
                reply,
            } => {
                self.push_audit(
                    now,
                    "token_issued",
                    actor,
                    Some(jti),
                    json!({ "user": user, "role": role.as_str(), "expires_at": expires_at }),
                );
                self.reply(reply, Ok(()));
            }
            AdminRequest::Revoke(revocation, reply) => {
                let ended = self.revoke(now, key, revocation);
                self.reply(reply, Ok(ended));
            }
        }
    }

    fn stored_appointment(&self, id: &AppointmentId) -> Result<Option<Appointment>, Refusal> {
        let store = self.store.clone();
        blocking(|| store.appointment(id)).map_err(|e| {
            tracing::error!(error = %e, "reading an appointment failed");
            (
                ErrorCode::Internal,
                "the store could not be read".to_owned(),
            )
        })
    }

    /// Whether `consultation` is history (ended, in the store only).
    fn ended_in_store(&self, consultation: &ConsultationId) -> Result<bool, Refusal> {
        let store = self.store.clone();
        let found = blocking(|| store.consultation(&consultation.0)).map_err(|e| {
            tracing::error!(error = %e, "reading a consultation failed");
            (
                ErrorCode::Internal,
                "the store could not be read".to_owned(),
            )
        })?;
        Ok(found.is_some_and(|c| c.state == huizhen_signaling::clinic::ConsultationState::Ended))
    }

    /// Book, checking ids the engine no longer holds (history) against the store.
    fn book(&mut self, now: Millis, appointment: Appointment) -> Result<Booking, Refusal> {
        if self.engine.appointment(&appointment.id).is_none() {
            if let Some(stored) = self.stored_appointment(&appointment.id)? {
                return if stored == appointment {
                    Ok(Booking::Unchanged)
                } else {
                    Err(refusal(&ClinicError::Conflict(
                        "an appointment with this id exists with other details; reschedule or cancel it instead",
                    )))
                };
            }
        }
        self.engine
            .book_appointment(now, appointment)
            .map_err(|e| refusal(&e))
    }

    // ----- clinic commands -----

    fn execute(
        &mut self,
        now: Millis,
        actor: &Actor,
        command: ClinicCommand,
    ) -> Result<CommandReply, Refusal> {
        let e = &mut self.engine;
        let done =
            |r: Result<(), ClinicError>| r.map(|_| CommandReply::Done).map_err(|e| refusal(&e));
        match command {
            ClinicCommand::CheckIn(appointment) => {
                let view = e
                    .check_in(now, actor, &appointment)
                    .map_err(|e| refusal(&e))?;
                if let Some(invitation) = &view.ringing {
                    // A refresh while being called: ring again.
                    if let Some(inv) = self.engine.invitation(invitation).cloned() {
                        self.send_to_user(&actor.user, ringing(&inv));
                    }
                }
                Ok(CommandReply::Done)
            }
            ClinicCommand::LeaveQueue => done(e.leave_queue(actor)),
            ClinicCommand::SetAway(clinic, away) => {
                done(e.set_doctor_presence(actor, &clinic, true, away))
            }
            ClinicCommand::Invite(clinic, patient) => {
                done(e.invite(now, actor, &clinic, patient.as_ref()).map(|_| ()))
            }
            ClinicCommand::CancelInvitation(inv) => done(e.cancel_invitation(actor, &inv)),
            ClinicCommand::MoveUp(clinic, patient) => done(e.move_up(actor, &clinic, &patient)),
            ClinicCommand::Accept(inv) => e
                .answer(now, actor, &inv)
                .map(join_reply)
                .map_err(|e| refusal(&e)),
            ClinicCommand::Decline(inv) => done(e.decline(actor, &inv)),
            ClinicCommand::Join(c) => match e.join(now, actor, &c) {
                Ok(outcome) => Ok(join_reply(outcome)),
                // Ended consultations leave memory: ask the store before saying "not found".
                Err(ClinicError::NotFound("consultation")) if self.ended_in_store(&c)? => {
                    Err(refusal(&if actor.role == Role::Expert {
                        ClinicError::LinkExpired
                    } else {
                        ClinicError::InvalidState("the consultation has ended")
                    }))
                }
                Err(e) => Err(refusal(&e)),
            },
            ClinicCommand::LeaveConsultation(c) => done(e.leave(actor, &c)),
            ClinicCommand::Admit(c, user) => done(e.admit(actor, &c, &user).map(|_| ())),
            ClinicCommand::InviteExpert(c, name) => self.invite_expert(now, actor, &c, name),
            ClinicCommand::End(c) => done(e.end(now, actor, &c)),
            ClinicCommand::StartRecording(c) => {
                let id = format!("rec-{}-{:08x}", now.0, rand::random::<u32>());
                done(e.start_recording(now, actor, &c, id))
            }
            ClinicCommand::StopRecording(c) => done(e.stop_recording(now, actor, &c)),
            ClinicCommand::Consent(c, granted) => done(e.decide_consent(now, actor, &c, granted)),
        }
    }

    fn invite_expert(
        &mut self,
        now: Millis,
        actor: &Actor,
        consultation: &ConsultationId,
        name: Option<String>,
    ) -> Result<CommandReply, Refusal> {
        let link = format!("x{:016x}", rand::random::<u64>());
        let now_secs = now.0 / 1000;
        let mut claims = Claims::new(
            format!("expert-{link}"),
            name.unwrap_or_else(|| "Expert".to_owned()),
            Role::Expert,
            now_secs,
            EXPERT_LINK_TTL_SECS.min(self.minter.max_lifetime_secs()),
        );
        claims.consultation = Some(consultation.0.clone());
        claims.jti = Some(link.clone());
        // Minted before the engine records the link, so a failure leaves nothing behind.
        let token = self.minter.mint(&claims).map_err(|e| {
            (
                ErrorCode::Internal,
                format!("cannot mint the expert link: {e}"),
            )
        })?;
        self.engine
            .invite_expert(actor, consultation, link)
            .map_err(|e| refusal(&e))?;
        self.send_to_user(
            &actor.user,
            ServerMessage::ExpertLink {
                consultation: consultation.0.clone(),
                path: format!("/expert?token={token}&consultation={}", consultation.0),
                expires_at: claims.exp,
                expires_at_ms: claims.exp.saturating_mul(1000),
            },
        );
        Ok(CommandReply::Done)
    }

    /// Act on everything the engine did: an audit row and the effects of each event.
    /// `by` is the authenticated user whose command caused the events, recorded as the actor
    /// where the event itself names none (doctor actions).
    fn after_change_by(&mut self, now: Millis, by: Option<&UserId>) {
        let mut touched: BTreeSet<ClinicId> = BTreeSet::new();
        while let Some(event) = self.engine.poll_event() {
            let (kind, actor, subject, details) = crate::audit::audit_fields(&event);
            let actor = actor.or_else(|| by.map(|u| u.0.clone()));
            self.metrics.events.with_label_values(&[kind]).inc();
            self.push_audit(now, kind, actor, subject, details);
            self.notify(now, &event, &mut touched);
        }
        for clinic in touched {
            self.broadcast_clinic(now, &clinic);
        }
    }
}

fn join_reply(outcome: JoinOutcome) -> CommandReply {
    match outcome {
        JoinOutcome::Admitted { room, may_publish } => {
            CommandReply::EnterRoom { room, may_publish }
        }
        JoinOutcome::WaitingForApproval => CommandReply::WaitingForApproval,
    }
}

fn ringing(inv: &huizhen_signaling::clinic::Invitation) -> ServerMessage {
    ServerMessage::Ringing {
        invitation: inv.id.0.clone(),
        consultation: inv.consultation.0.clone(),
        expires_at_ms: inv.expires_at.0,
    }
}

fn status_str(status: huizhen_signaling::clinic::DoctorStatus) -> &'static str {
    use huizhen_signaling::clinic::DoctorStatus;
    match status {
        DoctorStatus::Online => "online",
        DoctorStatus::InConsultation => "in_consultation",
        DoctorStatus::Away => "away",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_name_is_listed() {
        let c = ConsultationId::from("c");
        let all = [
            ClinicCommand::CheckIn("a".into()),
            ClinicCommand::LeaveQueue,
            ClinicCommand::SetAway("k".into(), true),
            ClinicCommand::Invite("k".into(), None),
            ClinicCommand::CancelInvitation("i".into()),
            ClinicCommand::MoveUp("k".into(), "u".into()),
            ClinicCommand::Accept("i".into()),
            ClinicCommand::Decline("i".into()),
            ClinicCommand::Join(c.clone()),
            ClinicCommand::LeaveConsultation(c.clone()),
            ClinicCommand::Admit(c.clone(), "u".into()),
            ClinicCommand::InviteExpert(c.clone(), None),
            ClinicCommand::End(c.clone()),
            ClinicCommand::StartRecording(c.clone()),
            ClinicCommand::StopRecording(c.clone()),
            ClinicCommand::Consent(c, true),
        ];
        let names: Vec<&str> = all.iter().map(ClinicCommand::name).collect();
        assert_eq!(names, ClinicCommand::NAMES);
    }
}
