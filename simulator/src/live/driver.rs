//! The open-model engine of the live driver: `connections` keep-alive HTTP/1.1
//! connections (httparse over tokio sockets, no pool in the way), each
//! taking the next scheduled send in time order, waiting for its time and
//! sending it. A send whose time came while every connection was still busy
//! (picked up more than [`LATE_MS`] after its time) is dropped and counted,
//! never sent late, so the offered rate is the schedule's whatever the target
//! does. Latency is measured from the scheduled time, in µs. Each connection
//! keeps its own figures (no lock on the hot path); they merge at the end.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How late a connection may pick up a send and still send it, ms: the timer's
/// granularity. Later means no connection was free at its time: dropped.
pub const LATE_MS: u64 = 2;

/// One scheduled send.
#[derive(Debug)]
pub struct Slot<M> {
    /// When it is due.
    pub due: Instant,
    /// The JSON body.
    pub body: Bytes,
    /// What the caller needs back with the answer.
    pub meta: M,
}

/// Where the connections take their sends from.
pub enum Feed<M> {
    /// Sends at a fixed rate until `end`, the `k`-th made by `make(k)`.
    Fixed {
        /// Time zero.
        zero: Instant,
        /// Between sends, ns.
        interval_ns: u64,
        /// No send due at or after this.
        end: Instant,
        /// The next `k`.
        next: AtomicU64,
        /// Sends skipped because no connection was free at their time
        /// (counted here in bulk, never built).
        skipped: AtomicU64,
        /// The `k`-th send's body and meta.
        make: Box<dyn Fn(u64) -> (Bytes, M) + Send + Sync>,
    },
    /// Sends pushed by a producer in time order.
    Queue {
        /// Waiting sends.
        queue: Mutex<VecDeque<Slot<M>>>,
        /// Woken on a push or on close.
        notify: Notify,
        /// No more pushes.
        closed: AtomicBool,
    },
}

impl<M> std::fmt::Debug for Feed<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Feed::Fixed { interval_ns, .. } => write!(f, "Feed::Fixed({interval_ns} ns)"),
            Feed::Queue { .. } => write!(f, "Feed::Queue"),
        }
    }
}

