//! The ingestion load generator: one OS thread with a tokio current_thread runtime (it shares
//! the machine's cores with the server); N keep-alive HTTP/1.1 connections, each posting
//! batches of CloudEvents (`application/cloudevents-batch+json`) back to back.
//!
//! Every unique event is a number `i`; its source, subject, model and tokens follow from `i`
//! alone (a hash), its id is `{run}-{i}`, its time the time its batch was first sent. A
//! duplicate is a byte-identical copy of an event this connection already had accepted (in an
//! earlier batch; in a connection's first batch, of an event earlier in the same batch). A
//! batch that fails (transport error, 408, 429, 503) is sent again unchanged until it is
//! accepted, as a real client would: exactly-once makes that safe, and keeps the expected
//! totals exact. A 503 `usage_backlog` (the server's backpressure: nothing of the batch was
//! taken) is sent again every 100 ms until the load's end without counting as a failure; one
//! still refused then is left out of the expected totals.

use super::verify_load::{content_length, find};
use anyhow::{Context, Result, anyhow, bail};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `model` dimension's values.
pub const MODELS: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-70b"];
/// The sending services (`source`).
const SOURCES: [&str; 4] = ["gateway-eu-1", "gateway-eu-2", "batch-worker", "realtime"];
/// Attempts at one batch before the run gives up on it.
const MAX_ATTEMPTS: u32 = 30;

pub struct IngestSpec {
    pub addr: SocketAddr,
    /// The `Host` header (`localhost:{port}`).
    pub host: String,
    pub token: String,
    /// Subject ids (tenant ids and API key ids, as text) and the tenant each stands for.
    pub subjects: Arc<Vec<(String, u32)>>,
    pub tenants: usize,
    pub connections: usize,
    pub batch: usize,
    /// Duplicates in each batch.
    pub duplicates: usize,
    /// No batch starts after this.
    pub deadline: Instant,
    /// No batch starts once this many events (duplicates included) are taken.
    pub max_events: Option<u64>,
    /// Makes the event ids of this run unique.
    pub run: String,
}

/// What the load sent and had accepted.
#[derive(Default)]
pub struct Sent {
    pub batches: u64,
    /// Events in accepted batches, duplicates included.
    pub events: u64,
    pub unique: u64,
    pub duplicates: u64,
    /// Batches sent again after a failed attempt.
    pub retries: u64,
    /// Events the server rejected (each makes the exactly-once check fail).
    pub rejected: u64,
    /// Batches given up on after [`MAX_ATTEMPTS`] (their events' fate is unknown).
    pub abandoned: u64,
    /// Answers of 503 `usage_backlog` (the server's backpressure: nothing of the batch was
    /// taken). Sent again without counting against [`MAX_ATTEMPTS`] until the load's end.
    pub backlogged: u64,
    /// Batches still refused with `usage_backlog` when the load ended: known not taken, so
    /// left out of the exactly-once count rather than abandoned.
    pub unsent: u64,
    pub first_errors: Vec<String>,
    /// Latency of each accepted batch's successful exchange.
    pub latencies: Vec<Duration>,
    /// Expected unique events and tokens, by tenant index.
    pub per_tenant: Vec<(u64, i64)>,
    pub tokens: i64,
    /// First send to last answer.
    pub window: Duration,
}

pub struct Handle {
    rx: tokio::sync::oneshot::Receiver<Result<Sent>>,
}

impl Handle {
    pub async fn finish(self) -> Result<Sent> {
        self.rx.await.map_err(|_| anyhow!("the ingestion load thread died"))?
    }
}

pub fn start(spec: IngestSpec) -> Result<Handle> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ingest-load".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the load generator's runtime")
                .and_then(|rt| rt.block_on(drive(spec)));
            let _ = tx.send(result);
        })
        .context("starting the ingestion load thread")?;
    Ok(Handle { rx })
}

struct Shared {
    spec: IngestSpec,
    /// `POST … HTTP/1.1` up to and including `Content-Length: `.
    head: Vec<u8>,
    next_unique: AtomicU64,
    events_taken: AtomicU64,
}

