//! Sans-I/O protocol core of odmr.
//!
//! Every dialogue is a state machine that takes input bytes and returns steps: bytes to write, a
//! request for more input, an event that needs a decision (a store lookup, a commit), a
//! turnaround, a close. No module here does I/O, reads a clock or spawns a task; the async driver
//! in the `odmr` crate does that and feeds decisions back. That is what lets every dialogue be
//! tested from a transcript without sockets.

pub mod atrn;
pub mod auth;
pub mod customer;
pub mod data;
pub mod deliver;
pub mod dialogue;
pub mod domain;
pub mod dot;
pub mod dsn;
pub mod envelope;
mod esmtp;
pub mod line;
pub mod odmr;
pub mod relay;
pub mod reply;
pub mod sasl;
pub mod smtp_server;
pub mod splice_observer;
pub mod starttls_filter;
pub mod transcript;
