//! Keeping a participant whose signaling socket dropped, and taking it back.
//!
//! A patient walking from Wi-Fi to 4G loses the WebSocket long before ICE notices anything,
//! and an elderly patient's weak link drops sockets that the media path survives. Leaving the
//! room at once would end a visit that was still carrying sound and picture, and a new join
//! renegotiates and re-subscribes everything (new ids, new mids, a black tile meanwhile).
//!
//! So the socket's end only *detaches* the participant: its media session, tracks,
//! subscriptions and allocation stay as they are (media keeps flowing if ICE is alive), its
//! signaling messages are dropped (the edge has no socket to put them on), and the liveness
//! sweep removes it once [`SfuConfig::resume_grace`](super::SfuConfig) has passed. A new
//! socket that presents the participant's resume token (checked in the signaling layer)
//! *resumes* it: it gets the state as it is now, not a replay of what it missed
//! ([`ServerMessage::Resumed`]), and a server offer still waiting for its answer is sent again.

use std::time::Instant;

use huizhen_signaling::protocol::{ParticipantInfo, ResumeGrant, ResumedTrack, ServerMessage};
use tracing::info;

use super::participant::{LeaveReason, TrackOut, TrackOutState};

/// The `bye` reason for a socket whose participant another socket resumed.
pub const BYE_RESUMED_ELSEWHERE: &str = "resumed_elsewhere";
use super::allocation::{Allocator, Target};
use super::{track_kind, ParticipantId, Sfu, SfuError, TrackId};

impl Sfu {
    /// `id`'s signaling socket dropped: keep it for the resume grace (or remove it now when
    /// the grace is zero). Idempotent.
    pub fn detach(&mut self, now: Instant, id: ParticipantId) {
        if self.config.resume_grace.is_zero() {
            self.leave(now, id, LeaveReason::SignalingClosed);
            return;
        }
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        if p.detached_since.is_none() {
            p.detached_since = Some(now);
            self.metrics.detached.inc();
            info!(participant = %id, "signaling detached; media kept for resume");
        }
    }

    /// A new socket took `id` back: it hears the current state ([`ServerMessage::Resumed`],
    /// carrying `grant`, the token for the next time), then the pending offer if one waits.
    /// Also takes over from a socket that has not been seen to drop yet (the signaling layer
    /// tells that one it was replaced).
    pub fn resume(
        &mut self,
        _now: Instant,
        id: ParticipantId,
        grant: ResumeGrant,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        if p.detached_since.take().is_some() {
            self.metrics.detached.dec();
        }
        self.metrics.resumes.inc();
        let p = &self.participants[&id];
        let room = self.room_members.get(&p.room);
        let participants: Vec<ParticipantInfo> = room
            .map(|r| r.members.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|m| **m != id)
            .filter_map(|m| self.participants.get(m))
            .map(|o| ParticipantInfo {
                id: o.id.to_string(),
                display_name: o.display_name.clone(),
            })
            .collect();
        let active_speaker = room
            .and_then(|r| r.speaker.current())
            .map(|s| s.to_string());
        let room_name = self
            .rooms
            .iter()
            .find(|(_, key)| **key == p.room)
            .map(|(name, _)| name.clone())
            .unwrap_or_default();
        // What the client has been told and still holds: the open tracks. Those being offered
        // are announced again with the offer below; those being stopped were announced gone.
        let tracks: Vec<ResumedTrack> = p
            .tracks_out
            .iter()
            .filter_map(|t| match t.state {
                TrackOutState::Open(mid) => Some(ResumedTrack {
                    participant_id: t.publisher.to_string(),
                    track_id: t.track.to_string(),
                    mid: mid.to_string(),
                    kind: track_kind(t.kind),
                    source: t.source,
                }),
                _ => None,
            })
            .collect();
        let paused = paused_tracks(&p.allocator, p.tracks_out.iter().map(|t| (t.track, t)));
        let again: Vec<ServerMessage> = if p.pending.is_some() {
            let added = p.tracks_out.iter().filter_map(|t| match t.state {
                TrackOutState::Negotiating(mid) if !t.stop_when_open => Some(t.announcement(mid)),
                _ => None,
            });
            added
                .chain(p.offer_sdp.clone().map(|sdp| ServerMessage::Offer { sdp }))
                .collect()
        } else {
            Vec::new()
        };
        info!(participant = %id, "signaling resumed");
        self.signal(
            id,
            ServerMessage::Resumed {
                participant_id: id.to_string(),
                room: room_name,
                participants,
                tracks,
                paused,
                active_speaker,
                resume: grant,
                ice_servers: Vec::new(),
            },
        );
        for m in again {
            self.signal(id, m);
        }
        Ok(())
    }
}

/// The ids of the tracks the allocator holds paused (announced with `track_paused`).
fn paused_tracks<'a>(
    allocator: &Allocator,
    tracks: impl Iterator<Item = (TrackId, &'a TrackOut)>,
) -> Vec<String> {
    tracks
        .filter(|(id, t)| {
            matches!(t.state, TrackOutState::Open(_)) && allocator.target(*id) == Target::Paused
        })
        .map(|(id, _)| id.to_string())
        .collect()
}
