//! The stateful scenario of `common/scenario.rs` over random move sequences: no panic, no
//! channel over the limit, transparency, and everything released in the end. The same
//! scenario runs under cargo-fuzz (`fuzz/fuzz_targets/core_sequences.rs`) for longer.

mod common;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_moves_keeps_the_invariants(moves in proptest::collection::vec(any::<u8>(), 0..300)) {
        common::scenario::play(&moves);
    }
}

/// The move decoder really plays calls: new calls, answers, the limit reached.
#[test]
fn a_known_sequence_plays_calls_to_the_limit() {
    // (invite caller call tag) x4 distinct calls, then 200 OK from the PBX for each of the
    // three that reached it.
    let mut moves = Vec::new();
    for call in 0..4u8 {
        moves.extend_from_slice(&[0, 0, call, 0]);
    }
    for k in 0..3u8 {
        moves.extend_from_slice(&[2, k, 2, 2]);
    }
    let s = common::scenario::play(&moves);
    assert_eq!(s.invites_forwarded, 3, "the fourth call is over the channel limit");
    assert_eq!(s.answered, 3);
    assert_eq!(s.peak_channels, common::scenario::CHANNELS);
}

/// Found by the property above: a gateway backed off after a 503 made a BYE of another,
/// answered call to that gateway find no target, and its transaction lived forever.
#[test]
fn a_bye_to_a_backed_off_gateway_still_goes_and_ends() {
    let moves = [0, 0, 0, 0, 0, 0, 1, 0, 2, 0, 2, 2, 2, 1, 4, 2, 5, 0, 0, 0];
    let s = common::scenario::play(&moves);
    assert_eq!((s.invites_forwarded, s.answered), (2, 1));
}

/// Replays a failing input: `MOVES="1,2,3" SCENARIO_TRACE=1 cargo test --test
/// core_properties replay -- --ignored --nocapture`.
#[test]
#[ignore]
fn replay_moves_from_env() {
    let text = std::env::var("MOVES").unwrap_or_default();
    let moves: Vec<u8> = text.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    common::scenario::play(&moves);
}
