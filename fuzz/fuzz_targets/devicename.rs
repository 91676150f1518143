//! The DEVICENAME parser (`ReaderConfig::parse`) and CHANNELID on any input.
//!
//! Checks that it never panics, that an accepted entry describes a usable reader
//! (slots 1..=16 whose ports all exist, a timeout in the documented range, a host
//! without blanks), and that a refusal quotes the input.

use std::time::Duration;

use vpcd_protocol::config::{Endpoint, ReaderConfig, MAX_SLOTS};

fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ReaderConfig::parse(&text) {
        Ok(cfg) => {
            assert!((1..=MAX_SLOTS).contains(&cfg.slots));
            assert!(cfg.port >= 1);
            assert!(u32::from(cfg.port) + u32::from(cfg.slots) - 1 <= 65535);
            for slot in 0..cfg.slots {
                assert_eq!(cfg.port_of(slot), Some(cfg.port + slot));
            }
            assert_eq!(cfg.port_of(cfg.slots), None);
            assert!(cfg.timeout >= Duration::from_micros(999));
            assert!(cfg.timeout <= Duration::from_secs(86_400));
            match &cfg.endpoint {
                Endpoint::Connect { host } => {
                    assert!(!host.is_empty());
                    assert!(!host.contains(char::is_whitespace));
                    assert!(!cfg.listens_beyond_loopback());
                }
                Endpoint::Listen { .. } => {}
            }
            // Parsing is a function of its input.
            assert_eq!(ReaderConfig::parse(&text).as_ref(), Ok(&cfg));
        }
        Err(e) => {
            assert_eq!(e.input, text);
            let message = e.to_string();
            assert!(message.contains(&text.escape_debug().to_string()));
            assert!(!e.reason.is_empty());
        }
    }
    if let Some(b) = data.get(..4) {
        let channel = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        match ReaderConfig::from_channel_id(channel) {
            Ok(cfg) => {
                assert!((1..=65534).contains(&channel));
                assert_eq!(u32::from(cfg.port), channel);
            }
            Err(e) => {
                assert!(channel == 0 || channel >= 65535);
                let _ = e.to_string();
            }
        }
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| run(data));
}
