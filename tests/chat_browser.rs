//! The chat example (examples/chat/) in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), opens the page on two chat servers that share one Redis, as the
//! same user in two windows. A line sent on one shows on the other; bad input gets error
//! frames and leaves the connection and the servers up; "sign out everywhere" on one page
//! closes the other page's connection (and not another user's), and every closed connection's
//! session is gone from its server.
//!
//! It starts its own `redis-server` (tests/support/redis.rs), two chat servers (the example's
//! binary, which `cargo test` builds before it runs the tests; alone, run
//! `cargo build --example chat` first), and `chromedriver`, each on a free loopback port, and
//! kills them all when it ends. Without Chromium it fails, naming Debian's packages to
//! install. It waits on conditions with generous deadlines, never on fixed sleeps.
//!
//! `EVBUS_CHAT_SCREENSHOT=examples/chat/screenshot.png cargo test --test chat_browser` also
//! saves a picture of the two pages, side by side, after the first lines were exchanged.

#[path = "support/redis.rs"]
mod redis;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fantoccini::wd::WindowHandle;
use fantoccini::{Client, ClientBuilder, Locator};
use redis::RedisServer;
use serde::Deserialize;
use serde_json::{json, Value};

/// Bound on every wait for a condition (the machine is a busy 2-core one).
const DEADLINE: Duration = Duration::from_secs(30);
/// Bound on the whole browser scenario, so that a hung WebDriver call fails the test.
const SCENARIO_BOUND: Duration = Duration::from_secs(300);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);
/// Window size of each page (and so of each half of the screenshot).
const WINDOW: (u32, u32) = (620, 640);

const MISSING_BROWSER: &str = "chromium and chromedriver not found: install Debian's chromium \
                               and chromium-driver packages (apt-get install chromium \
                               chromium-driver)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_a_room_and_sign_out_closes_everywhere() {
    let browser = find_on_path("chromium").expect(MISSING_BROWSER);
    let driver_binary = find_on_path("chromedriver").expect(MISSING_BROWSER);
    let chat_binary = chat_example();
    let dir = TempDir::new("chat-browser");
    let redis = RedisServer::start();

    let mut one = Process::spawn_chat(&chat_binary, &redis.url(), &dir.0.join("one.log"));
    let mut two = Process::spawn_chat(&chat_binary, &redis.url(), &dir.0.join("two.log"));
    let servers = [one.listening_port(), two.listening_port()];
    let driver = Process::spawn_chromedriver(&driver_binary, &dir.0.join("chromedriver.log"));

    let client = connect_webdriver(driver.port, &browser, &dir.0.join("profile")).await;
    let scenario = tokio::spawn(scenario(client.clone(), servers, dir.0.clone()));
    let outcome = tokio::time::timeout(SCENARIO_BOUND, scenario).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), client.close()).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(failed)) => std::panic::resume_unwind(failed.into_panic()),
        Err(_) => panic!("the browser scenario did not finish within {SCENARIO_BOUND:?}"),
    }
    // Nothing the browser sent took a server down.
    assert!(one.is_running(), "chat server one exited:\n{}", one.log());
    assert!(two.is_running(), "chat server two exited:\n{}", two.log());
}

