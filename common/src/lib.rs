//! What both Tributary programs need from their surroundings, written once: loading
//! configuration ([`config`]), logging ([`logging`]), signals ([`signals`]), the error
//! counter behind the rule "every error that is logged is counted" ([`errors`]), opening
//! SQLite files and the multi-row INSERT statements both stores use ([`sqlite`]), the runtime
//! and the order of a program's life (SIGHUP before READY, READY, watchdog, reload, STOPPING:
//! [`lifecycle`]), the service manager's notifications ([`systemd`]) and the `health`
//! subcommand ([`health`]).
//!
//! Only process plumbing belongs here. The data model and wire format live in
//! `tributary-wire`; anything specific to one program lives in that program.

pub mod config;
pub mod errors;
pub mod health;
pub mod lifecycle;
pub mod logging;
pub mod signals;
pub mod sqlite;
pub mod systemd;
