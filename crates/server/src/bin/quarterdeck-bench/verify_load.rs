//! The verification load generator: cheap, since it shares the machine's cores with the server.
//! One OS thread with a tokio current_thread runtime; N keep-alive HTTP/1.1 connections, each
//! sending `POST /v1/data-plane/keys/verify` back to back (headers pre-built, body written into
//! a reused buffer), reading only the status line, `Content-Length` and the body's first bytes.

use anyhow::{Context, Result, anyhow, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How each request picks its key.
pub enum Pick {
    /// Every key exactly once, in order, shared by the connections; the run ends with them.
    EachOnce,
    /// Uniformly at random.
    Uniform,
    /// Zipf-distributed ranks (`cdf`), mapped to keys through a fixed shuffle (`keys_by_rank`).
    Zipf {
        cdf: Arc<Vec<f64>>,
        keys_by_rank: Arc<Vec<u32>>,
    },
}

impl Pick {
    /// Zipf with exponent `s` over `n` keys, hot keys spread by a seeded shuffle.
    pub fn zipf(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for r in 0..n {
            acc += 1.0 / ((r + 1) as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        let mut keys_by_rank: Vec<u32> = (0..n as u32).collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in (1..n).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            keys_by_rank.swap(i, j);
        }
        Pick::Zipf {
            cdf: Arc::new(cdf),
            keys_by_rank: Arc::new(keys_by_rank),
        }
    }
}

pub struct LoadSpec {
    pub addr: SocketAddr,
    /// The `Host` header (`localhost:{port}`).
    pub host: String,
    pub token: String,
    pub keys: Arc<Vec<String>>,
    pub connections: usize,
    pub pick: Pick,
    pub warmup: Duration,
    /// `None`: until the keys run out (`Pick::EachOnce`).
    pub measure: Option<Duration>,
}

impl LoadSpec {
    /// The measured window (start, end) for a load starting at `begin`.
    pub fn window(&self, begin: Instant) -> (Instant, Option<Instant>) {
        let start = begin + self.warmup;
        (start, self.measure.map(|m| start + m))
    }
}

/// What a load run measured in its window.
pub struct Load {
    pub ok: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub latencies: Vec<Duration>,
    pub window: Duration,
}

pub struct Handle {
    rx: tokio::sync::oneshot::Receiver<Result<Load>>,
}

impl Handle {
    pub async fn finish(self) -> Result<Load> {
        self.rx.await.map_err(|_| anyhow!("the load generator thread died"))?
    }
}

/// Start the load on its own thread; requests before `start_at` are warm-up, requests after
/// `end_at` are not sent.
pub fn start(spec: LoadSpec, start_at: Instant, end_at: Option<Instant>) -> Result<Handle> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("verify-load".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the load generator's runtime")
                .and_then(|rt| rt.block_on(drive(spec, start_at, end_at)));
            let _ = tx.send(result);
        })
        .context("starting the load generator thread")?;
    Ok(Handle { rx })
}

struct Shared {
    spec: LoadSpec,
    /// `POST … HTTP/1.1` up to and including `Content-Length: `.
    head: Vec<u8>,
    next: AtomicUsize,
    start_at: Instant,
    end_at: Option<Instant>,
}

#[derive(Default)]
struct ConnStats {
    ok: u64,
    errors: u64,
    first_errors: Vec<String>,
    latencies: Vec<Duration>,
    last_done: Option<Instant>,
}

async fn drive(spec: LoadSpec, start_at: Instant, end_at: Option<Instant>) -> Result<Load> {
    let head = format!(
        "POST /v1/data-plane/keys/verify HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: ",
        spec.host, spec.token
    )
    .into_bytes();
    let n = spec.connections;
    let shared = Arc::new(Shared {
        spec,
        head,
        next: AtomicUsize::new(0),
        start_at,
        end_at,
    });
    let mut tasks = Vec::with_capacity(n);
    for c in 0..n {
        let shared = shared.clone();
        tasks.push(tokio::spawn(connection(
            shared,
            0x2545_f491_4f6c_dd1d ^ ((c as u64 + 1) * 0x9e37_79b9),
        )));
    }
    let mut load = Load {
        ok: 0,
        errors: 0,
        first_errors: Vec::new(),
        latencies: Vec::new(),
        window: Duration::ZERO,
    };
    let mut last = start_at;
    for t in tasks {
        let s = t.await??;
        load.ok += s.ok;
        load.errors += s.errors;
        load.latencies.extend(s.latencies);
        for e in s.first_errors {
            if load.first_errors.len() < 3 {
                load.first_errors.push(e);
            }
        }
        if let Some(d) = s.last_done {
            last = last.max(d);
        }
    }
    load.window = match end_at {
        Some(end) => end.saturating_duration_since(start_at),
        None => last.saturating_duration_since(start_at),
    };
    Ok(load)
}