async fn scenario(client: Client, [port_one, port_two]: [u16; 2], dir: PathBuf) {
    // The first window, on server one; the second, opened beside it, on server two.
    let first = client.window().await.expect("the first window");
    let a = Page::open(&client, first, "page A", port_one).await;
    let second = client
        .new_window(false)
        .await
        .expect("a second window")
        .handle;
    let b = Page::open(&client, second, "page B", port_two).await;

    a.sign_in("ada").await;
    b.sign_in("ada").await;
    a.join("lobby").await;
    b.join("lobby").await;
    // Another user on server two, straight from B's JavaScript: ada's sign-out must not close it.
    b.run(GRACE_CONNECTS).await;
    b.wait_for_script("grace's connection is welcomed", GRACE_WELCOMED)
        .await;

    // A line from A reaches B through Redis, and one from B reaches A.
    a.say("lobby", "hello from the first server").await;
    b.wait_for_line(&format!("ada via :{port_one}: hello from the first server"))
        .await;
    b.say("lobby", "and hello back from the second").await;
    a.wait_for_line(&format!(
        "ada via :{port_two}: and hello back from the second"
    ))
    .await;
    if let Some(path) = std::env::var_os("EVBUS_CHAT_SCREENSHOT") {
        save_screenshot(&client, &[&a, &b], &dir, Path::new(&path)).await;
    }

    // Bad input from A's page: each gets an error frame, and the connection stays up.
    a.run(BAD_INPUT).await;
    for error in [
        "invalid JSON",
        "message too large: ",
        "not a request (unknown variant `shout`",
        "unknown room \"No Such Room!\"",
        "binary frames are not read",
    ] {
        a.wait_until(&format!("an error frame saying {error:?}"), |page| {
            page.errors().any(|(text, _)| text.contains(error))
        })
        .await;
    }
    // 10,000 joins: 15 more rooms beside lobby make 16, the rest are refused, one frame each.
    a.wait_until("9985 \"too many rooms\" error frames", |page| {
        page.errors()
            .any(|(text, count)| text.contains("too many rooms") && count == 9985)
    })
    .await;
    let snapshot = a.snapshot().await;
    let joined = snapshot
        .lines
        .iter()
        .filter(|l| l.text.starts_with("joined #"));
    assert_eq!(joined.count(), 16, "rooms joined by A: {snapshot:#?}");
    assert_eq!(snapshot.state, "open", "A's connection after bad input");
    a.say("lobby", "still here after all that").await;
    b.wait_for_line(&format!("ada via :{port_one}: still here after all that"))
        .await;

    // Sign out everywhere, on A: B's connection (same user, other server) closes, and A's.
    a.click("#signout").await;
    for page in [&b, &a] {
        page.wait_until("its connection is closed by the sign-out", |page| {
            page.state == "closed"
                && page.code.as_deref() == Some("4001")
                && page.status.contains("signed out everywhere")
        })
        .await;
    }
    let grace = b.run("return window.grace.readyState").await;
    assert_eq!(grace, json!(1), "grace's connection must stay open (1)");

    // The closed connections' sessions are gone: no connection, no stream left on server one;
    // on server two only grace's, until her socket closes too.
    wait_for_stats(port_one, 0, 0).await;
    wait_for_stats(port_two, 1, 1).await;
    b.run("window.grace.close()").await;
    wait_for_stats(port_two, 0, 0).await;
}

/// Opens a WebSocket as grace and keeps what it receives.
const GRACE_CONNECTS: &str = r#"
    const grace = new WebSocket(`ws://${location.host}/ws?user=grace`);
    grace.received = [];
    grace.onmessage = (event) => grace.received.push(JSON.parse(event.data).type);
    window.grace = grace;
"#;
const GRACE_WELCOMED: &str = "return window.grace.received.includes('welcome')";

/// Sent through A's own socket: invalid JSON, an oversized frame, an unknown request, an
/// unknown room, a binary frame, then 10,000 joins.
const BAD_INPUT: &str = r#"
    const ws = window.chat.ws;
    ws.send('{"type": "say", "room": "lobby", "text": "no end');
    ws.send(JSON.stringify({ type: "say", room: "lobby", text: "x".repeat(10000) }));
    ws.send(JSON.stringify({ type: "shout", room: "lobby" }));
    ws.send(JSON.stringify({ type: "join", room: "No Such Room!" }));
    ws.send(new Uint8Array([0, 1, 2, 3]));
    for (let i = 0; i < 10000; i++) ws.send(JSON.stringify({ type: "join", room: "room-" + i }));
"#;

/// What a page shows, read through its DOM.
const SNAPSHOT: &str = r##"
    const status = document.getElementById("status");
    return {
        state: status.dataset.state,
        status: status.textContent,
        code: status.dataset.code || null,
        lines: [...document.querySelectorAll("#log li")].map((li) => ({
            kind: li.className,
            text: li.dataset.message,
            count: Number(li.dataset.count),
        })),
    };
"##;

#[derive(Deserialize, Debug)]
struct Snapshot {
    state: String,
    status: String,
    code: Option<String>,
    lines: Vec<Line>,
}

#[derive(Deserialize, Debug)]
struct Line {
    kind: String,
    text: String,
    count: u64,
}

impl Snapshot {
    /// The error lines: text and how many times in a row it came.
    fn errors(&self) -> impl Iterator<Item = (&str, u64)> {
        self.lines
            .iter()
            .filter(|line| line.kind == "error")
            .map(|line| (line.text.as_str(), line.count))
    }
}

/// One browser window showing the chat page of one server.
struct Page<'a> {
    client: &'a Client,
    window: WindowHandle,
    name: &'static str,
    port: u16,
}

impl<'a> Page<'a> {
    async fn open(client: &'a Client, window: WindowHandle, name: &'static str, port: u16) -> Self {
        let page = Page {
            client,
            window,
            name,
            port,
        };
        page.focus().await;
        let (width, height) = WINDOW;
        client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("{name}: set_window_size: {e}"));
        client
            .goto(&format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap_or_else(|e| panic!("{name}: opening the page of :{port}: {e}"));
        page
    }

