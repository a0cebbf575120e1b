//! Access to `rtc` types that `webrtc` 0.21 uses in its API but does not re-export.
//!
//! `webrtc` 0.21 is a thin async layer over the sans-I/O `rtc` crate, and several types its
//! public methods take — `rtp::Packet`, `RtpCodecKind`, `RTCRtpEncodingParameters`,
//! `NetworkType`, `MulticastDnsMode` — live in `rtc` (or its sub-crates) and are not
//! re-exported. `rtc` is not a dev-dependency of this package, so these helpers obtain values
//! of those types by type inference from the signatures of functions that *are* reachable
//! (`fn` items coerce to `fn` pointers whose argument types we leave to the compiler).
//!
//! If `rtc = "0.21"` is ever added to `[dev-dependencies]` (it is already in Cargo.lock as a
//! dependency of `webrtc`), every helper here can be replaced by a plain `rtc::...` path.

use std::fmt::{Debug, Display};

/// `Default::default()` of the argument type of a one-argument function, e.g. of a tuple
/// variant constructor: `default_arg1(TrackRemoteEvent::OnRtpPacket)` is an `rtp::Packet`.
pub fn default_arg1<A: Default, R>(_f: fn(A) -> R) -> A {
    A::default()
}

/// `Default::default()` of the fifth argument type of a five-argument function:
/// `default_arg5_of5(MediaStreamTrack::new)` is an empty `Vec<RTCRtpEncodingParameters>`.
pub fn default_arg5_of5<A, B, C, D, E: Default, R>(_f: fn(A, B, C, D, E) -> R) -> E {
    E::default()
}

/// `Default::default()` of the second argument type of a four-argument function:
/// `default_arg2_of4(MediaEngine::register_header_extension)` is an
/// `RTCRtpHeaderExtensionCapability`.
pub fn default_arg2_of4<A, B: Default, C, D, R>(_f: fn(A, B, C, D) -> R) -> B {
    B::default()
}

/// `[NetworkType::Udp4]` for `SettingEngineBuilder::with_network_types`: ICE then neither
/// gathers nor pairs with anything but UDP over IPv4 (the server's ICE-TCP candidate is ignored).
///
/// `NetworkType` implements `From<u8>` with `1 => Udp4`; the `Display` check guards against a
/// future renumbering.
pub fn udp4_only<S, T: From<u8> + Display>(_with_network_types: fn(S, Vec<T>) -> S) -> Vec<T> {
    let udp4 = T::from(1);
    assert_eq!(
        udp4.to_string(),
        "udp4",
        "webrtc-rs NetworkType numbering changed"
    );
    vec![udp4]
}

/// `MulticastDnsMode::Disabled` for `SettingEngineBuilder::with_multicast_dns_mode`.
///
/// The enum has no constructor reachable without naming it, so the value is made from its
/// discriminant. `MulticastDnsMode` is a field-less `#[derive(Default)]` enum declared as
/// `Disabled, QueryOnly (default), QueryAndGather`; the checks below confirm, on the real type,
/// that it is one byte, that its tag is the declared discriminant (the default `QueryOnly` is
/// stored as 1), and that 0 formats as `Disabled`, before the value is handed out. Without
/// this the driver binds 0.0.0.0:5353 and joins the mDNS multicast group (an IGMP report on
/// the default interface), which these loopback-only tests must not do.
pub fn mdns_disabled<S, M: Copy + Debug + Default + PartialEq>(
    _with_multicast_dns_mode: fn(S, M) -> S,
) -> M {
    assert_eq!(
        std::mem::size_of::<M>(),
        1,
        "MulticastDnsMode layout changed"
    );
    let default = M::default();
    assert_eq!(
        format!("{default:?}"),
        "QueryOnly",
        "MulticastDnsMode default changed"
    );
    // SAFETY: reading the byte of a valid one-byte value is always sound.
    let default_tag: u8 = unsafe { std::mem::transmute_copy(&default) };
    assert_eq!(
        default_tag, 1,
        "MulticastDnsMode is not tagged by its discriminant"
    );
    // SAFETY: `M` is a one-byte field-less enum tagged by its declared discriminant (checked
    // above: the second variant is stored as 1), so 0 is the tag of its first variant.
    let disabled: M = unsafe { std::mem::transmute_copy(&0u8) };
    assert_eq!(
        format!("{disabled:?}"),
        "Disabled",
        "MulticastDnsMode variants changed"
    );
    assert!(disabled != default);
    disabled
}
