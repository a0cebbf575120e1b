//! The clinic service: the async edge around the sans-IO [`ClinicEngine`].
//!
//! One task owns the engine. Signaling sessions and the REST API send it requests; it applies
//! them with the wall-clock time, then acts on the engine's events: every event is appended to
//! the hash-chained audit trail, the state is persisted to the store, affected users are told
//! (queue positions, ringing, invitation results, consultation ready/ended), the SFU room of
//! an ended consultation is closed, and the hospital's system gets webhooks when consultations
//! start and end. Refused requests are answered with a typed error and audited too.

pub mod dev;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use huizhen_signaling::clinic::{
    Actor, Appointment, AppointmentId, Clinic, ClinicEngine, ClinicError, ClinicEvent, ClinicId,
    ConsultationId, InvitationId, JoinOutcome, Millis, Role, UserId,
};
use huizhen_signaling::protocol::{ErrorCode, QueueEntryInfo, ServerMessage};
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::auth::{Claims, TokenMinter};
use crate::edge::{MediaCommand, MediaHandle};
use crate::recorder::task::RecorderCommand;
use crate::sfu::ParticipantId;
use crate::store::Store;
use crate::webhook::WebhookHandle;

/// How long expert links stay valid at most (they also die when the consultation ends).
const EXPERT_LINK_TTL_SECS: u64 = 4 * 3600;
/// Capacity of the request channel.
const REQUEST_QUEUE: usize = 1024;

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

/// Administrative requests from the REST API (already authorised by API key).
#[derive(Debug)]
pub enum AdminRequest {
    /// Create or replace a clinic.
    UpsertClinic(Clinic, oneshot::Sender<Result<(), Refusal>>),
    /// Book an appointment.
    AddAppointment(Appointment, oneshot::Sender<Result<(), Refusal>>),
    /// All clinics.
    ListClinics(oneshot::Sender<Vec<Clinic>>),
    /// Add time slots to a clinic: start, count, capacity; answers all its slots and bookings.
    AddSlots(
        ClinicId,
        Millis,
        u32,
        u32,
        oneshot::Sender<Result<Vec<(huizhen_signaling::clinic::Slot, usize)>, Refusal>>,
    ),
    /// A clinic's slots with their bookings.
    ListSlots(
        ClinicId,
        oneshot::Sender<Result<Vec<(huizhen_signaling::clinic::Slot, usize)>, Refusal>>,
    ),
    /// Appointments, optionally of one clinic.
    ListAppointments(Option<ClinicId>, oneshot::Sender<Vec<Appointment>>),
    /// One consultation as JSON.
    GetConsultation(ConsultationId, oneshot::Sender<Option<serde_json::Value>>),
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
        /// The socket's outgoing queue.
        events: mpsc::Sender<ServerMessage>,
        /// Consultations where the user holds a seat.
        reply: oneshot::Sender<Vec<String>>,
    },
    /// An authenticated socket closed.
    Disconnect {
        /// Session id.
        session: u64,
    },
    /// A clinic command.
    Command {
        /// Who.
        actor: Actor,
        /// What.
        command: ClinicCommand,
        /// Outcome.
        reply: oneshot::Sender<Result<CommandReply, Refusal>>,
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
    /// Record a refusal that happened before the clinic (e.g. a bad token).
    AuditRefusal {
        /// Audit kind, e.g. `token_refused`.
        kind: &'static str,
        /// Who (if known).
        actor: Option<String>,
        /// Details.
        details: serde_json::Value,
    },
    /// REST API.
    Admin(AdminRequest),
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

impl ClinicHandle {
    /// Send a request.
    pub async fn send(&self, request: ClinicRequest) -> Result<(), ClinicGone> {
        self.requests.send(request).await.map_err(|_| ClinicGone)
    }

    /// Run a command and wait for its outcome.
    pub async fn command(
        &self,
        actor: Actor,
        command: ClinicCommand,
    ) -> Result<CommandReply, Refusal> {
        let (reply, outcome) = oneshot::channel();
        let unavailable = || (ErrorCode::Unavailable, "the clinic service is not running".to_owned());
        self.send(ClinicRequest::Command {
            actor,
            command,
            reply,
        })
        .await
        .map_err(|_| unavailable())?;
        outcome.await.map_err(|_| unavailable())?
    }

    /// Register an authenticated socket; returns the user's seats.
    pub async fn connect(
        &self,
        session: u64,
        actor: Actor,
        display_name: String,
        events: mpsc::Sender<ServerMessage>,
    ) -> Result<Vec<String>, ClinicGone> {
        let (reply, seats) = oneshot::channel();
        self.send(ClinicRequest::Connect {
            session,
            actor,
            display_name,
            events,
            reply,
        })
        .await?;
        seats.await.map_err(|_| ClinicGone)
    }

    /// Ask an admin question and wait for the answer.
    pub async fn admin<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest,
    ) -> Result<T, ClinicGone> {
        let (reply, answer) = oneshot::channel();
        self.send(ClinicRequest::Admin(make(reply))).await?;
        answer.await.map_err(|_| ClinicGone)
    }
}