    /// Makes this window the one WebDriver commands go to.
    async fn focus(&self) {
        self.client
            .switch_to_window(self.window.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: switch_to_window: {e}", self.name));
    }

    async fn run(&self, script: &str) -> Value {
        self.focus().await;
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    async fn snapshot(&self) -> Snapshot {
        let value = self.run(SNAPSHOT).await;
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{}: snapshot {value}: {e}", self.name))
    }

    async fn type_into(&self, selector: &str, text: &str) {
        self.focus().await;
        let field = self.find(selector).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("{}: clearing {selector}: {e}", self.name));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: typing into {selector}: {e}", self.name));
    }

    async fn click(&self, selector: &str) {
        self.focus().await;
        self.find(selector)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: clicking {selector}: {e}", self.name));
    }

    async fn find(&self, selector: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{}: no {selector}: {e}", self.name))
    }

    /// Types the name, clicks Connect, waits for the server's welcome.
    async fn sign_in(&self, user: &str) {
        self.type_into("#user", user).await;
        self.click("#connect").await;
        let welcome = format!("signed in as {user} on :{}", self.port);
        self.wait_until(&format!("{user} is signed in"), |page| {
            page.state == "open" && page.lines.iter().any(|l| l.text.starts_with(&welcome))
        })
        .await;
    }

    /// Joins a room the way a person does; returns once the server confirmed it.
    async fn join(&self, room: &str) {
        self.type_into("#room", room).await;
        self.click("#join").await;
        let joined = format!("joined #{room}");
        self.wait_until(&joined, |page| page.lines.iter().any(|l| l.text == joined))
            .await;
    }

    /// Chooses the room in the page's room list, types the line, clicks Send.
    async fn say(&self, room: &str, text: &str) {
        self.focus().await;
        self.find("#to")
            .await
            .select_by_value(room)
            .await
            .unwrap_or_else(|e| panic!("{}: choosing room {room}: {e}", self.name));
        self.type_into("#text", text).await;
        self.click("#send").await;
    }

    async fn wait_for_line(&self, line: &str) {
        self.wait_until(&format!("the line {line:?}"), |page| {
            page.lines
                .iter()
                .any(|l| l.kind == "message" && l.text.ends_with(line))
        })
        .await;
    }

    /// Polls the page until `condition` holds of what it shows.
    ///
    /// # Panics
    /// After [`DEADLINE`], with what the page shows.
    async fn wait_until(&self, what: &str, condition: impl Fn(&Snapshot) -> bool) {
        let started = Instant::now();
        loop {
            let snapshot = self.snapshot().await;
            if condition(&snapshot) {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{} (on :{}): timed out after {DEADLINE:?} waiting until {what}; it shows {snapshot:#?}",
                self.name,
                self.port
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls the page until `script` returns true.
    ///
    /// # Panics
    /// After [`DEADLINE`].
    async fn wait_for_script(&self, what: &str, script: &str) {
        let started = Instant::now();
        while self.run(script).await != json!(true) {
            assert!(
                started.elapsed() < DEADLINE,
                "{} (on :{}): timed out after {DEADLINE:?} waiting until {what}",
                self.name,
                self.port
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Waits until the server's `/stats` shows `connections` open connections and `streams`
/// registered streams: a closed connection's session has let go of its streams.
async fn wait_for_stats(port: u16, connections: u64, streams: u64) {
    let started = Instant::now();
    loop {
        let stats = tokio::task::spawn_blocking(move || http_get_json(port, "/stats"))
            .await
            .expect("the stats request");
        if stats["connections"] == json!(connections) && stats["streams"] == json!(streams) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "server :{port}: timed out after {DEADLINE:?} waiting for {connections} connections \
             and {streams} streams; /stats says {stats}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A GET over HTTP/1.0 (the server closes the connection after the response), body as JSON.
fn http_get_json(port: u16, path: &str) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting for /stats");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("set_read_timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("sending GET");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading the response");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("no HTTP body in {response:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e} in {body:?}"))
}

/// Screenshots of the pages, put side by side in one more window, saved as one PNG.
async fn save_screenshot(client: &Client, pages: &[&Page<'_>], dir: &Path, to: &Path) {
    let mut figures = String::new();
    for (i, page) in pages.iter().enumerate() {
        page.focus().await;
        let png = client.screenshot().await.expect("a screenshot");
        let file = format!("page-{i}.png");
        fs::write(dir.join(&file), png).expect("writing a page's screenshot");
        figures.push_str(&format!(
            "<figure><figcaption>{} &middot; server :{}</figcaption><img src=\"{file}\"></figure>",
            page.name, page.port
        ));
    }
    let html = format!(
        "<!doctype html><style>body{{margin:0;padding:10px;display:flex;gap:10px;\
         background:#c5ccd6;font:13px system-ui,sans-serif}}figure{{margin:0}}\
         figcaption{{padding:0 0 4px 2px;color:#2b3442}}img{{display:block;\
         box-shadow:0 1px 4px #0004}}</style>{figures}"
    );
    let side_by_side = dir.join("side-by-side.html");
    fs::write(&side_by_side, html).expect("writing the side-by-side page");
    let window = client.new_window(false).await.expect("a window").handle;
    client.switch_to_window(window).await.expect("switch");
    let (width, height) = WINDOW;
    client
        .set_window_size(width * 2 + 30, height + 46)
        .await
        .expect("set_window_size");
    client
        .goto(&format!("file://{}", side_by_side.display()))
        .await
        .expect("opening the side-by-side page");
    let png = client.screenshot().await.expect("a screenshot");
    fs::write(to, png).unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
    client.close_window().await.expect("closing the window");
    eprintln!("saved {}", to.display());
}

// ---- processes --------------------------------------------------------------------------------

/// A child process in a process group of its own, killed (the whole group, so also a browser
/// that chromedriver started) on drop; its output goes to a log file.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Process {
    fn spawn(name: &'static str, command: &mut Command, log: &Path) -> Process {
        use std::os::unix::process::CommandExt;
        let out = fs::File::create(log).expect("creating a log file");
        let err = out.try_clone().expect("cloning a log file handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name}: {e}"));
        Process {
            name,
            child,
            log: log.to_path_buf(),
            port: 0,
        }
    }

    /// The chat example on any free port (PORT=0), sharing `redis_url`.
    fn spawn_chat(binary: &Path, redis_url: &str, log: &Path) -> Process {
        let mut command = Command::new(binary);
        command
            .env("REDIS_URL", redis_url)
            .env("PORT", "0")
            .env("HOST", "127.0.0.1");
        Process::spawn("chat server", &mut command, log)
    }

    /// Waits for the chat server's "listening on" line and returns its port.
    fn listening_port(&mut self) -> u16 {
        let started = Instant::now();
        loop {
            let log = self.log();
            if let Some(port) = log
                .lines()
                .find_map(|line| line.strip_prefix("chat: listening on http://127.0.0.1:"))
            {
                self.port = port.trim().parse().expect("a port number");
                return self.port;
            }
            assert!(
                self.is_running(),
                "the {} exited before it listened:\n{log}",
                self.name
            );
            assert!(
                started.elapsed() < DEADLINE,
                "the {} did not listen within {DEADLINE:?}:\n{log}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// chromedriver on a free loopback port, once it accepts connections.
    fn spawn_chromedriver(binary: &Path, log: &Path) -> Process {
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let mut command = Command::new(binary);
            command.arg(format!("--port={port}"));
            let mut driver = Process::spawn("chromedriver", &mut command, log);
            driver.port = port;
            let started = Instant::now();
            while driver.is_running() && started.elapsed() < DEADLINE {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return driver;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Most likely the port was taken between the probe and chromedriver's bind.
            last = driver.log();
        }
        panic!("chromedriver did not start:\n{last}");
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
        // The whole group: chromedriver's browser goes with it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebDriver session with headless Chromium, over plain HTTP to the loopback chromedriver.
async fn connect_webdriver(port: u16, browser: &Path, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        // Two windows at once: neither is a background one to be slowed down.
        "--disable-background-timer-throttling",
        "--disable-backgrounding-occluded-windows",
        "--disable-renderer-backgrounding",
        "--hide-scrollbars",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": browser, "args": args },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut builder = ClientBuilder::new(connector);
    builder.capabilities(capabilities);
    let url = format!("http://127.0.0.1:{port}");
    let connecting = builder.connect(&url);
    match tokio::time::timeout(Duration::from_secs(60), connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("could not start headless Chromium through chromedriver: {e}"),
        Err(_) => panic!("headless Chromium did not start within 60 s"),
    }
}

/// The chat example's binary, beside this test's: `target/<profile>/examples/chat`.
fn chat_example() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/chat_browser-HASH
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("chat{}", std::env::consts::EXE_SUFFIX));
    let built = fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: `cargo test` builds it; alone, run `cargo build --example chat` \
                 first",
                binary.display()
            )
        });
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for sources in [manifest.join("examples/chat"), manifest.join("src")] {
        if let Some(newer) = newer_than(&sources, built) {
            panic!(
                "{} is older than {}: run `cargo build --example chat` (or plain `cargo test`)",
                binary.display(),
                newer.display()
            );
        }
    }
    binary
}

/// A `.rs` or `.html` file under `dir` modified after `time`.
fn newer_than(dir: &Path, time: SystemTime) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(newer) = newer_than(&path, time) {
                return Some(newer);
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("rs" | "html")
        ) && entry.metadata().and_then(|m| m.modified()).ok()? > time
        {
            return Some(path);
        }
    }
    None
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A port nobody listens on now (the OS picks it).
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("evbus-{name}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                eprintln!("could not remove {}: {e}", self.0.display())
            }
            _ => {}
        }
    }
}
