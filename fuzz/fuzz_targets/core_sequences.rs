//! The stateful mode: arbitrary bytes read as a sequence of moves by callers, the PBX and
//! strangers (see tests/common/scenario.rs, shared with the proptest in `cargo test`). The
//! properties: no panic; sent bytes scan; channels never over the limit; an INVITE reaches
//! the PBX as sent plus sluice's splices; every channel and table back to empty at the end.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/common/scenario.rs"]
mod scenario;

fuzz_target!(|data: &[u8]| {
    scenario::play(data);
});
