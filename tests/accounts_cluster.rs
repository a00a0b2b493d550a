//! The sub-account, shadow, CPM and pacing flows of tests/accounts.rs again, with the limits
//! kept in Redis (the Lua admission checks the parents, the minute window, the pacing gap
//! and reports shadow hits). `common::start` adds the `[cluster]` section because this
//! binary's name ends in `_cluster`; skips with a notice without redis-server unless CI=true.

#[path = "accounts.rs"]
mod flows;