async fn drive(spec: IngestSpec) -> Result<Sent> {
    let head = format!(
        "POST /v1/data-plane/usage HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/cloudevents-batch+json\r\nContent-Length: ",
        spec.host, spec.token
    )
    .into_bytes();
    let n = spec.connections.max(1);
    let tenants = spec.tenants;
    let shared = Arc::new(Shared {
        spec,
        head,
        next_unique: AtomicU64::new(0),
        events_taken: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for c in 0..n {
        tasks.push(tokio::spawn(connection(shared.clone(), c)));
    }
    let mut sent = Sent {
        per_tenant: vec![(0, 0); tenants],
        ..Sent::default()
    };
    for t in tasks {
        let s = t.await??;
        sent.batches += s.batches;
        sent.events += s.events;
        sent.unique += s.unique;
        sent.duplicates += s.duplicates;
        sent.retries += s.retries;
        sent.rejected += s.rejected;
        sent.abandoned += s.abandoned;
        sent.backlogged += s.backlogged;
        sent.unsent += s.unsent;
        sent.tokens += s.tokens;
        sent.latencies.extend(s.latencies);
        for e in s.first_errors {
            if sent.first_errors.len() < 5 {
                sent.first_errors.push(e);
            }
        }
        for (a, b) in sent.per_tenant.iter_mut().zip(s.per_tenant) {
            a.0 += b.0;
            a.1 += b.1;
        }
    }
    sent.window = started.elapsed();
    Ok(sent)
}

/// splitmix64: the event's fields from its number.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// (subject index, tokens) of unique event `i`.
pub fn event_of(i: u64, subjects: usize) -> (usize, i64) {
    let h = mix(i);
    ((h % subjects as u64) as usize, 1 + ((h >> 32) % 4000) as i64)
}

fn write_event(out: &mut Vec<u8>, shared: &Shared, i: u64, time: &str) {
    let h = mix(i);
    let (s, tokens) = event_of(i, shared.spec.subjects.len());
    let subject = &shared.spec.subjects[s].0;
    let source = SOURCES[((h >> 8) % SOURCES.len() as u64) as usize];
    let model = MODELS[((h >> 20) % MODELS.len() as u64) as usize];
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "{{\"specversion\":\"1.0\",\"id\":\"{}-{i}\",\"source\":\"{source}\",\"type\":\"llm.tokens\",\
         \"subject\":\"{subject}\",\"time\":\"{time}\",\"data\":{{\"tokens\":{tokens},\"model\":\"{model}\"}}}}",
        shared.spec.run
    );
    out.extend_from_slice(s.as_bytes());
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A run of unique events this connection had accepted, with their time.
struct Accepted {
    /// Accepted events before this run (cumulative), for a uniform pick.
    before: u64,
    start: u64,
    len: u64,
    time: Arc<str>,
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn connection(shared: Arc<Shared>, c: usize) -> Result<Sent> {
    let spec = &shared.spec;
    let mut rng = Rng((0x2545_f491_4f6c_dd1d ^ ((c as u64 + 1) * 0x9e37_79b9)) | 1);
    let mut out = Sent {
        per_tenant: vec![(0, 0); spec.tenants],
        ..Sent::default()
    };
    let mut stream = connect(spec.addr).await?;
    let mut history: Vec<Accepted> = Vec::new();
    let mut accepted_total = 0_u64;
    let mut body: Vec<u8> = Vec::with_capacity(spec.batch * 260);
    let mut req: Vec<u8> = Vec::with_capacity(spec.batch * 260 + 512);
    let mut buf: Vec<u8> = vec![0; 16 * 1024];
    let dups = spec.duplicates.min(spec.batch.saturating_sub(1));
    let fresh = (spec.batch - dups) as u64;
    loop {
        if Instant::now() >= spec.deadline {
            break;
        }
        if let Some(max) = spec.max_events
            && shared.events_taken.fetch_add(spec.batch as u64, Ordering::Relaxed) >= max
        {
            break;
        }
        let start = shared.next_unique.fetch_add(fresh, Ordering::Relaxed);
        let time: Arc<str> = Arc::from(
            quarterdeck_domain::clock::Clock::now(&quarterdeck_domain::clock::SystemClock)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        );
        body.clear();
        body.push(b'[');
        for i in start..start + fresh {
            if i > start {
                body.push(b',');
            }
            write_event(&mut body, &shared, i, &time);
        }
        for _ in 0..dups {
            body.extend_from_slice(b",");
            if accepted_total == 0 {
                // The first batch: an event earlier in this very batch.
                write_event(&mut body, &shared, start + rng.next() % fresh, &time);
            } else {
                let k = rng.next() % accepted_total;
                let at = history.partition_point(|a| a.before + a.len <= k);
                let a = &history[at.min(history.len() - 1)];
                write_event(&mut body, &shared, a.start + (k - a.before), &a.time);
            }
        }
        body.push(b']');
        req.clear();
        req.extend_from_slice(&shared.head);
        req.extend_from_slice(body.len().to_string().as_bytes());
        req.extend_from_slice(b"\r\n\r\n");
        req.extend_from_slice(&body);

        let mut attempt = 0;
        let mut backlogged = false;
        let ok = loop {
            attempt += 1;
            if attempt > 1 {
                out.retries += 1;
            }
            let t0 = Instant::now();
            let answer = exchange(&mut stream, &req, &mut buf).await;
            let t1 = Instant::now();
            let failure = match answer {
                Ok((200, b)) => match serde_json::from_slice::<serde_json::Value>(&b) {
                    Ok(v) => {
                        let accepted = v.get("accepted").and_then(serde_json::Value::as_u64).unwrap_or(0);
                        let rejected = v.get("rejected").and_then(|r| r.as_array()).map_or(0, Vec::len);
                        if rejected > 0 || accepted != spec.batch as u64 {
                            out.rejected += rejected as u64;
                            note(
                                &mut out,
                                format!("accepted {accepted}, rejected {rejected}: {}", head_of(&b)),
                            );
                        }
                        out.latencies.push(t1 - t0);
                        break true;
                    }
                    Err(e) => format!("200 with a body that is not JSON ({e}): {}", head_of(&b)),
                },
                Ok((503, b))
                    if serde_json::from_slice::<serde_json::Value>(&b)
                        .is_ok_and(|v| v["error"]["code"] == "usage_backlog") =>
                {
                    out.backlogged += 1;
                    attempt -= 1;
                    if Instant::now() >= spec.deadline {
                        backlogged = true;
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Ok((status, b)) => {
                    let text = format!("status {status}: {}", head_of(&b));
                    if !matches!(status, 408 | 429 | 503) {
                        note(&mut out, text);
                        break false;
                    }
                    text
                }
                Err(e) => {
                    stream = connect(spec.addr).await?;
                    format!("{e:#}")
                }
            };
            note(&mut out, failure);
            if attempt >= MAX_ATTEMPTS {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if !ok {
            if backlogged {
                out.unsent += 1;
            } else {
                out.abandoned += 1;
            }
            continue;
        }
        out.batches += 1;
        out.events += spec.batch as u64;
        out.unique += fresh;
        out.duplicates += dups as u64;
        for i in start..start + fresh {
            let (s, tokens) = event_of(i, spec.subjects.len());
            let t = spec.subjects[s].1 as usize;
            out.per_tenant[t].0 += 1;
            out.per_tenant[t].1 += tokens;
            out.tokens += tokens;
        }
        history.push(Accepted {
            before: accepted_total,
            start,
            len: fresh,
            time,
        });
        accepted_total += fresh;
    }
    Ok(out)
}

fn note(out: &mut Sent, e: String) {
    if out.first_errors.len() < 5 {
        out.first_errors.push(e);
    }
}

fn head_of(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

/// Send one request and read its whole answer: (status, body).
async fn exchange(stream: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<(u16, Vec<u8>)> {
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
            let len = content_length(&buf[..end]).context("no Content-Length in the answer")?;
            header_end = Some(end + 4);
            total = end + 4 + len;
        }
        if filled >= total {
            break;
        }
    }
    let status = buf
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .context("no status line")?;
    Ok((status, buf[header_end.unwrap_or(0)..total].to_vec()))
}
