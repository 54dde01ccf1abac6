//! A real Redis Cluster for the cluster tests (`tests/cluster.rs`): six `redis-server
//! --cluster-enabled yes` on free loopback ports (three masters, three replicas,
//! `--cluster-node-timeout 1000`), joined by `redis-cli --cluster create`, each test its own.
//!
//! Also what the tests do to it and ask of it with `redis-cli` only: which master owns a
//! channel's slot, `PUBSUB SHARDNUMSUB` and `PUBSUB NUMSUB` on each node, a slot moved
//! (`CLUSTER SETSLOT .. IMPORTING/MIGRATING/NODE`, as `redis-cli --cluster reshard` does),
//! a master killed. Every wait is for a condition, bounded, and fails naming it.
//!
//! [`RedisCluster::start_tls`] starts one whose nodes also listen with TLS, talk to each other
//! over TLS (`--tls-cluster yes`, `--tls-replication yes`) and give clients their TLS ports;
//! its certificate authority is made with `openssl` (`tests/cluster_tls.rs`).

#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::redis::{free_port, numsub, RedisServer};

/// How long the cluster may take to form, or to settle after a change (a busy 2-core machine).
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// One node of `CLUSTER NODES`, as some node sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// Slot ranges it serves (inclusive), migration entries (`[..]`) left out.
    pub slots: Vec<(u16, u16)>,
}

/// Six nodes: three masters with a replica each.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// For a cluster from [`start_tls`](Self::start_tls): its certificates and each node's
    /// TLS port.
    tls: Option<Tls>,
}

/// A TLS cluster's certificates (in a directory of its own, removed on drop) and the TLS
/// port of each node, in the order of `nodes`.
struct Tls {
    dir: std::path::PathBuf,
    ports: Vec<u16>,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What every node of a test cluster runs with: cluster mode, its own config file (in the
/// node's fresh directory), and a node timeout short enough for fast failovers.
const NODE_ARGS: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
];

impl RedisCluster {
    /// Starts six nodes, creates the cluster, and waits until every node says
    /// `cluster_state:ok` and every replica's link to its master is up (a replica that has not
    /// finished its first sync refuses to fail over).
    ///
    /// # Panics
    /// If redis-server or redis-cli is missing, or the cluster does not form in time.
    pub fn start() -> RedisCluster {
        Self::start_with(6, 1, &[])
    }

    /// [`start`](Self::start) with `count` nodes, `replicas` per master, and extra
    /// `redis-server` arguments for every node (such as `--cluster-require-full-coverage no`).
    pub fn start_with(count: usize, replicas: usize, extra: &[&str]) -> RedisCluster {
        let mut args = NODE_ARGS.to_vec();
        args.extend_from_slice(extra);
        let nodes: Vec<RedisServer> = (0..count).map(|_| RedisServer::start_with(&args)).collect();
        Self::create(nodes, replicas, None)
    }

    /// [`start`](Self::start) with TLS: a certificate authority and a server certificate for
    /// `127.0.0.1` made with `openssl`, and every node also listening on a TLS port, talking
    /// to the other nodes and its replica over TLS, and naming its TLS port to clients that
    /// come over TLS (`CLUSTER SLOTS`). Its plain port stays, for `redis-cli`, so everything
    /// below works on it as on any cluster; [`url`](Self::url) is a `rediss-cluster://` URL.
    /// Clients must trust [`ca_file`](Self::ca_file).
    ///
    /// # Panics
    /// As [`start`](Self::start), and if `openssl` is missing.
    pub fn start_tls() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "evbus-cluster-tls-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        make_certificates(&dir);
        let mut tls = Tls {
            dir,
            ports: Vec::new(),
        };
        let nodes = (0..6)
            .map(|_| {
                let (node, port, _) = start_tls_node(&tls.dir);
                tls.ports.push(port);
                node
            })
            .collect();
        Self::create(nodes, 1, Some(tls))
    }

