//! The S3/EC2 XML error parser: `image_store_proxy::fuzzing::cloud_error`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| image_store_proxy::fuzzing::cloud_error(data));
