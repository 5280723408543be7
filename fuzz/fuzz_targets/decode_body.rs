//! `cargo +nightly fuzz run decode_body`: the API server's request decoders (protobuf and
//! JSON bodies) on arbitrary bytes. The stable-Rust counterpart, run by the tests, is
//! `crates/apiserver/tests/decoders.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = berth_apiserver::server::decode_body("application/vnd.kubernetes.protobuf", data);
    let _ = berth_apiserver::server::decode_body("application/json", data);
    let _ = berth_apiserver::schema::parse_noting_duplicates(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = berth_apiserver::selector::LabelSelector::parse(text);
    }
});