    /// Joins `nodes` into a cluster with `replicas` per master, and waits until it settled.
    fn create(nodes: Vec<RedisServer>, replicas: usize, tls: Option<Tls>) -> RedisCluster {
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("could not run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes, tls };
        cluster.wait_settled();
        cluster
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&..`: every node, fred's URL form; for
    /// a cluster from [`start_tls`](Self::start_tls), `rediss-cluster://` and the TLS ports.
    pub fn url(&self) -> String {
        let (scheme, ports): (&str, Vec<u16>) = match &self.tls {
            Some(tls) => ("rediss-cluster", tls.ports.clone()),
            None => (
                "redis-cluster",
                self.nodes.iter().map(|n| n.port()).collect(),
            ),
        };
        let (first, rest) = ports.split_first().expect("a cluster has nodes");
        let rest: Vec<String> = rest.iter().map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("{scheme}://127.0.0.1:{first}?{}", rest.join("&"))
    }

    /// The TLS port of `nodes[index]`, on a cluster from [`start_tls`](Self::start_tls).
    pub fn tls_port(&self, index: usize) -> u16 {
        self.tls.as_ref().expect("a TLS cluster").ports[index]
    }

    /// The certificate authority's certificate (PEM) of a cluster from
    /// [`start_tls`](Self::start_tls): what its clients must trust.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.tls.as_ref().expect("a TLS cluster").dir.join("ca.crt")
    }

    /// Waits until every running node says `cluster_state:ok`, agrees on who owns every
    /// master's slots, and every running replica's master link is up.
    pub fn wait_settled(&self) {
        self.wait("the cluster is settled", SETTLE_DEADLINE, || {
            self.running().all(|node| {
                let info = try_cli(node.port(), &["CLUSTER", "INFO"]).unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let replication =
                    try_cli(node.port(), &["INFO", "replication"]).unwrap_or_default();
                replication.contains("role:master") || replication.contains("master_link_status:up")
            }) && self.views_agree()
        });
    }

    /// Whether every running node has the same slot table.
    fn views_agree(&self) -> bool {
        let mut tables = self.running().map(|node| {
            let mut table: Vec<(u16, Vec<(u16, u16)>)> = self
                .view_from(node.port())
                .into_iter()
                .filter(|v| v.master && !v.failed && !v.slots.is_empty())
                .map(|v| (v.port, v.slots))
                .collect();
            table.sort();
            table
        });
        let Some(first) = tables.next() else {
            return false;
        };
        !first.is_empty() && tables.all(|t| t == first)
    }

    /// The running nodes.
    pub fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// `CLUSTER NODES` as the node on `port` sees it.
    pub fn view_from(&self, port: u16) -> Vec<NodeView> {
        try_cli(port, &["CLUSTER", "NODES"])
            .unwrap_or_default()
            .lines()
            .filter_map(parse_node)
            .collect()
    }

    /// The slot of `channel` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, channel: &str) -> u16 {
        let any = self.running().next().expect("a running node");
        any.cli(&["CLUSTER", "KEYSLOT", channel])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The index in `nodes` of the master that owns `slot`, as a running node sees it.
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        let any = self.running().next().expect("a running node");
        let view = self.view_from(any.port());
        let owner = view
            .iter()
            .find(|v| {
                v.master && !v.failed && v.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
            })
            .unwrap_or_else(|| panic!("no master owns slot {slot}: {view:?}"));
        self.index_of(owner.port)
    }

    /// The index in `nodes` of the master that owns `channel`'s slot.
    pub fn owner(&self, channel: &str) -> usize {
        self.owner_of_slot(self.slot(channel))
    }

    /// The indexes of the masters that are up.
    pub fn masters(&self) -> Vec<usize> {
        let any = self.running().next().expect("a running node");
        let mut masters: Vec<usize> = self
            .view_from(any.port())
            .iter()
            .filter(|v| v.master && !v.failed && !v.slots.is_empty())
            .map(|v| self.index_of(v.port))
            .collect();
        masters.sort();
        masters
    }

    /// A channel name, starting with `prefix`, whose slot is owned by master `master`.
    pub fn channel_on(&self, master: usize, prefix: &str) -> String {
        (0..10_000)
            .map(|i| format!("{prefix}{i}"))
            .find(|channel| self.owner(channel) == master)
            .unwrap_or_else(|| panic!("no channel {prefix}N on node {master}"))
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// The node id of `nodes[index]` (`CLUSTER MYID`).
    pub fn id(&self, index: usize) -> String {
        self.nodes[index].cli(&["CLUSTER", "MYID"])
    }

    /// `PUBSUB SHARDNUMSUB channel` on `nodes[index]`: its sharded subscribers there.
    pub fn shardnumsub(&self, index: usize, channel: &str) -> u64 {
        let out = self.nodes[index].cli(&["PUBSUB", "SHARDNUMSUB", channel]);
        out.lines()
            .last()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("PUBSUB SHARDNUMSUB {channel}: unexpected {out:?}"))
    }

