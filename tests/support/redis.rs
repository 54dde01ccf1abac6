//! Real `redis-server` processes for the global tests: each test starts its own on a free
//! loopback port (never 6379), so it can kill and restart it without touching anyone else's.
//!
//! Also a raw RESP subscriber (a plain `TcpStream`, no Redis client library) to check exactly
//! what evbus publishes, and [`numsub`] to see what Redis has subscribed.
//!
//! Without `redis-server` installed every user of this module panics with the fix: a global
//! test never skips silently.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to answer PING after it was started (the machine is busy).
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a restart keeps trying to bind the old port.
const RESTART_DEADLINE: Duration = Duration::from_secs(30);
/// How long a killed server's port may take to refuse connections.
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// Bound on one request/response with the server (PING, PUBLISH).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

const MISSING: &str = "redis-server not found: install Debian's redis-server package \
                       (apt-get install redis-server)";

/// A `redis-server` child process on `127.0.0.1:port`, killed (and its directory removed) on drop.
pub struct RedisServer {
    port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port:
    /// `--port P --bind 127.0.0.1 --save "" --appendonly no --daemonize no --dir <fresh temp dir>`,
    /// output captured to `redis.log` in that dir, and waits (up to 20 s, polling PING every
    /// 20 ms) until it answers PING.
    ///
    /// # Panics
    /// If `redis-server` is not installed (naming the package to install), or if it does not
    /// come up (with its log).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Same as [`start`](Self::start), with extra config arguments, e.g.
    /// `&["--client-output-buffer-limit", "pubsub 64kb 0 0"]`.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let dir = fresh_dir();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut last_error = String::new();
        for _attempt in 0..8 {
            let port = free_port();
            match spawn_and_wait(&dir, port, &args, START_DEADLINE) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        args,
                        dir,
                        child: Mutex::new(Some(child)),
                    }
                }
                // Most likely someone took the port between our probe and redis' bind.
                Err(error) => last_error = error,
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("redis-server did not start after 8 attempts on fresh ports: {last_error}");
    }

    /// The port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for the process; when it returns the port refuses
    /// connections. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let started = Instant::now();
        while connects(self.port) {
            assert!(
                started.elapsed() < STOP_DEADLINE,
                "redis-server on port {} still accepts connections {STOP_DEADLINE:?} after SIGKILL",
                self.port
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port with the same arguments and waits for PING.
    /// Keeps retrying the bind for up to 30 s if the port is briefly still in use.
    ///
    /// # Panics
    /// If it is still running (call [`stop`](Self::stop) first), or does not come up.
    pub fn restart(&mut self) {
        assert!(!self.is_running(), "restart() of a running redis-server");
        let started = Instant::now();
        loop {
            let remaining = RESTART_DEADLINE.saturating_sub(started.elapsed());
            match spawn_and_wait(
                &self.dir,
                self.port,
                &self.args,
                START_DEADLINE.min(remaining),
            ) {
                Ok(child) => {
                    *self.child.lock().unwrap() = Some(child);
                    return;
                }
                Err(error) if started.elapsed() >= RESTART_DEADLINE => panic!(
                    "redis-server did not restart on port {} within {RESTART_DEADLINE:?}: {error}",
                    self.port
                ),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether the server process is alive.
    pub fn is_running(&self) -> bool {
        match &mut *self.child.lock().unwrap() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Adds (or resets) the ACL user `user` with password `pw`, every key and command, and
    /// only the channels `channels` (ACL patterns such as `&ok:*`); returns its URL here.
    pub fn acl_user(&self, user: &str, channels: &[&str]) -> String {
        let mut args = vec!["ACL", "SETUSER", user, "on", ">pw", "~*", "resetchannels"];
        args.extend_from_slice(channels);
        args.push("+@all");
        self.cli(&args);
        format!("redis://{user}:pw@127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT <args>` and returns its stdout, trimmed.
    ///
    /// # Panics
    /// If redis-cli is missing, fails, or the server answers with an error.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| {
                if error.kind() == ErrorKind::NotFound {
                    panic!("redis-cli not found: install Debian's redis-server package (apt-get install redis-server)")
                }
                panic!("could not run redis-cli {args:?}: {error}")
            });
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        assert!(
            output.status.success() && !stdout.starts_with("ERR") && !stdout.starts_with("(error)"),
            "redis-cli {args:?} on port {} failed ({}): stdout {stdout:?}, stderr {stderr:?}",
            self.port,
            output.status
        );
        stdout
    }

    /// PUBLISH of arbitrary bytes on `channel` (binary-safe: sent as one RESP bulk string).
    /// Returns how many subscribers Redis says received it.
    ///
    /// # Panics
    /// If the server is unreachable or answers with an error.
    pub fn publish_raw(&self, channel: &str, payload: &[u8]) -> u64 {
        let mut connection = Connection::open(self.port, IO_TIMEOUT).unwrap_or_else(|error| {
            panic!("publish_raw: cannot connect to port {}: {error}", self.port)
        });
        match connection.request(&[b"PUBLISH", channel.as_bytes(), payload]) {
            Ok(Resp::Integer(n)) => n as u64,
            other => panic!(
                "PUBLISH {channel} on port {}: unexpected reply {other:?}",
                self.port
            ),
        }
    }

    /// The server's captured output so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `PUBSUB NUMSUB channel`: how many connections `server` has subscribed to `channel`. Read
/// from the RESP reply (`[channel, count]`), not from redis-cli's printout.
///
/// # Panics
/// If the server is unreachable or the reply is not `[channel, count]`.
pub fn numsub(server: &RedisServer, channel: &str) -> u64 {
    let mut connection = Connection::open(server.port, IO_TIMEOUT).unwrap_or_else(|error| {
        panic!(
            "PUBSUB NUMSUB: cannot connect to port {}: {error}",
            server.port
        )
    });
    let reply = connection.request(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()]);
    if let Ok(Resp::Array(Some(items))) = &reply {
        if let [Resp::Bulk(Some(name)), Resp::Integer(count)] = &items[..] {
            if name == channel.as_bytes() {
                return *count as u64;
            }
        }
    }
    panic!("PUBSUB NUMSUB {channel}: unexpected reply {reply:?}")
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("args", &self.args)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A fresh, empty directory under the system temp dir.
fn fresh_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "evbus-redis-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A port nobody listens on, for a server that may be stopped and restarted on it, or for a
/// server's second port (`tests/tls.rs` gives it to `--tls-port`).
///
/// Taken below the kernel's ephemeral range (32768 and up here), from a range no other
/// process of ours picks from, so that while a server is stopped its port is not handed to an
/// outgoing connection (a client's local port) or to another test's `bind(0)`; and never twice
/// in one test process. The start in the range depends on the process id, so test binaries
/// that run at the same time start far apart.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    let start = (std::process::id().wrapping_mul(2_654_435_761)) % SPAN;
    for offset in 0..SPAN {
        let port = (FIRST + (start + offset * 7) % SPAN) as u16;
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// Spawns redis-server on `port` and waits until it answers PING; `Err` with the log if it
/// exited (e.g. could not bind) or did not answer within `deadline`.
fn spawn_and_wait(
    dir: &Path,
    port: u16,
    args: &[String],
    deadline: Duration,
) -> Result<Child, String> {
    let log_path = dir.join("redis.log");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
    let log_err = log.try_clone().expect("clone log file handle");
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            let _ = fs::remove_dir_all(dir);
            panic!("{MISSING}")
        }
        Err(error) => panic!("could not run redis-server: {error}"),
    };
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "redis-server on port {port} exited with {status}; log:\n{log}"
            ));
        }
        if ping(port, Duration::from_millis(500)) {
            return Ok(child);
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "redis-server on port {port} did not answer PING within {deadline:?}; log:\n{log}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether something accepts a TCP connection on the port.
fn connects(port: u16) -> bool {
    TcpStream::connect_timeout(&addr(port), Duration::from_millis(200)).is_ok()
}

/// Whether a Redis server answers PING on the port.
fn ping(port: u16, timeout: Duration) -> bool {
    let Ok(mut connection) = Connection::open(port, timeout) else {
        return false;
    };
    matches!(connection.request(&[b"PING"]), Ok(Resp::Simple(s)) if s == "PONG")
}

// ---- RESP -----------------------------------------------------------------------------------

/// One RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

fn encode_command(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one value from the start of `buf`: `Ok(Some((value, bytes used)))`, `Ok(None)` if
/// `buf` holds only part of it, `Err` if it is not RESP.
fn parse(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if line_end == 0 {
        return Err("RESP value without a type byte".into());
    }
    let line =
        std::str::from_utf8(&buf[1..line_end]).map_err(|e| format!("non-UTF-8 header: {e}"))?;
    let after = line_end + 2;
    let number = || {
        line.parse::<i64>()
            .map_err(|e| format!("bad length {line:?}: {e}"))
    };
    match buf[0] {
        b'+' => Ok(Some((Resp::Simple(line.to_string()), after))),
        b'-' => Ok(Some((Resp::Error(line.to_string()), after))),
        b':' => Ok(Some((Resp::Integer(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            let end = after + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string not followed by CRLF".into());
            }
            Ok(Some((Resp::Bulk(Some(buf[after..end].to_vec())), end + 2)))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Resp::Array(None), after)));
            }
            let mut items = Vec::with_capacity(len as usize);
            let mut at = after;
            for _ in 0..len {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(Some(items)), at)))
        }
        other => Err(format!("unexpected RESP type byte {other:#04x}")),
    }
}

