//! One subscription's layer switching and the rewriting that makes it invisible.
//!
//! A subscriber receives one layer of a simulcast video at a time. The allocator sets a
//! *target*; the switcher keeps forwarding the current layer until a keyframe of the target
//! arrives, then forwards the target from that keyframe on (a decoder cannot start in the
//! middle of a picture sequence). Pausing stops at once; resuming waits for a keyframe like a
//! switch.
//!
//! The subscriber must see one continuous stream whatever the layer: [`Rewriter`] gives every
//! forwarded packet sequence numbers that follow the last one sent, RTP timestamps that move
//! forward by the time that passed, and (for VP8) picture ids and TL0PICIDX that continue, so
//! the decoder's frame reference checks never see a jump. It restarts its offsets whenever the
//! source changes (another layer, a restarted encoder, or the same layer after a pause), so a
//! pause leaves no gap the subscriber would try to repair with NACKs.

use std::time::Instant;

use str0m::rtp::{Vp8Descriptor, Vp8Patch};

use super::forwarder::SeqRewriter;
use super::temporal::{Temporal, TemporalFilter};

/// What to do with one packet of the subscribed track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Forward,
    /// Forward it: it starts the target layer (the switch happened on it).
    Switched,
    /// Do not forward it.
    Drop,
}

/// The layer a subscription forwards and the one it is switching to.
#[derive(Debug, Default, Clone, Copy)]
pub struct LayerSwitch {
    /// Layer being forwarded (`None`: nothing yet, or paused).
    pub current: Option<usize>,
    /// Layer wanted (`None`: paused or hidden).
    pub target: Option<usize>,
}

impl LayerSwitch {
    /// A keyframe of the target layer is needed (switch or resume pending).
    pub fn waiting(&self) -> bool {
        self.target.is_some() && self.target != self.current
    }

    /// Set a new target; pausing takes effect at once.
    /// Set a new target. Pausing takes effect at once, and so does going down: the layer
    /// that no longer fits stops now and the subscriber sees a still picture until the
    /// lower layer's keyframe, rather than the link being flooded for that time (a
    /// downgrade from a 1.7 Mbit/s layer on a 300 kbit/s link is ten times too much, and
    /// the loss it causes crushes the bandwidth estimate). Going up keeps the current layer
    /// until the higher one's keyframe.
    pub fn set_target(&mut self, target: Option<usize>) {
        self.target = target;
        match (target, self.current) {
            (None, _) => self.current = None,
            (Some(t), Some(c)) if t < c => self.current = None,
            _ => {}
        }
    }

