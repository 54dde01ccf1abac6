//! A TCP proxy on loopback that a bench can cut, so that one bus loses Redis while the others
//! keep it: the bus under test connects to the proxy, the others to Redis directly.
//!
//! - [`Proxy::block`] drops every connection through the proxy (both ends are closed, so the
//!   bus sees its connections end and Redis forgets their subscriptions) and closes the
//!   proxy's port: a reconnect is refused (`ECONNREFUSED`), as if the Redis host were gone.
//!   Refused rather than held open: a held connection would look established to the client
//!   and leave it waiting on a command timeout instead of reconnecting.
//! - [`Proxy::unblock`] opens the same port again; new connections are forwarded.
//! - [`Proxy::accepted`] says when the connections since the last `unblock` were accepted:
//!   when the client was back, as seen from the network, not from its own reports.
//!
//! Included with `#[path = "support/proxy.rs"] mod proxy;`. Needs a tokio runtime with I/O.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// How long `unblock` keeps trying to bind the port again.
const REBIND_DEADLINE: Duration = Duration::from_secs(10);

/// A proxy from `127.0.0.1:port` to `127.0.0.1:upstream`.
pub struct Proxy {
    listen: SocketAddr,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
}

struct State {
    blocked: bool,
    /// When each connection since the last `unblock` was accepted.
    accepted: Vec<Instant>,
    /// The accept loop and one task per forwarded connection; dropping a task drops its
    /// sockets.
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Starts forwarding `127.0.0.1:port` to `127.0.0.1:upstream`. Take `port` from
    /// `tests/support/redis.rs`'s `free_port` (below the ephemeral range), so that nothing
    /// else is given it while the proxy is blocked.
    ///
    /// # Panics
    /// If the port cannot be bound.
    pub async fn start(port: u16, upstream: u16) -> Proxy {
        let proxy = Proxy {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream)),
            state: Arc::new(Mutex::new(State {
                blocked: true,
                accepted: Vec::new(),
                tasks: JoinSet::new(),
            })),
        };
        proxy.unblock().await;
        proxy
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.listen)
    }

    /// Drops every connection through the proxy and closes its port. When it returns, every
    /// socket of the proxy is closed and new connections are refused. Idempotent.
    pub async fn block(&self) {
        let mut tasks = {
            let mut state = self.state.lock().unwrap();
            state.blocked = true;
            std::mem::take(&mut state.tasks)
        };
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    /// When the connections made since the last [`unblock`](Self::unblock) were accepted,
    /// oldest first.
    pub fn accepted(&self) -> Vec<Instant> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Opens the port again and forwards new connections. Idempotent.
    ///
    /// # Panics
    /// If the port cannot be bound again within 10 s.
    pub async fn unblock(&self) {
        if !self.state.lock().unwrap().blocked {
            return;
        }
        let listener = bind(self.listen).await;
        let mut state = self.state.lock().unwrap();
        state.blocked = false;
        state.accepted.clear();
        state
            .tasks
            .spawn(accept(listener, self.upstream, self.state.clone()));
    }
}

/// Binds `addr` with `SO_REUSEADDR` (the connections of the last opening may linger in
/// TIME_WAIT on it), retrying while it is still in use.
async fn bind(addr: SocketAddr) -> TcpListener {
    let started = Instant::now();
    loop {
        let socket = TcpSocket::new_v4().expect("proxy socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return listener,
            Err(error) if error.kind() == ErrorKind::AddrInUse => {
                assert!(
                    started.elapsed() < REBIND_DEADLINE,
                    "proxy: {addr} still in use after {REBIND_DEADLINE:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("proxy: cannot listen on {addr}: {error}"),
        }
    }
}

/// Accepts connections and forwards each, until aborted by `block`.
async fn accept(listener: TcpListener, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    loop {
        let accepted = listener.accept().await;
        let at = Instant::now();
        let Ok((client, _)) = accepted else {
            // Out of descriptors, most likely: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut state = state.lock().unwrap();
        // `block` took the task set while this one was accepting: the connection is dropped.
        if state.blocked {
            return;
        }
        state.accepted.push(at);
        state.tasks.spawn(forward(client, upstream));
    }
}

/// Copies both ways between `client` and a new connection to `upstream` until either ends.
async fn forward(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