/// Clinic metrics (`huizhen_clinic_` registry); labels are command names and error codes.
#[derive(Clone)]
struct ClinicMetrics {
    commands: IntCounterVec,
    events: IntCounterVec,
}

impl ClinicMetrics {
    fn new(registry: &Registry) -> ClinicMetrics {
        let commands = IntCounterVec::new(
            Opts::new("commands_total", "Clinic commands, by command and result"),
            &["command", "result"],
        )
        .expect("metric");
        let events = IntCounterVec::new(Opts::new("events_total", "Clinic events, by kind"), &["kind"])
            .expect("metric");
        registry.register(Box::new(commands.clone())).expect("metric");
        registry.register(Box::new(events.clone())).expect("metric");
        for command in ClinicCommand::NAMES {
            for result in ["ok", "refused"] {
                commands.with_label_values(&[command, result]);
            }
        }
        for kind in crate::audit::EVENT_KINDS {
            events.with_label_values(&[kind]);
        }
        ClinicMetrics { commands, events }
    }
}

struct Socket {
    session: u64,
    actor: Actor,
    events: mpsc::Sender<ServerMessage>,
}

/// What the clinic task needs.
pub struct ClinicParts {
    /// The state machine (restored from the store).
    pub engine: ClinicEngine,
    /// Persistence and audit.
    pub store: Store,
    /// Mints expert links.
    pub minter: Arc<TokenMinter>,
    /// The SFU.
    pub media: MediaHandle,
    /// Webhooks to the hospital system.
    pub webhooks: WebhookHandle,
    /// The recorder.
    pub recorder: crate::recorder::task::RecorderHandle,
    /// Metrics registry (`huizhen_clinic_`).
    pub registry: Registry,
}

struct Service {
    recorder: crate::recorder::task::RecorderHandle,
    /// SFU participants of sessions in a consultation's room.
    in_room: HashMap<u64, (ConsultationId, ParticipantId)>,
    engine: ClinicEngine,
    store: Store,
    minter: Arc<TokenMinter>,
    media: MediaHandle,
    webhooks: WebhookHandle,
    metrics: ClinicMetrics,
    sockets: Vec<Socket>,
    names: HashMap<UserId, String>,
}

/// Start the clinic task.
pub fn spawn(parts: ClinicParts, shutdown: watch::Receiver<bool>) -> (ClinicHandle, tokio::task::JoinHandle<()>) {
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
    };
    let task = tokio::spawn(run(service, rx, shutdown));
    (ClinicHandle { requests: tx }, task)
}

async fn run(
    mut service: Service,
    mut requests: mpsc::Receiver<ClinicRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let sleep = match service.engine.poll_timeout() {
            Some(at) => Duration::from_millis(at.since(now_ms()).max(1)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            request = requests.recv() => match request {
                Some(r) => service.handle(r).await,
                None => break,
            },
            _ = tokio::time::sleep(sleep) => {
                let now = now_ms();
                service.engine.handle_timeout(now);
                service.after_change(now).await;
            }
            _ = shutdown.changed() => break,
        }
    }
    service.persist();
    info!("clinic service stopped");
}

fn refusal(e: &ClinicError) -> Refusal {
    (ErrorCode::from_clinic(e.code()), e.to_string())
}

