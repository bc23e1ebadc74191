//! The one place that does socket I/O for the protocol machines.

pub mod conn;
pub mod driver;
pub mod tls;
pub mod transcript;
