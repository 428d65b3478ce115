//! `image_store_proxy::fuzzing::splice_qcow2`: any bytes as a qcow2 disk whose compressed
//! clusters are spliced into a bundle's gzip member (or refused, to be converted and recompressed).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| image_store_proxy::fuzzing::splice_qcow2(data));
