//! A real Prometheus (Debian's `prometheus` binary) for the length of a test, scraping
//! `goodput sim serve`'s live vLLM-compatible servers, one job per variant with a `variant`
//! label (as a relabelling of a pod label would give in a cluster).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Prometheus {
    child: Option<Child>,
    pub url: String,
    dir: PathBuf,
}

impl Prometheus {
    fn binary() -> String {
        let bin = std::env::var("GOODPUT_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let found = Command::new(&bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{bin}` not found: install Debian's prometheus package (scripts/test.sh does) or set \
             GOODPUT_PROMETHEUS"
        );
        bin
    }

    /// Starts Prometheus scraping each (variant, targets) job every second, and waits until it
    /// answers.
    pub async fn start(jobs: &[(&str, &[SocketAddr])]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("goodput-ctrl-prom-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n",
        );
        for (variant, addrs) in jobs {
            let targets: Vec<String> = addrs.iter().map(|a| format!("'{a}'")).collect();
            config.push_str(&format!(
                "  - job_name: {variant}\n    static_configs:\n      - targets: [{}]\n        labels: {{variant: {variant}}}\n",
                targets.join(", ")
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new(Self::binary())
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let prom = Prometheus {
            child: Some(child),
            url,
            dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client
            .get(format!("{}/-/ready", prom.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "Prometheus never became ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prom
    }

    /// Stops the server (Prometheus "down").
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