impl Service {
    async fn handle(&mut self, request: ClinicRequest) {
        let now = now_ms();
        match request {
            ClinicRequest::Connect {
                session,
                actor,
                display_name,
                events,
                reply,
            } => {
                self.names.insert(actor.user.clone(), display_name);
                let seats = self.engine.seats_of(&actor.user).iter().map(|c| c.0.clone()).collect();
                let _ = reply.send(seats);
                if actor.role == Role::Doctor {
                    for clinic in actor.clinics.clone() {
                        let _ = self.engine.set_doctor_presence(&actor, &clinic, true, false);
                    }
                }
                self.sockets.push(Socket {
                    session,
                    actor: actor.clone(),
                    events,
                });
                if let Some(open) = self.open_consultation_for(&actor) {
                    self.send_to_user(&actor.user, open);
                }
                self.push_views_to(&actor, now);
                self.after_change(now).await;
            }
            ClinicRequest::InRoom {
                session,
                consultation,
                participant,
            } => {
                self.in_room.insert(session, (consultation.clone(), participant));
                self.apply_recording(&consultation).await;
            }
            ClinicRequest::Disconnect { session } => {
                self.in_room.remove(&session);
                let Some(pos) = self.sockets.iter().position(|s| s.session == session) else {
                    return;
                };
                let socket = self.sockets.remove(pos);
                let user = socket.actor.user.clone();
                if !self.sockets.iter().any(|s| s.actor.user == user) {
                    self.engine.disconnected(now, &user);
                    // The doctor's queue shows who is disconnected right away.
                    if let Some(view) = self.engine.patient_view(now, &user) {
                        self.broadcast_clinic(now, &view.clinic);
                    }
                    if socket.actor.role == Role::Doctor {
                        for clinic in socket.actor.clinics.clone() {
                            let _ = self.engine.set_doctor_presence(&socket.actor, &clinic, false, false);
                        }
                    }
                }
                self.after_change(now).await;
            }
            ClinicRequest::Command {
                actor,
                command,
                reply,
            } => {
                let name = command.name();
                let result = self.execute(now, &actor, command.clone());
                if let (Ok(CommandReply::EnterRoom { .. }), ClinicCommand::Join(c)) = (&result, &command) {
                    // Entering (or re-entering after a refresh) a recorded call: show the
                    // recording state again, and ask again if the answer is still pending.
                    self.push_recording_view(&actor, c);
                }
                let label = match &result {
                    Ok(_) => "ok",
                    Err(_) => "refused",
                };
                self.metrics.commands.with_label_values(&[name, label]).inc();
                if let Err((code, message)) = &result {
                    self.audit(
                        now,
                        "refused",
                        Some(actor.user.0.clone()),
                        None,
                        json!({ "command": name, "code": code.as_str(), "reason": message, "role": actor.role.as_str() }),
                    );
                }
                let _ = reply.send(result);
                self.after_change_by(now, Some(&actor.user)).await;
            }
            ClinicRequest::AuditRefusal { kind, actor, details } => {
                self.audit(now, kind, actor, None, details);
            }
            ClinicRequest::Admin(admin) => {
                self.admin(admin);
                self.after_change(now).await;
            }
        }
    }

    fn admin(&mut self, request: AdminRequest) {
        match request {
            AdminRequest::UpsertClinic(clinic, reply) => {
                self.engine.upsert_clinic(clinic);
                let _ = reply.send(Ok(()));
            }
            AdminRequest::AddAppointment(appointment, reply) => {
                let result = self.engine.add_appointment(appointment).map_err(|e| refusal(&e));
                let _ = reply.send(result);
            }
            AdminRequest::AddSlots(clinic, start, count, capacity, reply) => {
                let result = self
                    .engine
                    .add_slots(&clinic, start, count, capacity)
                    .map(|_| self.engine.slot_bookings(&clinic))
                    .map_err(|e| refusal(&e));
                let _ = reply.send(result);
            }
            AdminRequest::ListSlots(clinic, reply) => {
                let result = match self.engine.clinic(&clinic) {
                    Some(_) => Ok(self.engine.slot_bookings(&clinic)),
                    None => Err(refusal(&ClinicError::NotFound("clinic"))),
                };
                let _ = reply.send(result);
            }
            AdminRequest::ListClinics(reply) => {
                let _ = reply.send(self.engine.clinics().cloned().collect());
            }
            AdminRequest::ListAppointments(clinic, reply) => {
                let list = self
                    .engine
                    .appointments()
                    .filter(|a| clinic.as_ref().is_none_or(|c| &a.clinic == c))
                    .cloned()
                    .collect();
                let _ = reply.send(list);
            }
            AdminRequest::GetConsultation(id, reply) => {
                let value = self
                    .engine
                    .consultation(&id)
                    .and_then(|c| serde_json::to_value(c).ok());
                let _ = reply.send(value);
            }
        }
    }

