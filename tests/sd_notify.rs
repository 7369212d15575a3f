//! systemd `Type=notify` (docs/design.md, Operations): the binary sends `READY=1` once
//! its listeners are serving, `RELOADING=1` … `READY=1` around a SIGHUP reload and
//! `STOPPING=1` on SIGTERM, to the datagram socket named by `NOTIFY_SOCKET`.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::config_file::{loopback_server_toml, sts_and_acme_toml};
use support::e2e::write_private_file;

const BIN: &str = env!("CARGO_BIN_EXE_credvend");

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("credvend-notify-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child if the test panics before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two distinct free loopback ports: both probes stay bound until both are read, so the
/// kernel cannot hand out the same port twice.
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// Receives datagrams until one contains `wanted`; returns every message seen. Fails as
/// soon as `child` has exited and everything it sent has been read.
fn wait_for(socket: &UnixDatagram, child: &mut Child, wanted: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    let mut exited = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "no {wanted:?} within 60 s; got {seen:?}"
        );
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = message.lines().any(|l| l == wanted);
                seen.push(message);
                if done {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                // Nothing queued after the child was seen gone: nothing more will come.
                if let Some(exit) = exited {
                    panic!("credvend exited ({exit}) before sending {wanted:?}; got {seen:?}");
                }
                exited = child.try_wait().unwrap();
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn ready_reloading_and_stopping_reach_the_notify_socket() {
    let scratch = Scratch::new();
    let socket_path = scratch.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let (port, admin) = free_ports();
    let config = scratch.0.join("credvend.toml");
    write_private_file(
        &config,
        &(loopback_server_toml(port, admin)
            + &sts_and_acme_toml("http://127.0.0.1:9", "acme-external-id-0123456789", "t")),
    );

    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("AWS_ACCESS_KEY_ID", "AKIATEST")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("CREDVEND_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let mut seen = Vec::new();

    wait_for(&socket, &mut child.0, "READY=1", &mut seen);
    // READY means serving: the admin listener answers right away.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok(),
        "READY=1 before the admin listener accepts"
    );

    seen.clear();
    signal(&child.0, "HUP");
    wait_for(&socket, &mut child.0, "RELOADING=1", &mut seen);
    assert!(
        seen.last().unwrap().contains("MONOTONIC_USEC="),
        "RELOADING=1 carries MONOTONIC_USEC: {seen:?}"
    );
    wait_for(&socket, &mut child.0, "READY=1", &mut seen);

    seen.clear();
    signal(&child.0, "TERM");
    wait_for(&socket, &mut child.0, "STOPPING=1", &mut seen);

    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "credvend did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));
}
