//! [`FaultProxy`]: a loopback TCP proxy in front of a real server (OpenBao, moto) that can be
//! switched, while connections are open, to refuse, reset, hang, slow down, or answer every
//! request itself (a 429 or 503 storm, with or without `Retry-After`, an HTML page from a proxy).
//! It frames the HTTP/1.1 requests that pass through, so a test can count what reached the
//! server and when.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections and requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Close every connection, open or new, without a word (a server that went away).
    Cut,
    /// Reset every connection, open or new (RST).
    Reset,
    /// Accept, read, and never answer (a hung server or a black-holed route). Leaving it closes
    /// the connections that hung, as a server that comes back has lost them.
    Hang,
    /// Forward, each chunk delayed by this much.
    Slow(Duration),
    /// Answer every request with this status, headers and body, and close the connection;
    /// nothing reaches the server.
    Answer {
        /// The status code.
        status: u16,
        /// Extra headers (`Retry-After`, …).
        headers: Vec<(String, String)>,
        /// The body.
        body: String,
    },
}

impl Fault {
    /// `429 Too Many Requests`, with `Retry-After` when given.
    pub fn too_many_requests(retry_after: Option<&str>) -> Self {
        Self::answer(429, retry_after, r#"{"errors":["rate limited"]}"#)
    }

    /// `503 Service Unavailable`, with `Retry-After` when given.
    pub fn unavailable(retry_after: Option<&str>) -> Self {
        Self::answer(503, retry_after, r#"{"errors":["unavailable"]}"#)
    }

    /// A `502 Bad Gateway` HTML page, as a load balancer in front of the server sends.
    pub fn bad_gateway_page() -> Self {
        Fault::Answer {
            status: 502,
            headers: vec![("content-type".into(), "text/html".into())],
            body: "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad \
                   Gateway</h1></center><hr><center>nginx</center></body></html>"
                .into(),
        }
    }

    fn answer(status: u16, retry_after: Option<&str>, body: &str) -> Self {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(r) = retry_after {
            headers.push(("retry-after".to_owned(), r.to_owned()));
        }
        Fault::Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }
}

/// One request as it passed the proxy.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When its head arrived (the proxy's monotonic clock).
    pub at: Instant,
    /// `GET`, `POST`, …
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// Whether it was passed on to the server (not answered, refused or swallowed by a fault).
    pub forwarded: bool,
}

struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    seen: Mutex<Vec<Seen>>,
    connections: Mutex<usize>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            fault: watch::Sender::new(Fault::Pass),
            seen: Mutex::new(Vec::new()),
            connections: Mutex::new(0),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                *s.connections.lock().unwrap() += 1;
                tokio::spawn(serve(client, s.clone()));
            }
        });
        FaultProxy {
            addr,
            shared,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switch to `fault`; open connections follow at once.
    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests seen at or after `since` whose path contains `needle`.
    pub fn count_since(&self, since: Instant, needle: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.at >= since && s.path.contains(needle))
            .count()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.shared.connections.lock().unwrap()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reset: close with SO_LINGER 0, which sends RST instead of FIN.
fn reset(stream: TcpStream) {
    #[allow(deprecated)] // set_linger blocks on close only for a non-zero linger
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Real time: the proxy stands in front of real servers.
#[allow(clippy::disallowed_methods)]
async fn delay(d: Duration) {
    tokio::time::sleep(d).await;
}

/// The proxy reports real time: it stands in front of real servers.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let mut faults = shared.fault.subscribe();
    let fault = faults.borrow_and_update().clone();
    match fault {
        Fault::Cut => return,
        Fault::Reset => return reset(client),
        _ => {}
    }
    let mut upstream: Option<TcpStream> = None;
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut reply = vec![0u8; 16 * 1024];
    loop {
        let fault = faults.borrow().clone();
        match fault {
            Fault::Cut => return,
            Fault::Reset => return reset(client),
            _ => {}
        }
        tokio::select! {
            changed = faults.changed() => {
                // A server that comes back after hanging has lost its connections: what was
                // swallowed meanwhile is never answered, so the connection closes.
                if changed.is_err() || fault == Fault::Hang {
                    return;
                }
            }
            read = client.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let heads = framer.push(&buf[..n]);
                let fault = faults.borrow().clone();
                let forwarded = matches!(fault, Fault::Pass | Fault::Slow(_));
                {
                    let mut seen = shared.seen.lock().unwrap();
                    for (method, path) in heads.iter().cloned() {
                        seen.push(Seen { at: now(), method, path, forwarded });
                    }
                }
                match fault {
                    Fault::Hang => {} // swallowed
                    Fault::Answer { status, headers, body } => {
                        if !heads.is_empty() {
                            let mut head = format!(
                                "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
                                reason(status),
                                body.len()
                            );
                            for (k, v) in &headers {
                                head.push_str(&format!("{k}: {v}\r\n"));
                            }
                            head.push_str("\r\n");
                            let _ = client.write_all(head.as_bytes()).await;
                            let _ = client.write_all(body.as_bytes()).await;
                            let _ = client.shutdown().await;
                            return;
                        }
                    }
                    Fault::Pass | Fault::Slow(_) => {
                        if let Fault::Slow(d) = fault {
                            delay(d).await;
                        }
                        if upstream.is_none() {
                            match TcpStream::connect(shared.upstream).await {
                                Ok(s) => upstream = Some(s),
                                Err(_) => return,
                            }
                        }
                        if let Some(up) = upstream.as_mut()
                            && up.write_all(&buf[..n]).await.is_err()
                        {
                            return;
                        }
                    }
                    Fault::Cut | Fault::Reset => unreachable!("handled above"),
                }
            }
            read = read_opt(&mut upstream, &mut reply) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Answers that arrive while hanging are held back like everything else.
                loop {
                    let fault = faults.borrow().clone();
                    match fault {
                        Fault::Hang => {
                            if faults.changed().await.is_err() {
                                return;
                            }
                        }
                        Fault::Cut => return,
                        Fault::Reset => return reset(client),
                        Fault::Slow(d) => {
                            delay(d).await;
                            break;
                        }
                        _ => break,
                    }
                }
                if client.write_all(&reply[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn read_opt(stream: &mut Option<TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Finds request heads in a client's byte stream (HTTP/1.1 with `content-length` bodies, as
/// every client here sends).
#[derive(Default)]
struct Framer {
    buf: Vec<u8>,
    /// Body bytes still to skip.
    body_left: usize,
}

impl Framer {
    fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        let mut heads = Vec::new();
        let mut input = bytes.to_vec();
        loop {
            if self.body_left > 0 {
                let skip = self.body_left.min(input.len());
                self.body_left -= skip;
                input.drain(..skip);
                if self.body_left > 0 {
                    return heads;
                }
            }
            self.buf.append(&mut input);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return heads;
            };
            input = self.buf.split_off(end + 4);
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.clear();
            let mut lines = head.lines();
            let mut request_line = lines.next().unwrap_or_default().split(' ');
            let method = request_line.next().unwrap_or_default().to_owned();
            let path = request_line.next().unwrap_or_default().to_owned();
            self.body_left = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            heads.push((method, path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_requests_split_and_pipelined() {
        let mut f = Framer::default();
        assert!(
            f.push(b"POST /v1/a HTTP/1.1\r\ncontent-length: 5\r\n")
                .is_empty()
        );
        assert_eq!(
            f.push(b"\r\nhel"),
            vec![("POST".to_owned(), "/v1/a".to_owned())]
        );
        let heads = f.push(b"loGET /v1/b HTTP/1.1\r\n\r\nGET /v1/c HTTP/1.1\r\n\r\n");
        assert_eq!(
            heads,
            vec![
                ("GET".to_owned(), "/v1/b".to_owned()),
                ("GET".to_owned(), "/v1/c".to_owned())
            ]
        );
    }
}
