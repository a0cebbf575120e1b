//! Dynacast: a publisher sends only the simulcast layers somebody would receive.
//!
//! A patient's uplink on weak 4G is as precious as anyone's downlink: when every subscriber
//! shows a camera as a thumbnail, its full-size layer (most of the ~2.3 Mbit/s of three layers)
//! is wasted, and when nobody shows it at all, so is the rest. The core tells the publisher
//! which layers to keep (`publish_layers`), and the browser client sets the other encodings
//! inactive.
//!
//! What a subscriber "would receive" is decided by its preferences, not by its bandwidth: a
//! layer is wanted when some subscriber shows the video and its tile is large enough for that
//! layer (the ladder up to that layer is kept too, as the fallback a falling estimate needs
//! at once). A layer above everyone's bandwidth stays on: the allocator can only upgrade to
//! a layer it measures, and a subscriber whose estimate recovers must not wait for the
//! publisher's encoder to start. This is LiveKit's rule (the maximum subscribed quality).
//! The recorder wants the top layer.
//!
//! Timing: a layer that becomes wanted is asked for at once (the subscriber waits for its
//! first keyframe anyway); a layer that stops being wanted is switched off only after
//! [`LAYER_OFF_DELAY`] without anyone wanting it, so a tile resized back and forth, or a
//! subscriber leaving and rejoining, does not make the encoder stop and restart.

use std::time::{Duration, Instant};

use super::allocation::MAX_LAYERS;

/// How long a layer must be unwanted before the publisher is asked to stop it.
pub const LAYER_OFF_DELAY: Duration = Duration::from_secs(3);

/// A set of layers, bit `i` for layer `i`.
pub type LayerMask = u8;

/// The mask of layers `0..=top`.
pub fn up_to(top: usize) -> LayerMask {
    let top = top.min(MAX_LAYERS - 1);
    ((1u16 << (top + 1)) - 1) as LayerMask
}

/// One published simulcast track's dynacast state.
#[derive(Debug, Clone, Default)]
pub struct Dynacast {
    /// What the publisher was last asked to send (`None`: nothing asked yet, it sends every
    /// layer it declared).
    sent: Option<LayerMask>,
    /// Per layer: since when it has been sent but unwanted.
    unwanted_since: [Option<Instant>; MAX_LAYERS],
}

impl Dynacast {
    /// What the publisher was last asked to send, if anything.
    pub fn sent(&self) -> Option<LayerMask> {
        self.sent
    }

    /// Fold in the layers wanted now (`wanted`, within the `declared` ones). Returns the new
    /// set to ask the publisher for when it changes.
    pub fn update(
        &mut self,
        now: Instant,
        declared: LayerMask,
        wanted: LayerMask,
    ) -> Option<LayerMask> {
        let wanted = wanted & declared;
        let current = self.sent.unwrap_or(declared) & declared;
        let mut next = current | wanted;
        for l in 0..MAX_LAYERS {
            let bit = 1 << l;
            if wanted & bit != 0 || current & bit == 0 {
                self.unwanted_since[l] = None;
                continue;
            }
            let since = *self.unwanted_since[l].get_or_insert(now);
            if now.saturating_duration_since(since) >= LAYER_OFF_DELAY {
                next &= !bit;
                self.unwanted_since[l] = None;
            }
        }
        if next == current {
            return None;
        }
        self.sent = Some(next);
        Some(next)
    }

    /// When the next layer is due to be switched off, if one waits for it.
    pub fn next_change(&self) -> Option<Instant> {
        self.unwanted_since
            .iter()
            .flatten()
            .map(|t| *t + LAYER_OFF_DELAY)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: LayerMask = 0b111;

    #[test]
    fn the_ladder_up_to_a_layer_is_kept() {
        assert_eq!(up_to(0), 0b001);
        assert_eq!(up_to(1), 0b011);
        assert_eq!(up_to(2), 0b111);
        assert_eq!(up_to(7), 0b111);
    }

    #[test]
    fn nothing_is_asked_while_everything_declared_is_wanted() {
        let now = Instant::now();
        let mut d = Dynacast::default();
        for s in 0..10 {
            assert_eq!(d.update(now + Duration::from_secs(s), ALL, ALL), None);
        }
        assert_eq!(d.sent(), None);
    }

    #[test]
    fn an_unwanted_layer_is_switched_off_after_the_delay_and_back_on_at_once() {
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        // Everyone shows a thumbnail: the top two layers wait out the delay.
        assert_eq!(d.update(t0, ALL, 0b001), None);
        assert_eq!(d.next_change(), Some(t0 + LAYER_OFF_DELAY));
        assert_eq!(d.update(t0 + Duration::from_secs(2), ALL, 0b001), None);
        assert_eq!(d.update(t0 + LAYER_OFF_DELAY, ALL, 0b001), Some(0b001));
        assert_eq!(d.next_change(), None);
        assert_eq!(d.update(t0 + Duration::from_secs(5), ALL, 0b001), None);
        // Someone enlarges the tile: the layers come back in the same round.
        assert_eq!(
            d.update(t0 + Duration::from_secs(6), ALL, 0b111),
            Some(0b111)
        );
        assert_eq!(d.update(t0 + Duration::from_secs(7), ALL, 0b111), None);
    }

    #[test]
    fn a_layer_wanted_again_within_the_delay_is_never_switched_off() {
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        assert_eq!(d.update(t0, ALL, 0b011), None);
        assert_eq!(d.update(t0 + Duration::from_secs(2), ALL, 0b111), None);
        // The clock starts again from the next time it is unwanted.
        assert_eq!(d.update(t0 + Duration::from_secs(4), ALL, 0b011), None);
        assert_eq!(d.update(t0 + Duration::from_secs(6), ALL, 0b011), None);
        assert_eq!(
            d.update(t0 + Duration::from_secs(7), ALL, 0b011),
            Some(0b011)
        );
    }

    #[test]
    fn nobody_watching_stops_every_layer_and_only_declared_layers_count() {
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        // A q+f publisher (layers 0 and 2).
        let declared = 0b101;
        assert_eq!(d.update(t0, declared, 0), None);
        assert_eq!(d.update(t0 + LAYER_OFF_DELAY, declared, 0), Some(0));
        // A thumbnail asks for layers 0..=1; only 0 exists.
        assert_eq!(
            d.update(t0 + Duration::from_secs(4), declared, up_to(1)),
            Some(0b001)
        );
    }
}