impl<M> Feed<M> {
    /// A queue feed.
    pub fn queue() -> Self {
        Feed::Queue {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Push a send (queue feeds).
    pub fn push(&self, slot: Slot<M>) {
        if let Feed::Queue { queue, notify, .. } = self {
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_back(slot);
            notify.notify_one();
        }
    }

    /// No more sends (queue feeds).
    pub fn close(&self) {
        if let Feed::Queue { closed, notify, .. } = self {
            closed.store(true, Ordering::SeqCst);
            notify.notify_waiters();
        }
    }

    /// Sends waiting (queue feeds).
    pub fn len(&self) -> usize {
        match self {
            Feed::Queue { queue, .. } => queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len(),
            Feed::Fixed { .. } => 0,
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn next(&self) -> Option<Slot<M>> {
        match self {
            Feed::Fixed {
                zero,
                interval_ns,
                end,
                next,
                skipped,
                make,
            } => {
                let interval = (*interval_ns).max(1);
                let due_of = |k: u64| *zero + Duration::from_nanos(k.saturating_mul(interval));
                // Sends due before `end`: the ones that exist, so the only ones
                // that can be skipped.
                let count = end
                    .saturating_duration_since(*zero)
                    .as_nanos()
                    .div_ceil(u128::from(interval)) as u64;
                let k = loop {
                    let k = next.load(Ordering::Relaxed);
                    let now = Instant::now();
                    // Every send due more than LATE_MS ago found no free
                    // connection: skip them all, take the one due now.
                    let (take, late) = if now.saturating_duration_since(due_of(k))
                        > Duration::from_millis(LATE_MS)
                    {
                        let due_now =
                            ((now.duration_since(*zero).as_nanos() / u128::from(interval)) as u64)
                                .min(count);
                        (due_now.max(k), due_now.saturating_sub(k))
                    } else {
                        (k, 0)
                    };
                    if next
                        .compare_exchange(k, take + 1, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        skipped.fetch_add(late, Ordering::Relaxed);
                        break take;
                    }
                };
                let due = due_of(k);
                if due >= *end {
                    return None;
                }
                let (body, meta) = make(k);
                Some(Slot { due, body, meta })
            }
            Feed::Queue {
                queue,
                notify,
                closed,
            } => loop {
                let notified = notify.notified();
                if let Some(slot) = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop_front()
                {
                    return Some(slot);
                }
                if closed.load(Ordering::SeqCst) {
                    return None;
                }
                notified.await;
            },
        }
    }
}

/// What became of one send.
#[derive(Debug)]
pub enum Answer {
    /// The target answered.
    Answered {
        /// HTTP status.
        status: u16,
        /// The body.
        body: Bytes,
        /// From the scheduled time to the answer, µs.
        latency_us: u64,
    },
    /// No free connection at its time: not sent.
    Dropped,
    /// Sent, but the connection failed before an answer.
    Failed {
        /// Why.
        error: String,
    },
}

/// One keep-alive HTTP/1.1 connection: the request written in one call from a
/// reused buffer, the answer read into a reused buffer and parsed by
/// `httparse` (hyper's parser). No task, channel or header map per request:
/// measured, hyper's client connection spent ~5 µs of user CPU per request
/// here against wrk's ~1 µs, most of it in its dispatch machinery.
struct Connection {
    addr: SocketAddr,
    host: String,
    stream: Option<tokio::net::TcpStream>,
    out: Vec<u8>,
    input: Vec<u8>,
}

/// Most header bytes an answer may have.
const HEAD_MAX: usize = 64 * 1024;
/// Largest answer body read.
const BODY_MAX: usize = 16 * 1024 * 1024;
/// Longest a send waits for its answer (connect included) before it counts as
/// failed: a target that never answers must not hold a connection, and so the
/// whole load, for ever.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(30);

impl Connection {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            stream: None,
            out: Vec::with_capacity(1024),
            input: Vec::with_capacity(16 * 1024),
        }
    }

    async fn post(
        &mut self,
        path: &str,
        body: &[u8],
        shadow: bool,
    ) -> Result<(u16, Bytes), String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        if self.stream.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        self.out.clear();
        self.out.extend_from_slice(b"POST ");
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.out.extend_from_slice(self.host.as_bytes());
        self.out
            .extend_from_slice(b"\r\nContent-Type: application/json\r\n");
        if shadow {
            self.out.extend_from_slice(b"X-Shadow: 1\r\n");
        }
        self.out.extend_from_slice(b"Content-Length: ");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(body);
        let result = async {
            let stream = self.stream.as_mut().ok_or("no connection")?;
            stream
                .write_all(&self.out)
                .await
                .map_err(|e| format!("sending: {e}"))?;
            self.input.clear();
            loop {
                if let Some(answer) = parse_answer(&self.input)? {
                    return Ok(answer);
                }
                if self.input.len() > HEAD_MAX + BODY_MAX {
                    return Err("the answer is too large".to_owned());
                }
                let n = stream
                    .read_buf(&mut self.input)
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?;
                if n == 0 {
                    return Err("the target closed the connection".to_owned());
                }
            }
        }
        .await;
        match result {
            Ok(Parsed {
                status,
                body,
                close,
            }) => {
                if close {
                    self.stream = None;
                }
                Ok((status, body))
            }
            Err(e) => {
                // The next send reconnects.
                self.stream = None;
                Err(e)
            }
        }
    }
}

/// A complete answer.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    status: u16,
    body: Bytes,
    /// The target will close the connection after it.
    close: bool,
}

/// Parse an HTTP/1.1 answer from `input`: `None` while incomplete. Bodies by
/// `Content-Length` or chunked; without either, an answer with no body.
fn parse_answer(input: &[u8]) -> Result<Option<Parsed>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > HEAD_MAX => {
            return Err("the answer's head is too large".to_owned());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    let mut close = response.version == Some(0);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_none() {
                return Err("a Content-Length that is not a number".to_owned());
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let rest = &input[head..];
    if chunked {
        let Some(body) = dechunk(rest)? else {
            return Ok(None);
        };
        return Ok(Some(Parsed {
            status,
            body: Bytes::from(body),
            close,
        }));
    }
    let length = length.unwrap_or(0);
    if length > BODY_MAX {
        return Err(format!("a body of {length} bytes is too large"));
    }
    if rest.len() < length {
        return Ok(None);
    }
    Ok(Some(Parsed {
        status,
        body: Bytes::copy_from_slice(&rest[..length]),
        close,
    }))
}

/// A chunked body, `None` while incomplete.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "a bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("a bad chunk size `{size_text}`"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // No trailers (an empty line) or trailers ending with one.
            let complete = rest.starts_with(b"\r\n") || rest.windows(4).any(|w| w == b"\r\n\r\n");
            return Ok(complete.then_some(body));
        }
        if body.len() + size > BODY_MAX {
            return Err("a chunked body too large".to_owned());
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Run `connections` connections against `addr` until the feed ends; `each`
/// is called on each connection's own state `S` (made by `state()`) with
/// every send's meta and answer. Returns the states and the most sends that
/// were outstanding at once.
pub async fn drive<M, S, F>(
    addr: SocketAddr,
    path: &'static str,
    shadow: bool,
    connections: usize,
    feed: std::sync::Arc<Feed<M>>,
    state: impl Fn() -> S,
    each: F,
) -> (Vec<S>, u64)
where
    M: Send + 'static,
    S: Send + 'static,
    F: Fn(&mut S, M, Answer) + Send + Sync + Clone + 'static,
{
    let busy = std::sync::Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let feed = feed.clone();
        let busy = busy.clone();
        let each = each.clone();
        let mut own = state();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::new(addr);
            while let Some(slot) = feed.next().await {
                let now = Instant::now();
                if slot.due > now {
                    tokio::time::sleep_until(slot.due).await;
                } else if now.duration_since(slot.due) > Duration::from_millis(LATE_MS) {
                    each(&mut own, slot.meta, Answer::Dropped);
                    continue;
                }
                let now_busy = busy.0.fetch_add(1, Ordering::Relaxed) + 1;
                busy.1.fetch_max(now_busy, Ordering::Relaxed);
                let sent = tokio::time::timeout(
                    ANSWER_WAIT_MAX,
                    connection.post(path, &slot.body, shadow),
                )
                .await
                .unwrap_or_else(|_| {
                    // Whatever comes later on this socket is not ours.
                    connection.stream = None;
                    Err(format!("no answer within {} s", ANSWER_WAIT_MAX.as_secs()))
                });
                busy.0.fetch_sub(1, Ordering::Relaxed);
                let answer = match sent {
                    Ok((status, body)) => Answer::Answered {
                        status,
                        body,
                        latency_us: slot.due.elapsed().as_micros() as u64,
                    },
                    Err(error) => Answer::Failed { error },
                };
                each(&mut own, slot.meta, answer);
            }
            own
        }));
    }
    let mut states = Vec::with_capacity(connections);
    for task in tasks {
        // A connection task only panics on a bug: pass it on.
        match task.await {
            Ok(own) => states.push(own),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    (states, busy.1.load(Ordering::Relaxed))
}

/// The socket address of an `http://host:port` target.
pub async fn resolve(base: &str) -> anyhow::Result<SocketAddr> {
    let url =
        reqwest::Url::parse(base).map_err(|e| anyhow::anyhow!("`{base}` is not a URL: {e}"))?;
    let host = url
        .host_str()
        .unwrap_or("127.0.0.1")
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| anyhow::anyhow!("resolving {base}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{base} resolves to no address"))
}

