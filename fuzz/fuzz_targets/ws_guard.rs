#![no_main]
//! The WebSocket stranger guard (`huizhen::http::ws_guard::FrameScan`): what an unauthenticated
//! socket sends, cut into reads anywhere, is judged the same however it arrives, and no more
//! than the budget is ever let through (its frame headers are parsed from untrusted bytes).

use huizhen::http::ws_guard::FrameScan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Vec<u8>, Vec<u8>)| {
    let (budget, cuts, stream) = input;
    let budget = u64::from(budget);
    let whole = FrameScan::new(budget).feed(&stream);

    // The same bytes in reads of the sizes `cuts` gives (1..=256 bytes each, cycling).
    let mut scan = FrameScan::new(budget);
    let mut rest = &stream[..];
    let mut chunked = Ok(());
    let mut sizes = cuts.iter().map(|c| usize::from(*c) + 1).cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (read, after) = rest.split_at(n);
        rest = after;
        chunked = scan.feed(read);
        if chunked.is_err() {
            break;
        }
    }
    if stream.len() as u64 <= budget {
        // Within the budget only the frames decide, whatever the reads.
        assert_eq!(whole, chunked, "budget {budget}, reads {cuts:?}");
    } else {
        // Over it, both refuse (perhaps for a frame announced earlier).
        assert!(whole.is_err() && chunked.is_err(), "{} bytes let through a budget of {budget}", stream.len());
    }
});
