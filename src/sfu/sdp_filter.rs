//! Edits to the server's SDP offers that str0m has no switch for.
//!
//! Transport-wide congestion control (TWCC) feedback lets a *sender* estimate bandwidth. The
//! server needs it from nobody: it forwards without adapting bitrates, so feedback on what it
//! sends only costs str0m a send-history per participant (~90 KiB once 1,000 packets have gone
//! out) and work per feedback packet, and costs the subscriber's browser the feedback itself.
//! Publishers still get the server's TWCC feedback for what *they* send (their m-lines keep
//! the extension), which their bandwidth estimation needs.

/// The header extension URI of transport-wide sequence numbers.
const TWCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// `offer` with the TWCC header extension removed from every m-section the server only
/// sends on (`a=sendonly`); other sections and lines are kept byte for byte.
pub fn without_send_only_twcc(offer: &str) -> String {
    let mut out = String::with_capacity(offer.len());
    let mut section: Vec<&str> = Vec::new();
    for line in offer.split_inclusive('\n') {
        if line.starts_with("m=") {
            flush(&mut out, &mut section);
        }
        section.push(line);
    }
    flush(&mut out, &mut section);
    out
}

/// Appends one section (session part or m-section) to `out`, filtered.
fn flush(out: &mut String, section: &mut Vec<&str>) {
    let is_media = section.first().is_some_and(|l| l.starts_with("m="));
    let send_only = is_media && section.iter().any(|l| l.trim_end() == "a=sendonly");
    for line in section.drain(..) {
        if send_only && line.starts_with("a=extmap:") && line.trim_end().ends_with(TWCC_URI) {
            continue;
        }
        out.push_str(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
o=- 1 2 IN IP4 0.0.0.0\r\n\
a=group:BUNDLE 0 1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
a=mid:0\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=recvonly\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
a=mid:1\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=sendonly\r\n";

    #[test]
    fn drops_twcc_only_where_the_server_only_sends() {
        let out = without_send_only_twcc(OFFER);
        let sections: Vec<&str> = out.split("m=").collect();
        assert_eq!(sections.len(), 3);
        assert!(
            sections[1].contains("transport-wide-cc"),
            "receiving section keeps it"
        );
        assert!(
            !sections[2].contains("transport-wide-cc"),
            "send-only section loses it"
        );
        assert!(sections[2].contains("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"));
        assert_eq!(out.len(), OFFER.len() - "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n".len());
    }

    #[test]
    fn leaves_other_text_alone() {
        let plain = "v=0\nm=audio 9 RTP/AVP 0\na=sendrecv\na=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\n";
        assert_eq!(without_send_only_twcc(plain), plain);
        assert_eq!(without_send_only_twcc(""), "");
    }
}
