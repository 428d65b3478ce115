//! The upstream catalog parser: `image_store_proxy::fuzzing::catalog`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| image_store_proxy::fuzzing::catalog(data));