    fn execute(&mut self, now: Millis, actor: &Actor, command: ClinicCommand) -> Result<CommandReply, Refusal> {
        let e = &mut self.engine;
        let done = |r: Result<(), ClinicError>| r.map(|_| CommandReply::Done).map_err(|e| refusal(&e));
        match command {
            ClinicCommand::CheckIn(appointment) => {
                let view = e.check_in(now, actor, &appointment).map_err(|e| refusal(&e))?;
                if let Some(invitation) = &view.ringing {
                    // A refresh while being called: ring again.
                    if let Some(inv) = self.engine.invitation(invitation).cloned() {
                        self.send_to_user(&actor.user, ringing(&inv));
                    }
                }
                Ok(CommandReply::Done)
            }
            ClinicCommand::LeaveQueue => done(e.leave_queue(actor)),
            ClinicCommand::SetAway(clinic, away) => done(e.set_doctor_presence(actor, &clinic, true, away)),
            ClinicCommand::Invite(clinic, patient) => done(e.invite(now, actor, &clinic, patient.as_ref()).map(|_| ())),
            ClinicCommand::CancelInvitation(inv) => done(e.cancel_invitation(actor, &inv)),
            ClinicCommand::MoveUp(clinic, patient) => done(e.move_up(actor, &clinic, &patient)),
            ClinicCommand::Accept(inv) => e.answer(now, actor, &inv).map(join_reply).map_err(|e| refusal(&e)),
            ClinicCommand::Decline(inv) => done(e.decline(actor, &inv)),
            ClinicCommand::Join(c) => e.join(now, actor, &c).map(join_reply).map_err(|e| refusal(&e)),
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
        self.engine
            .invite_expert(actor, consultation, link.clone())
            .map_err(|e| refusal(&e))?;
        let now_secs = now.0 / 1000;
        let mut claims = Claims::new(
            format!("expert-{link}"),
            name.unwrap_or_else(|| "Expert".to_owned()),
            Role::Expert,
            now_secs,
            EXPERT_LINK_TTL_SECS.min(self.minter.max_lifetime_secs()),
        );
        claims.consultation = Some(consultation.0.clone());
        claims.jti = Some(link);
        let token = self
            .minter
            .mint(&claims)
            .map_err(|e| (ErrorCode::Internal, format!("cannot mint the expert link: {e}")))?;
        self.send_to_user(
            &actor.user,
            ServerMessage::ExpertLink {
                consultation: consultation.0.clone(),
                path: format!("/expert?token={token}&consultation={}", consultation.0),
                expires_at: claims.exp,
            },
        );
        Ok(CommandReply::Done)
    }

    /// Act on everything the engine did: audit, persist, notify, close rooms, webhooks.
    async fn after_change(&mut self, now: Millis) {
        self.after_change_by(now, None).await;
    }

    /// Like [`Service::after_change`]; `by` is the authenticated user whose command caused the
    /// events, recorded as the actor where the event itself names none (doctor actions).
    async fn after_change_by(&mut self, now: Millis, by: Option<&UserId>) {
        let mut touched: BTreeSet<ClinicId> = BTreeSet::new();
        let mut changed = false;
        while let Some(event) = self.engine.poll_event() {
            changed = true;
            let (kind, actor, subject, details) = crate::audit::audit_fields(&event);
            let actor = actor.or_else(|| by.map(|u| u.0.clone()));
            self.metrics.events.with_label_values(&[kind]).inc();
            self.audit(now, kind, actor, subject, details);
            self.notify(now, &event, &mut touched).await;
        }
        if changed {
            self.persist();
        }
        for clinic in touched {
            self.broadcast_clinic(now, &clinic);
        }
    }

    async fn notify(&mut self, now: Millis, event: &ClinicEvent, touched: &mut BTreeSet<ClinicId>) {
        match event {
            ClinicEvent::CheckedIn { clinic, .. }
            | ClinicEvent::Reconnected { clinic, .. }
            | ClinicEvent::LeftQueue { clinic, .. }
            | ClinicEvent::MovedUp { clinic, .. }
            | ClinicEvent::DoctorStatus { clinic, .. } => {
                touched.insert(clinic.clone());
            }
            ClinicEvent::Invited {
                clinic,
                patient,
                invitation,
                consultation,
            } => {
                touched.insert(clinic.clone());
                if let Some(inv) = self.engine.invitation(invitation).cloned() {
                    self.send_to_user(patient, ringing(&inv));
                }
                self.invitation_status(clinic, invitation, consultation, patient, "sent");
            }
            ClinicEvent::Answered {
                invitation,
                consultation,
                patient,
            } => {
                if let Some(c) = self.engine.consultation(consultation).cloned() {
                    touched.insert(c.clinic.clone());
                    self.invitation_status(&c.clinic, invitation, consultation, patient, "answered");
                    let ready = ServerMessage::ConsultationReady {
                        consultation: c.id.0.clone(),
                        room: c.room.clone(),
                    };
                    self.send_to_user(patient, ready.clone());
                    self.send_to_clinic_doctors(&c.clinic, ready);
                    let open = ServerMessage::ConsultationOpen {
                        consultation: c.id.0.clone(),
                    };
                    for s in self.sockets.iter().filter(|s| {
                        s.actor.role == Role::Companion && s.actor.appointment.as_ref() == Some(&c.appointment)
                    }) {
                        let _ = s.events.try_send(open.clone());
                    }
                }
            }
            ClinicEvent::Declined { invitation, patient }
            | ClinicEvent::InvitationExpired { invitation, patient }
            | ClinicEvent::InvitationCancelled { invitation, patient } => {
                let status = match event {
                    ClinicEvent::Declined { .. } => "declined",
                    ClinicEvent::InvitationExpired { .. } => "expired",
                    _ => "cancelled",
                };
                if let Some(clinic) = self.engine.patient_view(now, patient).map(|v| v.clinic) {
                    touched.insert(clinic.clone());
                    self.invitation_status(&clinic, invitation, &ConsultationId(String::new()), patient, status);
                }
            }
            ClinicEvent::ConsultationStarted { consultation, .. } => {
                self.webhook("consultation.started", now, consultation);
            }
            ClinicEvent::CompanionWaiting { consultation, user } => {
                if let Some(c) = self.engine.consultation(consultation).cloned() {
                    let display_name = self.names.get(user).cloned().unwrap_or_else(|| "Companion".into());
                    self.send_to_clinic_doctors(
                        &c.clinic,
                        ServerMessage::CompanionWaiting {
                            consultation: consultation.0.clone(),
                            user: user.0.clone(),
                            display_name,
                        },
                    );
                }
            }
            ClinicEvent::Admitted { consultation, user } => {
                if let Some(c) = self.engine.consultation(consultation) {
                    let ready = ServerMessage::ConsultationReady {
                        consultation: c.id.0.clone(),
                        room: c.room.clone(),
                    };
                    self.send_to_user(user, ready);
                }
            }
            ClinicEvent::Left { consultation, user, .. } => {
                let ended = self
                    .engine
                    .consultation(consultation)
                    .is_some_and(|c| c.ended_at.is_some());
                if ended {
                    self.send_to_user(
                        user,
                        ServerMessage::ConsultationEnded {
                            consultation: consultation.0.clone(),
                        },
                    );
                }
            }
            ClinicEvent::ConsultationEnded { consultation, room, .. } => {
                if let Some(c) = self.engine.consultation(consultation).cloned() {
                    touched.insert(c.clinic);
                }
                let _ = self
                    .media
                    .send(MediaCommand::CloseRoom { room: room.clone() })
                    .await;
                self.webhook("consultation.ended", now, consultation);
            }
            ClinicEvent::Joined { .. } | ClinicEvent::ExpertInvited { .. } => {}
            ClinicEvent::RecordingStarted {
                consultation,
                recording,
            } => {
                if let Some(c) = self.engine.consultation(consultation) {
                    self.recorder
                        .command(RecorderCommand::Start {
                            recording: recording.clone(),
                            consultation: consultation.0.clone(),
                            room: c.room.clone(),
                            started_at_ms: now.0,
                        })
                        .await;
                }
                self.recording_status_to_all(consultation);
                self.apply_recording(consultation).await;
            }
            ClinicEvent::RecordingStopped {
                consultation,
                recording,
            } => {
                self.recording_status_to_all(consultation);
                self.apply_recording(consultation).await;
                self.stop_recorder(consultation, recording, now).await;
            }
            ClinicEvent::ConsentRequested {
                consultation,
                recording,
                user,
            } => {
                self.send_to_user(
                    user,
                    ServerMessage::ConsentRequest {
                        consultation: consultation.0.clone(),
                        recording: recording.clone(),
                    },
                );
                self.consent_status_to_doctors(consultation, recording, user, "pending");
            }
            ClinicEvent::ConsentDecided {
                consultation,
                recording,
                user,
                decision,
            } => {
                let granted = *decision == huizhen_signaling::clinic::ConsentDecision::Granted;
                self.send_to_user(
                    user,
                    ServerMessage::RecordingStatus {
                        consultation: consultation.0.clone(),
                        recording: recording.clone(),
                        active: true,
                        recorded: granted,
                    },
                );
                let label = if granted { "granted" } else { "refused" };
                self.consent_status_to_doctors(consultation, recording, user, label);
                self.apply_recording(consultation).await;
            }
        }
    }

    /// The consent decisions of a recording, as the manifest records them (pending ones are
    /// not consents), and when it stopped.
    fn consent_records(
        &self,
        consultation: &ConsultationId,
        recording: &str,
    ) -> Option<(Vec<crate::vault::ConsentRecord>, Option<Millis>)> {
        use huizhen_signaling::clinic::ConsentDecision as Decision;
        let rec = self
            .engine
            .consultation(consultation)
            .and_then(|c| c.recordings.iter().find(|r| r.id == recording))?;
        let consents = rec
            .consents
            .iter()
            .filter_map(|x| {
                let decision = match x.decision {
                    Decision::Granted => crate::vault::ConsentDecision::Granted,
                    Decision::Refused => crate::vault::ConsentDecision::Refused,
                    Decision::Pending => return None,
                };
                Some(crate::vault::ConsentRecord {
                    user_id: x.user.0.clone(),
                    decision,
                    at_ms: x.at.0,
                })
            })
            .collect();
        Some((consents, rec.stopped_at))
    }

    /// Hand the recorder every consent decision and let it seal the manifest.
    async fn stop_recorder(&self, consultation: &ConsultationId, recording: &str, now: Millis) {
        let Some((consents, stopped_at)) = self.consent_records(consultation, recording) else {
            return;
        };
        self.recorder
            .command(RecorderCommand::Stop {
                recording: recording.to_owned(),
                ended_at_ms: stopped_at.unwrap_or(now).0,
                consents,
            })
            .await;
    }

    /// Tell the SFU, for every participant in the consultation's room, whether its media goes
    /// to the recorder (only those who consented to the running recording), and the recorder
    /// whose media it is.
    async fn apply_recording(&self, consultation: &ConsultationId) {
        let recorded = self.engine.recorded_users(consultation);
        let recording = self
            .engine
            .consultation(consultation)
            .and_then(|c| c.active_recording())
            .map(|r| r.id.clone());
        if let Some(id) = &recording {
            // Journaled with every segment, so a crash cannot separate media from its consent.
            if let Some((consents, _)) = self.consent_records(consultation, id) {
                self.recorder
                    .command(RecorderCommand::Consents {
                        recording: id.clone(),
                        consents,
                    })
                    .await;
            }
        }
        let sessions: Vec<(u64, ParticipantId)> = self
            .in_room
            .iter()
            .filter(|(_, (c, _))| c == consultation)
            .map(|(session, (_, p))| (*session, *p))
            .collect();
        for (session, participant) in sessions {
            let Some(socket) = self.sockets.iter().find(|s| s.session == session) else {
                continue;
            };
            let record = recorded.contains(&socket.actor.user);
            match (&recording, record) {
                (Some(recording), true) => {
                    self.recorder
                        .command(RecorderCommand::Assign {
                            recording: recording.clone(),
                            participant,
                            user: socket.actor.user.0.clone(),
                            role: socket.actor.role.as_str().to_owned(),
                        })
                        .await;
                }
                _ => {
                    self.recorder
                        .command(RecorderCommand::Unassign { participant })
                        .await;
                }
            }
            let _ = self
                .media
                .send(MediaCommand::SetRecorded {
                    participant,
                    recorded: record,
                })
                .await;
        }
    }

    fn push_recording_view(&self, actor: &Actor, consultation: &ConsultationId) {
        use huizhen_signaling::clinic::ConsentDecision as Decision;
        let Some(c) = self.engine.consultation(consultation) else {
            return;
        };
        let Some(rec) = c.active_recording() else {
            return;
        };
        self.send_to_user(
            &actor.user,
            ServerMessage::RecordingStatus {
                consultation: consultation.0.clone(),
                recording: rec.id.clone(),
                active: true,
                recorded: rec.records(&actor.user),
            },
        );
        let mine = rec.consents.iter().find(|x| x.user == actor.user);
        if mine.is_some_and(|x| x.decision == Decision::Pending) {
            self.send_to_user(
                &actor.user,
                ServerMessage::ConsentRequest {
                    consultation: consultation.0.clone(),
                    recording: rec.id.clone(),
                },
            );
        }
        if actor.role == Role::Doctor {
            for x in &rec.consents {
                let decision = match x.decision {
                    Decision::Pending => "pending",
                    Decision::Granted => "granted",
                    Decision::Refused => "refused",
                };
                self.send_to_user(
                    &actor.user,
                    ServerMessage::ConsentStatus {
                        consultation: consultation.0.clone(),
                        recording: rec.id.clone(),
                        user: x.user.0.clone(),
                        display_name: self.names.get(&x.user).cloned().unwrap_or_else(|| x.user.0.clone()),
                        decision: decision.to_owned(),
                    },
                );
            }
        }
    }

    fn recording_status_to_all(&self, consultation: &ConsultationId) {
        let Some(c) = self.engine.consultation(consultation) else {
            return;
        };
        let Some(rec) = c.recordings.last() else {
            return;
        };
        for seat in c.seats.iter().filter(|s| s.admitted) {
            self.send_to_user(
                &seat.user,
                ServerMessage::RecordingStatus {
                    consultation: consultation.0.clone(),
                    recording: rec.id.clone(),
                    active: rec.stopped_at.is_none(),
                    recorded: rec.records(&seat.user),
                },
            );
        }
    }

    fn consent_status_to_doctors(
        &self,
        consultation: &ConsultationId,
        recording: &str,
        user: &UserId,
        decision: &str,
    ) {
        let Some(c) = self.engine.consultation(consultation) else {
            return;
        };
        let display_name = self.names.get(user).cloned().unwrap_or_else(|| user.0.clone());
        self.send_to_clinic_doctors(
            &c.clinic,
            ServerMessage::ConsentStatus {
                consultation: consultation.0.clone(),
                recording: recording.to_owned(),
                user: user.0.clone(),
                display_name,
                decision: decision.to_owned(),
            },
        );
    }

    fn webhook(&self, event_type: &str, now: Millis, consultation: &ConsultationId) {
        let Some(c) = self.engine.consultation(consultation) else {
            return;
        };
        let participants: Vec<_> = c
            .seats
            .iter()
            .map(|s| json!({ "user_id": s.user.0, "role": s.role.as_str() }))
            .collect();
        self.webhooks.send(
            event_type,
            now.0,
            json!({
                "consultation": c.id.0,
                "clinic": c.clinic.0,
                "appointment": c.appointment.0,
                "started_at_ms": c.started_at.map(|t| t.0),
                "ended_at_ms": c.ended_at.map(|t| t.0),
                "participants": participants,
            }),
        );
    }

    fn invitation_status(
        &self,
        clinic: &ClinicId,
        invitation: &InvitationId,
        consultation: &ConsultationId,
        patient: &UserId,
        status: &str,
    ) {
        self.send_to_clinic_doctors(
            clinic,
            ServerMessage::InvitationStatus {
                invitation: invitation.0.clone(),
                consultation: consultation.0.clone(),
                patient: patient.0.clone(),
                status: status.to_owned(),
            },
        );
    }

    /// Fresh queue to the clinic's doctors and fresh places to its waiting patients.
    fn broadcast_clinic(&self, now: Millis, clinic: &ClinicId) {
        self.send_to_clinic_doctors(clinic, self.queue_message(now, clinic));
        for patient in self.engine.waiting_patients(clinic) {
            if let Some(view) = self.waiting_message(now, &patient) {
                self.send_to_user(&patient, view);
            }
        }
    }

    /// On connect: what this user should see right away.
    fn push_views_to(&self, actor: &Actor, now: Millis) {
        match actor.role {
            Role::Doctor => {
                for clinic in &actor.clinics {
                    self.send_to_user(&actor.user, self.queue_message(now, clinic));
                }
            }
            Role::Patient => {
                if let Some(view) = self.waiting_message(now, &actor.user) {
                    self.send_to_user(&actor.user, view);
                }
            }
            _ => {}
        }
    }

    /// For a companion: the consultation under way for the appointment they accompany.
    fn open_consultation_for(&self, actor: &Actor) -> Option<ServerMessage> {
        if actor.role != Role::Companion {
            return None;
        }
        let appointment = actor.appointment.as_ref()?;
        let c = self
            .engine
            .consultations_of(appointment)
            .find(|c| c.state == huizhen_signaling::clinic::ConsultationState::InProgress)?;
        Some(ServerMessage::ConsultationOpen {
            consultation: c.id.0.clone(),
        })
    }

    fn queue_message(&self, now: Millis, clinic: &ClinicId) -> ServerMessage {
        let patients = self
            .engine
            .queue_rows(now, clinic)
            .into_iter()
            .map(|r| QueueEntryInfo {
                display_name: self.names.get(&r.patient).cloned().unwrap_or_else(|| "Patient".into()),
                patient: r.patient.0,
                appointment: r.appointment.0,
                slot_start_ms: r.slot_start.0,
                waited_ms: r.waited_ms,
                ringing: r.ringing,
                disconnected: r.disconnected,
                invitation: r.invitation.map(|i| i.0),
            })
            .collect();
        let status = self
            .engine
            .clinic_doctor_status(clinic)
            .map(status_str)
            .unwrap_or("away");
        ServerMessage::Queue {
            clinic: clinic.0.clone(),
            patients,
            doctor_status: status.to_owned(),
        }
    }

    fn waiting_message(&self, now: Millis, patient: &UserId) -> Option<ServerMessage> {
        let view = self.engine.patient_view(now, patient)?;
        Some(ServerMessage::Waiting {
            clinic: view.clinic.0,
            position: view.position.map(|p| p as u32),
            estimated_wait_ms: view.estimated_wait_ms,
            doctor_status: status_str(view.doctor_status).to_owned(),
        })
    }

    fn send_to_user(&self, user: &UserId, message: ServerMessage) {
        for s in self.sockets.iter().filter(|s| &s.actor.user == user) {
            if s.events.try_send(message.clone()).is_err() {
                warn!(session = s.session, "clinic notification dropped: socket queue full");
            }
        }
    }

    fn send_to_clinic_doctors(&self, clinic: &ClinicId, message: ServerMessage) {
        for s in self
            .sockets
            .iter()
            .filter(|s| s.actor.role == Role::Doctor && s.actor.has_clinic(clinic))
        {
            if s.events.try_send(message.clone()).is_err() {
                warn!(session = s.session, "clinic notification dropped: socket queue full");
            }
        }
    }

    fn audit(
        &self,
        now: Millis,
        kind: &str,
        actor: Option<String>,
        subject: Option<String>,
        details: serde_json::Value,
    ) {
        let store = self.store.clone();
        let result = blocking(|| store.append_audit(now.0, kind, actor, subject, details));
        if let Err(e) = result {
            // The audit trail is a legal record: losing an entry must be loud.
            tracing::error!(error = %e, kind, "AUDIT ENTRY NOT WRITTEN");
        }
    }

    fn persist(&self) {
        let snapshot = self.engine.snapshot();
        let store = self.store.clone();
        if let Err(e) = blocking(|| store.save_snapshot(&snapshot)) {
            tracing::error!(error = %e, "clinic state not persisted");
        }
    }
}

fn join_reply(outcome: JoinOutcome) -> CommandReply {
    match outcome {
        JoinOutcome::Admitted { room, may_publish } => CommandReply::EnterRoom { room, may_publish },
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