    /// Classic `PUBSUB NUMSUB channel` summed over every running node.
    pub fn numsub_everywhere(&self, channel: &str) -> u64 {
        self.running().map(|node| numsub(node, channel)).sum()
    }

    /// Moves the (keyless) `slot` to master `to`, as `redis-cli --cluster reshard` does:
    /// IMPORTING on the target, MIGRATING on the source, then NODE on the target, the source
    /// and the other masters. Waits until every node agrees.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.owner_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is on node {to} already");
        let (from_id, to_id) = (self.id(from), self.id(to));
        let slot = slot.to_string();
        self.nodes[to].cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        self.nodes[from].cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        self.nodes[to].cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        self.nodes[from].cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for other in self.masters() {
            if other != from && other != to {
                self.nodes[other].cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
        self.wait_settled();
    }

    /// Starts a seventh (eighth, ..) node, joins it to the cluster with `CLUSTER MEET`, and
    /// waits until every node knows it: a master without slots, until some are moved to it.
    /// Returns its index in `nodes`.
    pub fn add_node(&mut self) -> usize {
        let (node, bus_port) = match &mut self.tls {
            Some(tls) => {
                let (node, port, bus_port) = start_tls_node(&tls.dir);
                tls.ports.push(port);
                (node, Some(bus_port))
            }
            None => (RedisServer::start_with(&NODE_ARGS), None),
        };
        let port = node.port();
        let mut meet = vec!["CLUSTER".to_string(), "MEET".into(), "127.0.0.1".into()];
        meet.push(port.to_string());
        meet.extend(bus_port.map(|p| p.to_string()));
        let meet: Vec<&str> = meet.iter().map(String::as_str).collect();
        self.nodes[0].cli(&meet);
        self.nodes.push(node);
        let count = self.running().count();
        self.wait("every node knows the new one", SETTLE_DEADLINE, || {
            self.running().all(|n| {
                let view = self.view_from(n.port());
                view.len() == count && view.iter().any(|v| v.port == port && !v.failed)
            })
        });
        self.wait_settled();
        self.nodes.len() - 1
    }

    /// Kills master `index` (SIGKILL) and waits until its replica has taken its slots and
    /// the cluster is `ok` again.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].stop();
        let port = self.nodes[index].port();
        self.wait(
            "the killed master's replica is promoted",
            SETTLE_DEADLINE,
            || {
                self.running().all(|node| {
                    self.view_from(node.port())
                        .iter()
                        .all(|v| v.port != port || v.failed || v.slots.is_empty())
                })
            },
        );
        self.wait_settled();
    }

    /// Kills every node (SIGKILL): the whole cluster is unreachable.
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    /// Starts every stopped node again on its port, with its `nodes.conf`, and waits until
    /// the cluster is settled.
    pub fn restart_all(&mut self) {
        for node in &mut self.nodes {
            if !node.is_running() {
                node.restart();
            }
        }
        self.wait_settled();
    }

