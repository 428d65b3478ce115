//! `image_store_proxy::fuzzing::splice`: any bytes as a gzipped upstream image, spliced into a
//! bundle's gzip member (or refused, to be recompressed).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| image_store_proxy::fuzzing::splice(data));
