//! Every capacity-limiting flow of tests/limits.rs again, with the limits kept in Redis:
//! `common::start` adds a `[cluster]` section (one redis-server for this test binary, one
//! database per test) because this binary's name ends in `_cluster`.
//! Skips with a notice when redis-server is missing, unless CI=true (then it fails).

#[path = "limits.rs"]
mod flows;