/// [`drive`] on a thread of its own with a single-threaded runtime, as wrk
/// drives its connections from one thread: no work stealing, no wake-ups
/// across threads, one core.
pub async fn drive_on_own_thread<M, S, F>(
    addr: SocketAddr,
    path: &'static str,
    shadow: bool,
    connections: usize,
    feed: std::sync::Arc<Feed<M>>,
    state: impl Fn() -> S + Send + 'static,
    each: F,
) -> anyhow::Result<(Vec<S>, u64)>
where
    M: Send + 'static,
    S: Send + 'static,
    F: Fn(&mut S, M, Answer) + Send + Sync + Clone + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("redrain-driver".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let outcome = match runtime {
                Ok(runtime) => {
                    Ok(runtime.block_on(drive(addr, path, shadow, connections, feed, state, each)))
                }
                Err(e) => Err(anyhow::anyhow!("starting the driver's runtime: {e}")),
            };
            let _ = done.send(outcome);
        })
        .map_err(|e| anyhow::anyhow!("starting the driver's thread: {e}"))?;
    result
        .await
        .map_err(|_| anyhow::anyhow!("the driver's thread ended without an answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_by_length_and_by_chunks() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(
            parse_answer(plain).expect("parses"),
            Some(Parsed {
                status: 200,
                body: Bytes::from_static(b"hello"),
                close: false
            })
        );
        assert_eq!(
            parse_answer(&plain[..plain.len() - 1]).expect("partial"),
            None
        );
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-le").expect("partial"),
            None
        );
        let chunked = b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_answer(chunked).expect("parses"),
            Some(Parsed {
                status: 409,
                body: Bytes::from_static(b"abcde"),
                close: true
            })
        );
        assert_eq!(
            parse_answer(&chunked[..chunked.len() - 3]).expect("partial"),
            None
        );
        assert!(parse_answer(b"SMTP ready\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }

    #[test]
    fn a_fixed_feed_taken_after_its_end_skips_only_the_sends_that_exist() {
        // 100 sends due in the first 100 ms, all of them past by now.
        let zero = Instant::now() - Duration::from_secs(5);
        let feed: Feed<()> = Feed::Fixed {
            zero,
            interval_ns: 1_000_000,
            end: zero + Duration::from_millis(100),
            next: AtomicU64::new(40),
            skipped: AtomicU64::new(0),
            make: Box::new(|_| (Bytes::new(), ())),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert!(runtime.block_on(feed.next()).is_none(), "past its end");
        let Feed::Fixed { skipped, .. } = &feed else {
            unreachable!()
        };
        assert_eq!(
            skipped.load(Ordering::Relaxed),
            60,
            "sends 40..100, not 40..5000"
        );
        assert!(runtime.block_on(feed.next()).is_none());
        assert_eq!(skipped.load(Ordering::Relaxed), 60, "counted once");
    }
}
