//! Any byte string either decodes into frames or returns an error.
#![no_main]

use astranet_engine::proto::frame;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    for _ in 0..=data.len() {
        match frame::decode(&mut buf, 65536) {
            Ok(Some(frame::Decoded::Frame(f))) => {
                // What decodes re-encodes to something that decodes to the same frame.
                let mut again = BytesMut::new();
                frame::encode(&f, &mut again);
                match frame::decode(&mut again, 1 << 24) {
                    Ok(Some(frame::Decoded::Frame(g))) => assert_eq!(f, g),
                    other => panic!("re-decode failed: {other:?}"),
                }
            }
            Ok(Some(frame::Decoded::Skipped)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
