#![no_main]
//! Signaling: one WebSocket text frame from a client, as `http::ws` reads it.

use huizhen_signaling::protocol::{parse_client_message, request_id_of, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    let _ = request_id_of(frame);
    if let Ok(message) = parse_client_message(frame) {
        // What the server accepted survives its own serialisation unchanged.
        let json = serde_json::to_string(&message).expect("a client message serialises");
        let again = parse_client_message(&json).expect("a serialised client message parses");
        assert_eq!(again, message);
    }
    // Clients (the load generator, tests) parse the server's frames with the same types.
    if let Ok(message) = serde_json::from_str::<ServerMessage>(frame) {
        let _ = message.to_json_for(None);
    }
});
