//! How often a client gets transport-wide congestion control feedback for what it sends us.
//!
//! The feedback travels on the client's *downlink*, the same link the SFU forwards media on.
//! str0m sends it every 50 ms, which costs ~15 kbit/s while a client publishes a camera
//! (~200 packets a second): nothing on a good line, an eighth of a 120 kbit/s link that barely
//! carries the call's voices (measured in the Chromium harness: ~25 kbit/s of the weak
//! participant's ~80 kbit/s downlink was RTCP and SRTP overhead, and the audio lost ~5 % in
//! steady state). libwebrtc's receiver (`RemoteEstimatorProxy`) keeps the feedback near
//! [`SHARE`] of the link that carries it, between [`MIN_INTERVAL`] and [`MAX_INTERVAL`]; this
//! is the same rule, on the SFU's estimate of that downlink. Its own estimator (Chrome's, for
//! the uplink) works with feedback every 250 ms: that is libwebrtc's own upper bound.

use std::time::Duration;

/// Shortest interval (str0m's and libwebrtc's default).
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Longest interval (libwebrtc's bound).
pub const MAX_INTERVAL: Duration = Duration::from_millis(250);

/// Share of the downlink the feedback may take.
pub const SHARE: f64 = 0.05;

/// Bits of one report on the wire, libwebrtc's figure: IPv4 (20) + UDP (8) + SRTP (10) + an
/// average report (30 bytes).
pub const REPORT_BITS: f64 = (20.0 + 8.0 + 10.0 + 30.0) * 8.0;

/// The interval for a downlink estimated at `downlink` bit/s (wire); `None` (no estimate yet)
/// keeps the default.
pub fn interval(downlink: Option<u64>) -> Duration {
    let Some(bps) = downlink else {
        return MIN_INTERVAL;
    };
    let budget = SHARE * bps as f64;
    if budget <= REPORT_BITS / MAX_INTERVAL.as_secs_f64() {
        return MAX_INTERVAL;
    }
    // Whole milliseconds, so that a wobbling estimate does not change it every round.
    let ms = (REPORT_BITS / budget * 1000.0).round() as u64;
    Duration::from_millis(ms).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_takes_about_five_percent_of_a_narrow_downlink_and_the_default_on_a_wide_one() {
        assert_eq!(interval(None), MIN_INTERVAL);
        assert_eq!(interval(Some(5_000_000)), MIN_INTERVAL);
        assert_eq!(interval(Some(300_000)), MIN_INTERVAL);
        // 120 kbit/s: 6 kbit/s for reports of 544 bits.
        assert_eq!(interval(Some(120_000)), Duration::from_millis(91));
        assert_eq!(interval(Some(50_000)), Duration::from_millis(218));
        assert_eq!(interval(Some(20_000)), MAX_INTERVAL);
        assert_eq!(interval(Some(0)), MAX_INTERVAL);
    }
}
