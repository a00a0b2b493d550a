//! Feeds arbitrary bytes to the scanner, the stream framer and the whole sans-IO core (as a
//! request or response from a caller and from a gateway). The properties: no panic, no hang,
//! and every forwarded message scans again.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice::config::Config;
use sluice::peer::Peer;
use sluice::proxy::Action;
use sluice::proxy::node::Node;
use sluice::stats::Stats;

const CONFIG: &str = "[server]\nlisten = [\"udp://127.0.0.1:5060\", \"tcp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\", \"tcp://127.0.0.1:5071\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n";

fn config() -> Arc<Config> {
    static CONFIG_ONCE: OnceLock<Arc<Config>> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| Arc::new(Config::parse("fuzz", CONFIG).expect("fuzz config"))).clone()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = sluice::sip::parse(data) {
        let _ = msg.call_id();
        let _ = msg.cseq();
        let _ = msg.max_forwards();
        let _ = msg.tag(sluice::sip::HeaderName::From);
        for h in &msg.headers {
            if h.name == sluice::sip::HeaderName::Via {
                let _ = sluice::sip::via::parse_all(msg.bytes(h.value));
            }
        }
        if let Some(uri) = msg.request_uri() {
            let _ = sluice::sip::uri::Uri::parse(uri);
        }
    }
    let _ = sluice::sip::framing::frame(data, 65536);

    let proxy = Node::new(config(), Arc::new(Stats::default()), 0);
    let now = tokio::time::Instant::now();
    let mut out = Vec::new();
    proxy.on_message(now, Peer::udp("192.0.2.1:5060".parse().unwrap()), data, &mut out);
    proxy.on_message(now, Peer::udp("127.0.0.1:5070".parse().unwrap()), data, &mut out);
    proxy.on_timer(now + std::time::Duration::from_secs(3600), &mut out);
    for (_, data) in out.iter().filter_map(Action::as_send) {
        assert!(sluice::sip::parse(data).is_ok(), "sluice sent bytes it cannot scan itself");
    }
});