    fn wait(&self, what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
        let started = Instant::now();
        while !condition() {
            assert!(
                started.elapsed() < deadline,
                "timed out after {deadline:?} waiting until {what}; CLUSTER NODES: {:?}",
                self.running()
                    .next()
                    .map(|n| try_cli(n.port(), &["CLUSTER", "NODES"]))
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts one node of a TLS cluster with the certificates in `dir`; returns it, its TLS port
/// and its cluster bus port, a free one of its own (by default it would be the TLS port plus
/// 10,000, which no one reserved).
fn start_tls_node(dir: &std::path::Path) -> (RedisServer, u16, u16) {
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (tls_port, bus_port) = (free_port().to_string(), free_port().to_string());
    let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
    let mut args = NODE_ARGS.to_vec();
    args.extend_from_slice(&[
        "--tls-port",
        &tls_port,
        "--cluster-port",
        &bus_port,
        "--tls-cluster",
        "yes",
        "--tls-replication",
        "yes",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let node = RedisServer::start_with(&args);
    let port = |p: &str| p.parse().expect("a port");
    (node, port(&tls_port), port(&bus_port))
}

/// Makes, in `dir`, a certificate authority (`ca.crt`) and a certificate for `127.0.0.1` and
/// `localhost` signed by it (`server.crt`, `server.key`), valid for two days.
pub fn make_certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("openssl not found: install Debian's openssl package");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=evbus-test-ca",
        "-days",
        "2",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("the certificate's extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-extfile",
        "ext",
        "-days",
        "2",
    ]);
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>..`.
fn parse_node(line: &str) -> Option<NodeView> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    let port = fields[1]
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags = fields[2];
    let slots = fields[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Some(NodeView {
        id: fields[0].to_string(),
        port,
        master: flags.contains("master"),
        failed: flags.contains("fail"),
        slots,
    })
}

/// `redis-cli -p port args..`, its stdout; `None` if it fails or answers an error.
fn try_cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !stdout.starts_with("ERR") && !stdout.contains("Could not connect"))
        .then_some(stdout)
}

// ---- raw sharded pub/sub, to see and replay exactly what a bus sent ---------------------------

/// A reply of Redis, as much of RESP2 as these commands need.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// One RESP value from the front of `buf`, and its length; `None` if it is not complete yet.
fn parse(buf: &[u8]) -> Option<(Reply, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..end]).ok()?;
    let after = end + 2;
    match buf.first()? {
        b'+' => Some((Reply::Simple(line.into()), after)),
        b'-' => Some((Reply::Error(line.into()), after)),
        b':' => Some((Reply::Integer(line.parse().ok()?), after)),
        b'$' => {
            let len: i64 = line.parse().ok()?;
            if len < 0 {
                return Some((Reply::Bulk(None), after));
            }
            let len = len as usize;
            let body = buf.get(after..after + len)?.to_vec();
            buf.get(after + len..after + len + 2)?;
            Some((Reply::Bulk(Some(body)), after + len + 2))
        }
        b'*' => {
            let count: i64 = line.parse().ok()?;
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..count.max(0) {
                let (item, used) = parse(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Reply::Array(items), at))
        }
        _ => None,
    }
}

/// A plain TCP connection speaking RESP to one node.
pub struct Raw {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"));
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, parts: &[&[u8]]) {
        use std::io::Write;
        let mut out = format!("*{}\r\n", parts.len()).into_bytes();
        for part in parts {
            out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out).expect("write to redis");
    }

    /// The next reply or push, within `timeout`.
    pub fn read(&mut self, timeout: Duration) -> Option<Reply> {
        use std::io::Read;
        let started = Instant::now();
        loop {
            if let Some((reply, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(reply);
            }
            let left = timeout.checked_sub(started.elapsed())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    pub fn request(&mut self, parts: &[&[u8]]) -> Reply {
        self.send(parts);
        self.read(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no reply to {:?}", String::from_utf8_lossy(parts[0])))
    }

    /// `SSUBSCRIBE channel`, waiting for its confirmation.
    pub fn ssubscribe(port: u16, channel: &str) -> Raw {
        let mut raw = Raw::connect(port);
        let reply = raw.request(&[b"SSUBSCRIBE", channel.as_bytes()]);
        assert!(
            matches!(&reply, Reply::Array(items) if items.first() == Some(&Reply::Bulk(Some(b"ssubscribe".to_vec())))),
            "SSUBSCRIBE {channel} on {port}: {reply:?}"
        );
        raw
    }

    /// The payload of the next `smessage`, within `timeout`.
    pub fn next_smessage(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        loop {
            match self.read(timeout)? {
                Reply::Array(mut items)
                    if items.len() == 3 && items[0] == Reply::Bulk(Some(b"smessage".to_vec())) =>
                {
                    if let Some(Reply::Bulk(Some(payload))) = items.pop() {
                        return Some(payload);
                    }
                }
                _ => {}
            }
        }
    }
}

/// `SPUBLISH channel payload` on the node on `port`; how many received it.
pub fn spublish(port: u16, channel: &str, payload: &[u8]) -> i64 {
    match Raw::connect(port).request(&[b"SPUBLISH", channel.as_bytes(), payload]) {
        Reply::Integer(n) => n,
        other => panic!("SPUBLISH {channel} on {port}: {other:?}"),
    }
}

/// `INFO commandstats` of the node on `port`: whether `command` (lower case) was ever run.
pub fn ran(port: u16, command: &str) -> bool {
    try_cli(port, &["INFO", "commandstats"])
        .unwrap_or_default()
        .lines()
        .any(|line| line.starts_with(&format!("cmdstat_{command}:")))
}

// ---- Sentinel ---------------------------------------------------------------------------------

/// A master, its replica, and three sentinels (`redis-server <conf> --sentinel`) watching it
/// as service [`Sentinels::SERVICE`] (quorum 2, down after 1 s), each on a free loopback port.
pub struct Sentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<SentinelProcess>,
}

struct SentinelProcess {
    port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sentinels {
    pub const SERVICE: &'static str = "evbus";

    /// Starts the master, the replica (waiting for its link to be up) and the sentinels
    /// (waiting until each knows the replica and the other sentinels).
    pub fn start() -> Sentinels {
        let master = RedisServer::start();
        let master_port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]);
        let sentinels: Vec<SentinelProcess> =
            (0..3).map(|_| start_sentinel(master.port())).collect();
        let all = Sentinels {
            master,
            replica,
            sentinels,
        };
        all.wait("the replica is linked", || {
            try_cli(all.replica.port(), &["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
        all.wait("every sentinel knows the replica and the others", || {
            all.sentinels.iter().all(|s| {
                let master =
                    try_cli(s.port, &["SENTINEL", "MASTER", Self::SERVICE]).unwrap_or_default();
                let mut lines = master.lines();
                let mut fields = HashMapLite::default();
                while let (Some(k), Some(v)) = (lines.next(), lines.next()) {
                    fields.0.push((k.to_string(), v.to_string()));
                }
                fields.get("num-slaves") == Some("1")
                    && fields.get("num-other-sentinels") == Some("2")
            })
        });
        all
    }

    /// `redis-sentinel://127.0.0.1:S1?sentinelServiceName=evbus&node=127.0.0.1:S2&..`
    pub fn url(&self) -> String {
        let mut ports = self.sentinels.iter().map(|s| s.port);
        let first = ports.next().unwrap();
        let rest: String = ports.map(|p| format!("&node=127.0.0.1:{p}")).collect();
        format!(
            "redis-sentinel://127.0.0.1:{first}?sentinelServiceName={}{rest}",
            Self::SERVICE
        )
    }

    /// The port of the master the sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        let out = self.sentinels.iter().find_map(|s| {
            try_cli(
                s.port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE],
            )
        })?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// Kills the master and waits until the sentinels have promoted the replica and it
    /// takes writes.
    pub fn kill_master(&mut self) {
        self.master.stop();
        let replica = self.replica.port();
        self.wait("the sentinels promoted the replica", || {
            self.master_port() == Some(replica)
                && try_cli(replica, &["INFO", "replication"])
                    .is_some_and(|info| info.contains("role:master"))
        });
    }

    fn wait(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let started = Instant::now();
        while !condition() {
            assert!(
                started.elapsed() < SETTLE_DEADLINE,
                "timed out after {SETTLE_DEADLINE:?} waiting until {what}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Pairs of `SENTINEL MASTER`'s flat answer.
#[derive(Default)]
struct HashMapLite(Vec<(String, String)>);

impl HashMapLite {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn start_sentinel(master_port: u16) -> SentinelProcess {
    let mut last_error = String::new();
    for _ in 0..8 {
        let port = super::redis::free_port();
        let dir = std::env::temp_dir().join(format!(
            "evbus-sentinel-{}-{port}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {service} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 5000\n\
                 sentinel parallel-syncs {service} 1\n",
                dir.display(),
                service = Sentinels::SERVICE
            ),
        )
        .expect("sentinel.conf");
        let log = std::fs::File::create(dir.join("sentinel.log")).expect("sentinel.log");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("could not run redis-server --sentinel");
        let mut process = SentinelProcess { port, dir, child };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = process.child.try_wait() {
                break;
            }
            if try_cli(port, &["PING"]).as_deref() == Some("PONG") {
                return process;
            }
            thread::sleep(Duration::from_millis(20));
        }
        last_error = std::fs::read_to_string(process.dir.join("sentinel.log")).unwrap_or_default();
    }
    panic!("a sentinel did not start after 8 attempts: {last_error}");
}
