//! SASL mechanisms and the secrets they keep.

pub mod cram_md5;
pub mod plain;
pub mod scram;
