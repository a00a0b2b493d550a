//! The edge's own checks on the data path: digest verification per authenticated call (MD5
//! and SHA-256), issuing a challenge, and flood protection's per-message check (a source
//! under its rate, and a blocked source's message being dropped).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::auth::{Outcome, Verifier};
use sluice::config::{Auth, AuthRequire, Config};
use sluice::proxy::flood::Flood;
use tokio::time::Instant;

fn verifier(t0: Instant) -> Verifier {
    let lines = Verifier::htdigest("acme", "sluice", "secret");
    let auth = Auth {
        realm: "sluice".into(),
        credentials_file: "bench".into(),
        credentials: sluice::auth::credentials::parse(&lines, "sluice").expect("credentials"),
        require: AuthRequire::All,
        nonce_lifetime: Duration::from_secs(300),
    };
    Verifier::with_key(&auth, t0, [9; 32])
}

fn auth(c: &mut Criterion) {
    let t0 = Instant::now();
    let v = verifier(t0);
    let call = b"bench-call-1@192.0.2.10\0a73kszlfl";
    let uri = "sip:+15551230000@127.0.0.1:5060";
    let mut g = c.benchmark_group("auth");
    let [sha256, md5] = v.challenge(t0, call, 0, false);
    for (name, challenge) in [("verify_sha256", &sha256), ("verify_md5", &md5)] {
        let answer =
            Verifier::answer(challenge, "acme", "secret", "INVITE", uri, "0a4f113b").expect("answer");
        assert_eq!(
            v.verify(t0, call, b"INVITE", uri.as_bytes(), answer.as_bytes()),
            Outcome::Ok("acme".into())
        );
        g.bench_function(name, |b| {
            b.iter(|| v.verify(t0, black_box(call), b"INVITE", uri.as_bytes(), black_box(answer.as_bytes())))
        });
    }
    g.bench_function("challenge", |b| b.iter(|| v.challenge(t0, black_box(call), 0, false)));
    g.finish();
}

fn flood(c: &mut Criterion) {
    let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n[flood]\nrps = 1000000\nblock_seconds = 60\n";
    let config = Config::parse("bench", text).expect("config");
    let t0 = Instant::now();
    let mut g = c.benchmark_group("flood");
    let mut guard = Flood::new(&config, t0).expect("flood on");
    let mut i = 0u32;
    g.bench_function("check_pass_1000_sources", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            guard.check(t0, black_box(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
        })
    });
    let blocking = text.replace("rps = 1000000", "rps = 1");
    let config = Config::parse("bench", &blocking).expect("config");
    let mut guard = Flood::new(&config, t0).expect("flood on");
    let attacker = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    guard.check(t0, attacker);
    guard.check(t0, attacker);
    g.bench_function("check_drop_blocked", |b| b.iter(|| guard.check(t0, black_box(attacker))));
    g.finish();
}

criterion_group!(benches, auth, flood);
criterion_main!(benches);
