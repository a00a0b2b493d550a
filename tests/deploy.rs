//! What deployment relies on: the systemd unit verifies, and the binary speaks systemd's
//! notify protocol (READY after the listeners are bound, the watchdog, RELOADING/READY
//! around SIGHUP, STOPPING at SIGTERM) to a NOTIFY_SOCKET the test binds.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd/sluice.service");

fn required(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{tool} is required under CI=true");
        eprintln!("SKIPPED: {tool} not installed");
    }
    found
}

#[test]
fn the_systemd_unit_verifies_without_warnings() {
    if !required("systemd-analyze") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sluice-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The unit names the installed binary; verify needs it to exist, so point at this build.
    let unit = std::fs::read_to_string(UNIT).unwrap().replace("/usr/local/bin/sluice", BIN);
    assert!(
        unit.contains("Type=notify") && unit.contains("WatchdogSec=") && unit.contains("DynamicUser=yes")
    );
    let path = dir.join("sluice.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn next(sock: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
        ))
        .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.lines().any(|l| l == want);
        seen.push(msg);
        if done {
            return seen;
        }
    }
    panic!("no {want} within {within:?}; got {seen:?}");
}

#[test]
fn systemd_hears_ready_watchdog_reload_and_stopping() {
    let dir = std::env::temp_dir().join(format!("sluice-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = [\"udp://127.0.0.1:{port}\"]\ndrain_seconds = 1\n[log]\nlevel = \"warn\"\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:9\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n"),
    )
    .unwrap();
    // systemd sets WATCHDOG_PID to the service's pid: exec keeps the shell's.
    let mut child = Command::new("sh")
        .args(["-c", &format!("WATCHDOG_PID=$$ exec {BIN} run --config {}", config.display())])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = next(&sock, "READY=1", Duration::from_secs(10));
    assert!(
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_err(),
        "READY=1 comes after the listener is bound: {ready:?}"
    );
    next(&sock, "WATCHDOG=1", Duration::from_secs(2));
    let kill = |sig: &str| Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(kill("-HUP").success());
    next(&sock, "RELOADING=1", Duration::from_secs(5));
    next(&sock, "READY=1", Duration::from_secs(5));
    assert!(kill("-TERM").success());
    next(&sock, "STOPPING=1", Duration::from_secs(5));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The container build is the workstation build: the Dockerfile runs `cargo build --release
/// --locked`, copies that binary, runs as a non-root user, and every file it copies exists.
/// (No Docker daemon here: the image itself is built where Docker runs.)
#[test]
fn the_dockerfile_builds_the_release_binary_as_non_root() {
    let root = env!("CARGO_MANIFEST_DIR");
    let docker = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    assert!(docker.contains("RUN cargo build --release --locked --bin sluice"));
    assert!(docker.contains("COPY --from=build /src/target/release/sluice /usr/local/bin/sluice"));
    assert!(docker.lines().any(|l| l == "USER sluice"), "not root");
    for line in docker.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(std::path::Path::new(&format!("{root}/{src}")).exists(), "{line}: {src} is missing");
        }
    }
    let ignore = std::fs::read_to_string(format!("{root}/.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target"), "the build context leaves target/ out");
}

/// The compose demo's and the image's configs are valid (their service names stand in for
/// addresses here), and each compose node names itself and the shared store.
#[test]
fn the_container_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for name in ["container.toml", "sluice-a.toml", "sluice-b.toml"] {
        let text = std::fs::read_to_string(format!("{root}/contrib/compose/{name}")).unwrap();
        let local = text.replace("udp://pbx:", "udp://127.0.0.1:");
        let config = sluice::config::Config::parse(name, &local).unwrap_or_else(|e| panic!("{name}:\n{e}"));
        assert!(
            config.listen.iter().all(|l| l.addr.ip().is_unspecified()),
            "{name} listens on every address"
        );
        if let Some(cluster) = &config.cluster {
            assert_eq!(cluster.redis, "redis://valkey:6379/");
            assert_eq!(cluster.nodes, 2);
        }
    }
    let compose = std::fs::read_to_string(format!("{root}/contrib/compose.yaml")).unwrap();
    for service in ["valkey:", "sluice-a:", "sluice-b:", "pbx:", "caller-a:"] {
        assert!(compose.contains(&format!("\n  {service}")), "{service} missing");
    }
}