/// A RESP connection with its own read buffer, so a read that times out mid-value loses
/// nothing: the next read continues where it stopped.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    fn open(port: u16, timeout: Duration) -> std::io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr(port), timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout.max(IO_TIMEOUT)))?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(Connection {
            stream,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        self.stream.write_all(&encode_command(parts))
    }

    fn request(&mut self, parts: &[&[u8]]) -> Result<Resp, String> {
        self.send(parts).map_err(|e| e.to_string())?;
        self.read(Instant::now() + IO_TIMEOUT)?
            .ok_or_else(|| "no reply in time".to_string())
    }

    /// The next value, or `Ok(None)` at `deadline`.
    fn read(&mut self, deadline: Instant) -> Result<Option<Resp>, String> {
        loop {
            if let Some((value, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(value));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(|e| e.to_string())?;
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed by the server".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

// ---- RawSubscriber --------------------------------------------------------------------------

/// A raw RESP connection subscribed to some channels, to see exactly what evbus publishes.
pub struct RawSubscriber {
    connection: Connection,
}

impl RawSubscriber {
    /// Connects, sends SUBSCRIBE, and returns once Redis confirmed every channel.
    ///
    /// # Panics
    /// If the server is unreachable or does not confirm within 20 s.
    pub fn connect(server: &RedisServer, channels: &[&str]) -> RawSubscriber {
        assert!(
            !channels.is_empty(),
            "RawSubscriber needs at least one channel"
        );
        let mut connection = Connection::open(server.port(), IO_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "RawSubscriber: cannot connect to port {}: {e}",
                server.port()
            )
        });
        let mut parts: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        parts.extend(channels.iter().map(|c| c.as_bytes()));
        connection
            .send(&parts)
            .unwrap_or_else(|e| panic!("RawSubscriber: SUBSCRIBE failed: {e}"));
        let deadline = Instant::now() + START_DEADLINE;
        let mut pending: Vec<&str> = channels.to_vec();
        while !pending.is_empty() {
            let reply = connection
                .read(deadline)
                .unwrap_or_else(|e| panic!("RawSubscriber: {e}"))
                .unwrap_or_else(|| {
                    panic!("RawSubscriber: SUBSCRIBE of {pending:?} not confirmed in time")
                });
            match reply {
                Resp::Array(Some(items)) if items.len() == 3 && items[0] == bulk(b"subscribe") => {
                    if let Resp::Bulk(Some(channel)) = &items[1] {
                        let channel = String::from_utf8_lossy(channel);
                        if let Some(i) = pending.iter().position(|c| *c == channel) {
                            pending.remove(i);
                        }
                    }
                }
                other => panic!("RawSubscriber: unexpected reply to SUBSCRIBE: {other:?}"),
            }
        }
        RawSubscriber { connection }
    }

    /// The next published message as `(channel, payload)`, or `None` after `timeout`.
    ///
    /// # Panics
    /// If the connection breaks or the server sends something that is not RESP.
    pub fn next_message(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self
                .connection
                .read(deadline)
                .unwrap_or_else(|e| panic!("RawSubscriber: {e}"))?;
            if let Resp::Array(Some(items)) = value {
                if let [kind, Resp::Bulk(Some(channel)), Resp::Bulk(Some(payload))] = &items[..] {
                    if *kind == bulk(b"message") {
                        return Some((
                            String::from_utf8_lossy(channel).into_owned(),
                            payload.clone(),
                        ));
                    }
                }
            }
            // Anything else (a late subscribe confirmation) is not a message: keep reading.
        }
    }
}

fn bulk(bytes: &[u8]) -> Resp {
    Resp::Bulk(Some(bytes.to_vec()))
}
