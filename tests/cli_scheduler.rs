//! The `goodput scheduler serve` command line as operators start it: bad endpoint lists fail
//! with one line naming the entry, and a started scheduler serves its Prometheus metrics with the
//! contract's names and the probes the chart uses (`/healthz`, `/readyz`) (the Envoy path itself is tested in `scheduler/tests/envoy.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn goodput() -> Command {
    Command::new(env!("CARGO_BIN_EXE_goodput"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_endpoint_lists_fail_with_one_line_naming_the_entry() {
    for (list, needle) in [
        ("nohostport", "endpoint `nohostport`"),
        ("10.0.0.1:8000 colour=red", "unknown attribute `colour=red`"),
        ("10.0.0.1:8000,10.0.0.1:8000", "listed twice"),
    ] {
        let o = goodput()
            .args(["scheduler", "serve", "--endpoints", list])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{list}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{list}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let o = goodput().args(["scheduler", "serve"]).output().unwrap();
    assert!(!o.status.success(), "an endpoint source is required");
    let o = goodput()
        .args([
            "scheduler",
            "serve",
            "--endpoints-file",
            "/nonexistent/pool.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/pool.txt"));
}

#[test]
fn serve_exposes_the_scheduler_metrics() {
    let (grpc, metrics) = (free_port(), free_port());
    let mut child = goodput()
        .args(["scheduler", "serve", "--host", "127.0.0.1"])
        .args(["--port", &grpc.to_string()])
        .args(["--metrics-port", &metrics.to_string()])
        // Nothing listens there: both endpoints are down.
        .args(["--endpoints", "127.0.0.1:1 accelerator=h100, 127.0.0.1:2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let got = TcpStream::connect(("127.0.0.1", metrics)).and_then(|mut s| {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut t = String::new();
            s.read_to_string(&mut t)?;
            Ok(t)
        });
        match got {
            Ok(t) if t.contains("goodput_scheduler_endpoints{state=\"down\"} 2") => break t,
            _ if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("no metrics with two down endpoints after 20 s: {got:?}");
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let get = |path: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", metrics)).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .unwrap();
        let mut t = String::new();
        s.read_to_string(&mut t).unwrap();
        t
    };
    let healthz = get("/healthz");
    let readyz = get("/readyz");
    let _ = child.kill();
    let _ = child.wait();
    assert!(healthz.starts_with("HTTP/1.0 200"), "{healthz}");
    assert!(
        readyz.starts_with("HTTP/1.0 503"),
        "no endpoint ready: {readyz}"
    );
    for name in [
        "goodput_scheduler_picks_total{outcome=\"no_endpoint\"} 0",
        "goodput_scheduler_pick_duration_seconds_bucket",
        "goodput_scheduler_training_samples_total 0",
        "goodput_scheduler_slo_violations_total{kind=\"tpot\"} 0",
    ] {
        assert!(text.contains(name), "missing {name}:\n{text}");
    }
}
