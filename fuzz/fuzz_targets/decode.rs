//! Fuzz target: arbitrary bytes into `peer_protocol::decode` and into the frame `Codec`.
//!
//! Neither may panic. A payload that decodes must re-encode and decode to the same message, and
//! verifying any batch or frontier it carries must return rather than panic.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peer_protocol::{Codec, Message, decode, encode};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode(data) {
        check_decoded(message);
    }

    // The same bytes as a stream, arriving in chunks of a size taken from the first byte.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = Codec::new(64 * 1024);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(message)) => check_decoded(message),
                Ok(None) => break,
                // A decoding error ends the connection: stop feeding this stream.
                Err(_) => return,
            }
        }
    }
});

fn check_decoded(message: Message) {
    let payload = encode(&message).expect("a decoded message re-encodes");
    let again = decode(&payload).expect("a re-encoded message decodes");
    assert_eq!(again, message);
    match message {
        Message::Batch(batch) => {
            let _ = batch.verify();
        }
        Message::Frontier(frontier) => {
            let _ = frontier.verify();
        }
        _ => {}
    }
}
