//! odmr: the provider (`server`), the customer (`client`), the operators' commands (`cli`), their
//! configuration, and the one place that does socket I/O (`net`). A library with a thin binary
//! (`main.rs`), so that sessions and drivers can be tested in-process, over `tokio::io::duplex`
//! or a socket, without starting a process. Library code returns typed errors; anyhow is used
//! only at the edges that report to an operator (the CLI commands and the server's startup).

pub mod cli;
pub mod client;
pub mod config;
pub mod net;
pub mod server;
