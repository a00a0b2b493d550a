//! sluice: a SIP edge proxy with built-in capacity limiting.
//!
//! The data path reads top to bottom: [`transport`] moves bytes, [`sip`] scans them,
//! [`proxy`] classifies, routes and forwards (a sans-IO core), [`config`] says where calls go,
//! [`server`] binds it all together.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod limit;
pub mod logging;
pub mod peer;
pub mod proxy;
pub mod records;
pub mod server;
pub mod sip;
pub mod stats;
pub mod systemd;
pub mod top;
pub mod transport;
pub mod usage;