struct Rng(u64);

impl Rng {
    /// xorshift64*
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn pick(shared: &Shared, rng: &mut Rng) -> Option<usize> {
    let n = shared.spec.keys.len();
    match &shared.spec.pick {
        Pick::EachOnce => {
            let i = shared.next.fetch_add(1, Ordering::Relaxed);
            (i < n).then_some(i)
        }
        Pick::Uniform => Some((rng.next() % n as u64) as usize),
        Pick::Zipf { cdf, keys_by_rank } => {
            let u = rng.unit();
            let r = cdf.partition_point(|&c| c < u).min(n - 1);
            Some(keys_by_rank[r] as usize)
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn connection(shared: Arc<Shared>, seed: u64) -> Result<ConnStats> {
    let mut rng = Rng(seed | 1);
    let mut stats = ConnStats::default();
    let mut stream = connect(shared.spec.addr).await?;
    // All connections open before the first request.
    tokio::time::sleep_until(
        shared
            .start_at
            .checked_sub(shared.spec.warmup)
            .unwrap_or(shared.start_at)
            .into(),
    )
    .await;
    let mut req: Vec<u8> = Vec::with_capacity(shared.head.len() + 256);
    let mut buf: Vec<u8> = vec![0; 16 * 1024];
    let measuring_from = shared.start_at;
    loop {
        if shared.end_at.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        let Some(k) = pick(&shared, &mut rng) else {
            break;
        };
        let key = &shared.spec.keys[k];
        req.clear();
        req.extend_from_slice(&shared.head);
        let body_len = key.len() + 10; // {"key":""}
        req.extend_from_slice(body_len.to_string().as_bytes());
        req.extend_from_slice(b"\r\n\r\n{\"key\":\"");
        req.extend_from_slice(key.as_bytes());
        req.extend_from_slice(b"\"}");
        let t0 = Instant::now();
        let outcome = exchange(&mut stream, &req, &mut buf).await;
        let t1 = Instant::now();
        let counted = t0 >= measuring_from && shared.end_at.is_none_or(|end| t1 <= end);
        let failure = match outcome {
            Ok(Answer {
                status: 200,
                valid: true,
                ..
            }) => None,
            Ok(a) => Some(format!(
                "status {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body_start)
            )),
            Err(e) => {
                // Start over on a new connection.
                stream = connect(shared.spec.addr).await?;
                Some(format!("{e:#}"))
            }
        };
        if counted {
            stats.last_done = Some(t1);
            match failure {
                None => {
                    stats.ok += 1;
                    stats.latencies.push(t1 - t0);
                }
                Some(e) => {
                    stats.errors += 1;
                    if stats.first_errors.len() < 3 {
                        stats.first_errors.push(e);
                    }
                }
            }
        }
    }
    Ok(stats)
}

struct Answer {
    status: u16,
    valid: bool,
    /// The body's first bytes (for error messages).
    body_start: Vec<u8>,
}

/// Send one request and read its whole answer (no pipelining: nothing is left over).
async fn exchange(stream: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<Answer> {
    stream.write_all(req).await?;
    let mut filled = 0;
    let mut header_end = None;
    let mut total = usize::MAX;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        filled += n;
        if header_end.is_none()
            && let Some(end) = find(&buf[..filled], b"\r\n\r\n")
        {
            let head = &buf[..end];
            let len = content_length(head).context("no Content-Length in the answer")?;
            header_end = Some(end + 4);
            total = end + 4 + len;
        }
        if filled >= total {
            break;
        }
    }
    let body_at = header_end.unwrap_or(0);
    let status = buf
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .context("no status line")?;
    let body = &buf[body_at..total];
    let valid = body.starts_with(b"{\"valid\":true");
    Ok(Answer {
        status,
        valid,
        body_start: if status == 200 && valid {
            Vec::new()
        } else {
            body[..body.len().min(200)].to_vec()
        },
    })
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn content_length(head: &[u8]) -> Option<usize> {
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
            return std::str::from_utf8(&line[15..]).ok()?.trim().parse().ok();
        }
    }
    None
}
