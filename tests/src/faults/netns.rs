//! A network namespace of the test's own for the network faults, so that
//! delay and loss touch only the servers under test: a veth pair with
//! addresses in a private /30 that exists only on this machine, the servers
//! inside, the clients and the database (through a proxy on the host end)
//! outside. Every packet between them crosses the pair and nothing else.
//!
//! The fault is a `tc` queueing discipline on both ends: `netem` (delay,
//! jitter, loss) where the kernel has it, else `tbf` (a rate limit whose
//! queue is short enough to drop: delay and loss from congestion). Which one
//! ran is reported.

use std::net::{IpAddr, Ipv4Addr};

use rand::Rng;
use tokio::process::Command;

pub struct NetNs {
    pub name: String,
    host_dev: String,
    ns_dev: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    shaped: bool,
}

/// The discipline that was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shaping {
    Netem(String),
    /// `netem` is missing from this kernel; this ran instead.
    Tbf {
        spec: String,
        netem_error: String,
    },
}

impl Shaping {
    pub fn describe(&self) -> String {
        match self {
            Self::Netem(spec) => format!("tc netem {spec} on the veth pair"),
            Self::Tbf { spec, .. } => {
                format!("tc tbf {spec} on the veth pair (no netem in this kernel)")
            }
        }
    }
}

async fn sh(args: &[&str]) -> Result<(), String> {
    let (program, rest) = args.split_first().ok_or("empty command")?;
    let out = Command::new(program)
        .args(rest)
        .output()
        .await
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates the namespace and the pair; `Err` says what the kernel
    /// refused (no privilege, no veth), so the scenario can be skipped with
    /// that reason.
    pub async fn create() -> Result<Self, String> {
        let tag: u32 = rand::rng().random_range(0..0xff_ffff);
        // 10.200.0.0/13 split into /30s: one per run, chosen at random so
        // that concurrent runs do not meet.
        let block = 0x0AC8_0000u32 | ((tag & 0x7_ffff) << 2);
        let host_ip = Ipv4Addr::from(block | 1);
        let ns_ip = Ipv4Addr::from(block | 2);
        let ns = Self {
            name: format!("ledger-faults-{tag:06x}"),
            host_dev: format!("lf{tag:06x}h"),
            ns_dev: format!("lf{tag:06x}n"),
            host_ip,
            ns_ip,
            shaped: false,
        };
        sh(&["ip", "netns", "add", &ns.name]).await?;
        let host_cidr = format!("{host_ip}/30");
        let ns_cidr = format!("{ns_ip}/30");
        let steps: [&[&str]; 7] = [
            &[
                "ip",
                "link",
                "add",
                &ns.host_dev,
                "type",
                "veth",
                "peer",
                "name",
                &ns.ns_dev,
            ],
            &["ip", "link", "set", &ns.ns_dev, "netns", &ns.name],
            &["ip", "addr", "add", &host_cidr, "dev", &ns.host_dev],
            &["ip", "link", "set", &ns.host_dev, "up"],
            &[
                "ip", "netns", "exec", &ns.name, "ip", "addr", "add", &ns_cidr, "dev", &ns.ns_dev,
            ],
            &[
                "ip", "netns", "exec", &ns.name, "ip", "link", "set", &ns.ns_dev, "up",
            ],
            &[
                "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
            ],
        ];
        for step in steps {
            sh(step).await?;
        }
        Ok(ns)
    }

    pub fn ns_addr(&self) -> IpAddr {
        IpAddr::V4(self.ns_ip)
    }

    /// `tc qdisc {action} dev … root {spec}` on both ends of the pair: the
    /// host's, then the namespace's.
    async fn qdisc(&self, action: &str, spec: &[&str]) -> Result<(), String> {
        let mut host = vec!["tc", "qdisc", action, "dev", &self.host_dev, "root"];
        host.extend_from_slice(spec);
        sh(&host).await?;
        let mut inner = vec![
            "ip",
            "netns",
            "exec",
            &self.name,
            "tc",
            "qdisc",
            action,
            "dev",
            &self.ns_dev,
            "root",
        ];
        inner.extend_from_slice(spec);
        sh(&inner).await
    }

    /// Installs delay and loss on both ends of the pair.
    pub async fn degrade(&mut self) -> Result<Shaping, String> {
        let netem = ["netem", "delay", "40ms", "10ms", "loss", "2%"];
        let shaping = match self.qdisc("replace", &netem).await {
            Ok(()) => Shaping::Netem(netem[1..].join(" ")),
            Err(netem_error) => {
                // 2 Mbit/s with a 20 ms queue: replies of a few kB queue for
                // milliseconds and bursts overflow it and are dropped.
                let tbf = ["tbf", "rate", "2mbit", "burst", "8kb", "latency", "20ms"];
                self.qdisc("replace", &tbf).await?;
                Shaping::Tbf {
                    spec: tbf[1..].join(" "),
                    netem_error,
                }
            }
        };
        self.shaped = true;
        Ok(shaping)
    }

    /// Removes the disciplines again.
    pub async fn heal(&mut self) -> Result<(), String> {
        if !self.shaped {
            return Ok(());
        }
        self.qdisc("del", &[]).await?;
        self.shaped = false;
        Ok(())
    }
}

impl Drop for NetNs {
    /// Deleting the namespace destroys its end of the pair, which takes the
    /// host end with it; the explicit delete covers a half-built pair.
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
