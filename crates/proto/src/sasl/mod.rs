//! SASL mechanisms and the secrets they keep.

pub mod cram_md5;