    /// Decide about a packet of `layer`; `keyframe_start` if it begins a keyframe.
    pub fn decide(&mut self, layer: usize, keyframe_start: bool) -> Verdict {
        match self.target {
            None => Verdict::Drop,
            Some(t) if t == layer && self.current != Some(t) => {
                if keyframe_start {
                    self.current = Some(t);
                    Verdict::Switched
                } else {
                    Verdict::Drop
                }
            }
            Some(_) if self.current == Some(layer) => Verdict::Forward,
            Some(_) => Verdict::Drop,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct TimeBase {
    /// `out = in + offset` (wrapping).
    offset: u32,
    last_out: u32,
    last_at: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct Vp8Base {
    /// `out = in + offset` modulo the field width.
    pid_offset: u16,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
    started: bool,
}

/// Rewrites one subscription's RTP numbering so layer switches and pauses are seamless.
#[derive(Debug, Default, Clone)]
pub struct Rewriter {
    seq: SeqRewriter,
    time: Option<TimeBase>,
    /// The source (SSRC) the time and VP8 offsets belong to; `None` after a restart.
    source: Option<u32>,
    vp8: Vp8Base,
    /// The temporal layers this subscriber gets (see [`super::temporal`]).
    pub temporal: TemporalFilter,
}

/// Why a packet is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Older than the current run (reordered across a subscribe, a switch or a resume).
    Old,
    /// Its picture is above the subscriber's temporal layer.
    Temporal,
}

/// One packet's rewritten fields.
#[derive(Debug, Clone, Copy)]
pub struct Rewritten {
    /// Outgoing extended sequence number.
    pub seq: u64,
    /// Outgoing RTP timestamp.
    pub rtp_time: u32,
    /// VP8 descriptor rewrite, if the payload is VP8 with a picture id.
    pub vp8: Option<Vp8Patch>,
}

impl Rewriter {
    /// The next packet starts a new run (a switch, or forwarding again after a pause):
    /// offsets are recomputed from it so the output continues where it stopped.
    pub fn restart(&mut self) {
        self.source = None;
        self.seq.restart();
        self.vp8.started = false;
        self.temporal.restart();
    }

    /// Rewrite a packet of source `ssrc` (`clock_rate` Hz) received at `now`. `vp8` is its
    /// parsed VP8 descriptor, if the track is VP8.
    pub fn rewrite(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq_in: u64,
        rtp_time: u32,
        clock_rate: u32,
        vp8: Option<&Vp8Descriptor>,
    ) -> Result<Rewritten, Skip> {
        if self.source != Some(ssrc) {
            // Another source numbers its packets and pictures afresh.
            self.temporal.restart();
        }
        let (seq_in, picture_id) = match self.temporal.filter(seq_in, vp8) {
            Temporal::Drop => return Err(Skip::Temporal),
            Temporal::Forward { seq, picture_id } => (seq, picture_id),
        };
        let seq = self.seq.rewrite(ssrc, seq_in).ok_or(Skip::Old)?;
        if self.source != Some(ssrc) {
            self.source = Some(ssrc);
            self.vp8.started = false;
            let out = match self.time {
                // Continue from the last timestamp sent, advanced by the time that passed
                // (at least one tick so two frames never share a timestamp).
                Some(t) => {
                    let elapsed = now.saturating_duration_since(t.last_at).as_secs_f64();
                    let ticks = ((elapsed * f64::from(clock_rate)).round() as u32).max(1);
                    t.last_out.wrapping_add(ticks)
                }
                None => rtp_time,
            };
            self.time = Some(TimeBase {
                offset: out.wrapping_sub(rtp_time),
                last_out: out,
                last_at: now,
            });
        }
        let time = self.time.as_mut().expect("set above");
        let rtp_out = rtp_time.wrapping_add(time.offset);
        if (rtp_out.wrapping_sub(time.last_out) as i32) > 0 {
            time.last_out = rtp_out;
            time.last_at = now;
        }
        let vp8 = vp8.and_then(|d| self.vp8_patch(d, picture_id));
        Ok(Rewritten {
            seq,
            rtp_time: rtp_out,
            vp8,
        })
    }

    /// `picture_id`: the picture id with dropped temporal layers taken out, where the
    /// temporal filter renumbered it.
    fn vp8_patch(&mut self, d: &Vp8Descriptor, picture_id: Option<u16>) -> Option<Vp8Patch> {
        let raw = d.picture_id()?;
        let pid = picture_id.unwrap_or(raw);
        // Picture ids are 15-bit (Chrome's width); a 7-bit one that would need more is left
        // alone below.
        let mask: u16 = 0x7fff;
        let v = &mut self.vp8;
        if !v.started {
            v.started = true;
            let next_pid = v.last_pid.map_or(pid, |p| p.wrapping_add(1) & mask);
            v.pid_offset = next_pid.wrapping_sub(pid) & mask;
            if let Some(tl0) = d.tl0_pic_idx() {
                let next = v.last_tl0.map_or(tl0, |t| t.wrapping_add(1));
                v.tl0_offset = next.wrapping_sub(tl0);
            }
        }
        let out_pid = pid.wrapping_add(v.pid_offset) & mask;
        let mut patch = d.patch();
        if out_pid != raw {
            patch = patch.picture_id(out_pid);
        }
        v.last_pid = Some(out_pid);
        if let Some(tl0) = d.tl0_pic_idx() {
            let out = tl0.wrapping_add(v.tl0_offset);
            v.last_tl0 = Some(out);
            if out != tl0 {
                patch = patch.tl0_pic_idx(out);
            }
        }
        // A 7-bit picture id whose rewritten value needs 15 bits cannot be patched: left
        // alone (the decoder recovers at the keyframe the switch started on).
        patch.build().ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A VP8 payload: descriptor with a 15-bit picture id, TL0PICIDX and TID, then a frame tag.
    fn vp8(pid: u16, tl0: u8, start: bool, key: bool) -> Vec<u8> {
        let b0 = 0x80 | if start { 0x10 } else { 0 };
        vec![
            b0,
            0xe0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            0x20,
            if key { 0x50 } else { 0x51 },
            0x2a,
            0,
        ]
    }

    #[test]
    fn a_switch_waits_for_a_keyframe_of_the_target_and_a_pause_is_immediate() {
        let mut s = LayerSwitch::default();
        s.set_target(Some(0));
        assert_eq!(s.decide(0, false), Verdict::Drop, "no keyframe yet");
        assert_eq!(s.decide(0, true), Verdict::Switched);
        assert_eq!(s.decide(0, false), Verdict::Forward);
        assert_eq!(s.decide(2, true), Verdict::Drop, "not the target");
        s.set_target(Some(2));
        assert!(s.waiting());
        assert_eq!(
            s.decide(0, false),
            Verdict::Forward,
            "going up: the old layer until the switch"
        );
        assert_eq!(s.decide(2, false), Verdict::Drop);
        assert_eq!(s.decide(2, true), Verdict::Switched);
        assert_eq!(
            s.decide(0, false),
            Verdict::Drop,
            "the old layer is dropped after it"
        );
        assert!(!s.waiting());
        s.set_target(Some(0));
        assert_eq!(
            s.decide(2, false),
            Verdict::Drop,
            "going down: the old layer stops at once"
        );
        assert_eq!(s.decide(0, false), Verdict::Drop);
        assert_eq!(s.decide(0, true), Verdict::Switched);
        s.set_target(Some(2));
        assert_eq!(s.decide(2, true), Verdict::Switched);
        s.set_target(None);
        assert_eq!(s.decide(2, false), Verdict::Drop);
        assert_eq!(s.decide(2, true), Verdict::Drop, "paused");
        s.set_target(Some(2));
        assert_eq!(
            s.decide(2, false),
            Verdict::Drop,
            "a resume waits for a keyframe"
        );
        assert_eq!(s.decide(2, true), Verdict::Switched);
    }

    #[test]
    fn numbering_continues_across_a_switch_and_a_pause() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        // Layer q: ssrc 1, seq 100.., ts 9000.. (30 fps at 90 kHz).
        let a = r.rewrite(t0, 1, 100, 9_000, 90_000, None).unwrap();
        let b = r
            .rewrite(t0 + Duration::from_millis(33), 1, 101, 12_000, 90_000, None)
            .unwrap();
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(b.rtp_time.wrapping_sub(a.rtp_time), 3_000);
        // Switch to layer f: ssrc 2, unrelated numbers.
        r.restart();
        let c = r
            .rewrite(
                t0 + Duration::from_millis(66),
                2,
                50_000,
                4_000_000_000,
                90_000,
                None,
            )
            .unwrap();
        assert_eq!(c.seq, 3, "sequence numbers continue");
        assert_eq!(c.rtp_time.wrapping_sub(b.rtp_time), 2_970, "33 ms later");
        let d = r
            .rewrite(
                t0 + Duration::from_millis(100),
                2,
                50_001,
                4_000_003_000,
                90_000,
                None,
            )
            .unwrap();
        assert_eq!(
            d.rtp_time.wrapping_sub(c.rtp_time),
            3_000,
            "source spacing kept"
        );
        // Paused for a second on the same source, then resumed: no gap in seq.
        r.restart();
        let e = r
            .rewrite(
                t0 + Duration::from_millis(1100),
                2,
                50_031,
                4_000_093_000,
                90_000,
                None,
            )
            .unwrap();
        assert_eq!(e.seq, 5, "no gap for the subscriber to NACK");
        assert_eq!(
            e.rtp_time.wrapping_sub(d.rtp_time),
            90_000,
            "one second later"
        );
        assert!(
            r.rewrite(t0, 2, 50_030, 0, 90_000, None).is_err(),
            "older than the run"
        );
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_switch() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        let p1 = vp8(1000, 7, true, true);
        let d1 = Vp8Descriptor::parse(&p1).unwrap();
        let w1 = r.rewrite(t0, 1, 10, 0, 90_000, Some(&d1)).unwrap();
        let p2 = vp8(1001, 8, true, false);
        let d2 = Vp8Descriptor::parse(&p2).unwrap();
        r.rewrite(t0, 1, 11, 3000, 90_000, Some(&d2)).unwrap();
        assert!(w1.vp8.is_some());
        r.restart();
        // The other layer's picture ids are elsewhere (32000, tl0 200): rewritten to 1002, 9.
        let p3 = vp8(32_000, 200, true, true);
        let d3 = Vp8Descriptor::parse(&p3).unwrap();
        let w3 = r.rewrite(t0, 2, 500, 77, 90_000, Some(&d3)).unwrap();
        let expected = Vp8Descriptor::parse(&vp8(1002, 9, true, true)).unwrap();
        let built = d3.patch().picture_id(1002).tl0_pic_idx(9).build().unwrap();
        assert_eq!(w3.vp8, Some(built));
        assert_eq!(expected.picture_id(), Some(1002));
        // Picture ids wrap at 15 bits.
        let p4 = vp8(0x7fff, 201, true, false);
        let d4 = Vp8Descriptor::parse(&p4).unwrap();
        let w4 = r.rewrite(t0, 2, 501, 3077, 90_000, Some(&d4)).unwrap();
        let wrapped = (0x7fffu16.wrapping_sub(32_000).wrapping_add(1002)) & 0x7fff;
        assert_eq!(
            w4.vp8,
            Some(
                d4.patch()
                    .picture_id(wrapped)
                    .tl0_pic_idx(10)
                    .build()
                    .unwrap()
            )
        );
    }
}
