//! Per-subscription RTP rewriting.
//!
//! A subscriber may start receiving a publisher's stream long after it began, when the
//! publisher's extended sequence number is past 65535. SRTP receivers start their rollover
//! counter at 0, so forwarding the publisher's numbers unchanged would make every packet fail
//! authentication. Each subscription therefore rebases sequence numbers so its first packet
//! is 1, and keeps them contiguous when the publisher's SSRC changes (a restarted encoder).

/// Rewrites publisher sequence numbers into a subscriber's number space.
#[derive(Debug, Default, Clone)]
pub struct SeqRewriter {
    /// `out = in - base`; `None` until the first packet.
    base: Option<i64>,
    /// Publisher SSRC the base belongs to.
    ssrc: u32,
    /// Highest sequence number handed out so far.
    highest_out: u64,
    /// Numbers up to this one belong to earlier runs: packets mapping there are refused.
    floor: u64,
}

impl SeqRewriter {
    /// The next packet starts a new run (a layer switch, or forwarding resumed after a
    /// pause): it is numbered right after the highest number sent, whatever its source.
    pub fn restart(&mut self) {
        self.base = None;
    }

    /// Map an incoming extended sequence number of stream `ssrc` to the outgoing one.
    ///
    /// Returns `None` for packets older than the start of the subscription (they arrived
    /// reordered across the subscribe and the subscriber never expected them).
    pub fn rewrite(&mut self, ssrc: u32, seq_in: u64) -> Option<u64> {
        let seq_in = seq_in as i64;
        let base = match self.base {
            Some(base) if self.ssrc == ssrc => base,
            _ => {
                // First packet, or a new source: continue right after the highest number sent.
                let base = seq_in - self.highest_out as i64 - 1;
                self.base = Some(base);
                self.floor = self.highest_out;
                self.ssrc = ssrc;
                base
            }
        };
        let out = seq_in - base;
        if out < 1 || out as u64 <= self.floor {
            return None;
        }
        let out = out as u64;
        self.highest_out = self.highest_out.max(out);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_one_and_follows_gaps_and_reorder() {
        let mut r = SeqRewriter::default();
        assert_eq!(r.rewrite(7, 70_000), Some(1));
        assert_eq!(r.rewrite(7, 70_002), Some(3));
        assert_eq!(r.rewrite(7, 70_001), Some(2));
        assert_eq!(r.rewrite(7, 69_999), None, "older than subscription start");
    }

    #[test]
    fn a_restart_continues_numbering_on_the_same_source_without_a_gap() {
        let mut r = SeqRewriter::default();
        assert_eq!(r.rewrite(1, 500), Some(1));
        assert_eq!(r.rewrite(1, 501), Some(2));
        r.restart();
        assert_eq!(r.rewrite(1, 900), Some(3));
        assert_eq!(r.rewrite(1, 899), None, "older than the new run");
        assert_eq!(r.rewrite(1, 901), Some(4));
    }

    #[test]
    fn ssrc_change_continues_numbering() {
        let mut r = SeqRewriter::default();
        assert_eq!(r.rewrite(1, 500), Some(1));
        assert_eq!(r.rewrite(1, 501), Some(2));
        assert_eq!(r.rewrite(2, 9), Some(3));
        assert_eq!(r.rewrite(2, 10), Some(4));
    }
}
