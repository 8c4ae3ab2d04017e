//! Usage metering: meters (configuration), usage events as the data plane posts them
//! (CloudEvents 1.0 JSON), and the shapes they take on their way (journal entry, raw event,
//! hourly rollup).
//!
//! An event's quantity is an integer (count the smallest unit: tokens, milliseconds, bytes);
//! money is never a float either (`pricing.rs`). Dimensions are strings, and only the ones a
//! meter keeps are stored.

use crate::error::{Error, Result};
use crate::ids::TenantId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};

/// How a meter folds its events' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The sum of the values.
    Sum,
    /// The number of events (no value field).
    Count,
    /// The largest value.
    Max,
}

impl Aggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Count => "count",
            Self::Max => "max",
        }
    }

    /// Fold `b` into `a`.
    pub fn fold(self, a: i64, b: i64) -> i64 {
        match self {
            Self::Sum | Self::Count => a.saturating_add(b),
            Self::Max => a.max(b),
        }
    }
}

/// A meter: which events it counts and how (`[[meters]]` in the settings file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    /// The CloudEvents `type` it counts, e.g. `llm.tokens`; also the meter's id.
    #[serde(rename = "type")]
    pub event_type: String,
    /// What people read, e.g. "LLM tokens".
    pub name: String,
    /// The `data` field holding the quantity (required for `sum` and `max`, unused by `count`).
    #[serde(default)]
    pub value: Option<String>,
    pub aggregation: Aggregation,
    /// The `data` fields kept as dimensions (others are dropped).
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// The unit shown beside quantities, e.g. "tokens".
    #[serde(default)]
    pub unit: Option<String>,
}

/// The configured meters, checked.
#[derive(Clone, Debug, Default)]
pub struct MeterCatalog {
    meters: Vec<Meter>,
}

/// Longest meter type, source, event id and dimension value accepted.
pub const MAX_TYPE_CHARS: usize = 128;
pub const MAX_ID_CHARS: usize = 256;
pub const MAX_DIMENSION_CHARS: usize = 128;
/// Most dimensions a meter keeps.
pub const MAX_DIMENSIONS: usize = 8;
/// The largest quantity one event may carry (10^12): sums over millions of events stay far
/// from `i64::MAX`, and the rollups saturate rather than fail if they ever get there.
pub const MAX_QUANTITY: i64 = 1_000_000_000_000;

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TYPE_CHARS
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
}

impl MeterCatalog {
    /// Check the meters: distinct types, a value field where the aggregation needs one, at
    /// most [`MAX_DIMENSIONS`] dimensions with plain names.
    pub fn new(meters: Vec<Meter>) -> Result<Self> {
        let bad = |m: &str| Error::internal(format!("meters: {m}"));
        for (i, m) in meters.iter().enumerate() {
            if !is_name(&m.event_type) {
                return Err(bad(&format!(
                    "type {:?} must be 1 to {MAX_TYPE_CHARS} of letters, digits and . _ - : /",
                    m.event_type
                )));
            }
            if meters[..i].iter().any(|o| o.event_type == m.event_type) {
                return Err(bad(&format!("type {:?} appears twice", m.event_type)));
            }
            if m.name.trim().is_empty() {
                return Err(bad(&format!("meter {:?} needs a name", m.event_type)));
            }
            match (m.aggregation, &m.value) {
                (Aggregation::Sum | Aggregation::Max, None) => {
                    return Err(bad(&format!(
                        "meter {:?} ({}) needs `value`: the data field holding the quantity",
                        m.event_type,
                        m.aggregation.as_str()
                    )));
                }
                (_, Some(v)) if !is_name(v) => {
                    return Err(bad(&format!(
                        "meter {:?}: value field {v:?} is not a plain name",
                        m.event_type
                    )));
                }
                _ => {}
            }
            if m.dimensions.len() > MAX_DIMENSIONS {
                return Err(bad(&format!(
                    "meter {:?} keeps more than {MAX_DIMENSIONS} dimensions",
                    m.event_type
                )));
            }
            for (j, d) in m.dimensions.iter().enumerate() {
                if !is_name(d) || m.dimensions[..j].contains(d) || m.value.as_deref() == Some(d.as_str()) {
                    return Err(bad(&format!(
                        "meter {:?}: dimension {d:?} must be a plain name, listed once, not the value field",
                        m.event_type
                    )));
                }
            }
        }
        Ok(Self { meters })
    }

    /// The default meters: LLM tokens by model, and requests.
    pub fn defaults() -> Vec<Meter> {
        vec![
            Meter {
                event_type: "llm.tokens".to_owned(),
                name: "LLM tokens".to_owned(),
                value: Some("tokens".to_owned()),
                aggregation: Aggregation::Sum,
                dimensions: vec!["model".to_owned()],
                unit: Some("tokens".to_owned()),
            },
            Meter {
                event_type: "api.requests".to_owned(),
                name: "API requests".to_owned(),
                value: None,
                aggregation: Aggregation::Count,
                dimensions: vec!["endpoint".to_owned()],
                unit: Some("requests".to_owned()),
            },
        ]
    }

    pub fn meters(&self) -> &[Meter] {
        &self.meters
    }

    pub fn get(&self, event_type: &str) -> Option<&Meter> {
        self.meters.iter().find(|m| m.event_type == event_type)
    }
}

/// Why one event of a batch was not accepted (the `code` in the response's `rejected`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not a CloudEvent: not an object, or `specversion`, `id`, `source` or `type` missing or
    /// malformed.
    InvalidEvent,
    /// `type` names no configured meter.
    UnknownMeter,
    /// `subject` is neither a tenant API key's id nor a tenant's id (that this token may reach).
    UnknownSubject,
    /// The subject's tenant is suspended.
    TenantSuspended,
    /// `time` is not RFC 3339, is in the future, or is older than the raw-event window.
    BadTime,
    /// The meter's value field is missing from `data`.
    MissingValue,
    /// The value is not a non-negative integer.
    InvalidValue,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        Self::InvalidEvent,
        Self::UnknownMeter,
        Self::UnknownSubject,
        Self::TenantSuspended,
        Self::BadTime,
        Self::MissingValue,
        Self::InvalidValue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidEvent => "invalid_event",
            Self::UnknownMeter => "unknown_meter",
            Self::UnknownSubject => "unknown_subject",
            Self::TenantSuspended => "tenant_suspended",
            Self::BadTime => "bad_time",
            Self::MissingValue => "missing_value",
            Self::InvalidValue => "invalid_value",
        }
    }
}

/// One rejected event: where it was in the batch, its id if it had one, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub index: usize,
    pub id: Option<String>,
    pub code: RejectReason,
    pub message: String,
}

/// An event that passed every check that needs no lookup; its subject is still a bare id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedEvent {
    pub index: usize,
    pub source: String,
    pub id: String,
    pub meter: String,
    pub time: OffsetDateTime,
    pub subject: uuid::Uuid,
    pub value: i64,
    /// Canonical JSON of the kept dimensions (keys sorted).
    pub dims: String,
}

/// How events are accepted: the time window and the batch cap.
#[derive(Clone, Copy, Debug)]
pub struct IngestLimits {
    /// Most events in one request.
    pub max_batch: usize,
    /// Oldest event time accepted, counted back from now (the raw-event window less a day, so
    /// an accepted event's duplicate is always still there to be found).
    pub max_age: Duration,
    /// How far in the future an event's time may be (clock skew).
    pub max_skew: Duration,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            max_age: Duration::days(34),
            max_skew: Duration::minutes(5),
        }
    }
}

/// The request's shape, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Envelope {
    /// `application/cloudevents-batch+json`: a JSON array of events.
    Batch,
    /// `application/cloudevents+json`: one event.
    Single,
}

impl Envelope {
    /// The envelope for a `Content-Type` (parameters ignored); `application/json` is taken as
    /// a batch if the body is an array, else one event (decided by [`parse_events`]).
    pub fn from_content_type(ct: Option<&str>) -> Result<Option<Self>> {
        let essence = ct
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/cloudevents-batch+json" => Ok(Some(Self::Batch)),
            "application/cloudevents+json" => Ok(Some(Self::Single)),
            "application/json" => Ok(None),
            _ => Err(Error::Unsupported {
                code: "unsupported_media_type",
                message: "Send application/cloudevents-batch+json (an array of events) or application/cloudevents+json (one event).".to_owned(),
            }),
        }
    }
}

/// Parse a request body into events, each either parsed (lookups still to do) or rejected.
/// A body that is not JSON, or not the envelope's shape, or holds more than `max_batch`
/// events, fails as a whole.
pub fn parse_events(
    body: &[u8],
    envelope: Option<Envelope>,
    meters: &MeterCatalog,
    limits: &IngestLimits,
    now: OffsetDateTime,
) -> Result<(Vec<ParsedEvent>, Vec<Rejected>)> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| Error::BadRequest {
        code: "invalid_json",
        message: format!("The body is not JSON: {e}."),
    })?;
    let items = match (envelope, value) {
        (Some(Envelope::Batch) | None, serde_json::Value::Array(items)) => items,
        (Some(Envelope::Single) | None, v @ serde_json::Value::Object(_)) => vec![v],
        (Some(Envelope::Batch), _) => {
            return Err(Error::BadRequest {
                code: "invalid_batch",
                message: "A batch (application/cloudevents-batch+json) is a JSON array of events.".to_owned(),
            });
        }
        _ => {
            return Err(Error::BadRequest {
                code: "invalid_event",
                message: "An event (application/cloudevents+json) is a JSON object.".to_owned(),
            });
        }
    };
    if items.len() > limits.max_batch {
        return Err(Error::TooLarge {
            code: "batch_too_large",
            message: format!(
                "A batch holds at most {} events; this one has {}. Split it.",
                limits.max_batch,
                items.len()
            ),
        });
    }
    let mut ok = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match parse_one(index, item, meters, limits, now) {
            Ok(e) => ok.push(e),
            Err(r) => rejected.push(r),
        }
    }
    Ok((ok, rejected))
}

fn parse_one(
    index: usize,
    item: serde_json::Value,
    meters: &MeterCatalog,
    limits: &IngestLimits,
    now: OffsetDateTime,
) -> std::result::Result<ParsedEvent, Rejected> {
    let serde_json::Value::Object(mut obj) = item else {
        return Err(Rejected {
            index,
            id: None,
            code: RejectReason::InvalidEvent,
            message: "An event is a JSON object.".to_owned(),
        });
    };
    let text = |obj: &serde_json::Map<String, serde_json::Value>, k: &str| {
        obj.get(k).and_then(|v| v.as_str()).map(str::to_owned)
    };
    let id = text(&obj, "id").filter(|s| plain_text(s, MAX_ID_CHARS));
    let reject = |code: RejectReason, message: String| Rejected {
        index,
        id: id.clone(),
        code,
        message,
    };
    let Some(event_id) = id.clone() else {
        return Err(reject(
            RejectReason::InvalidEvent,
            format!("`id` is required: 1 to {MAX_ID_CHARS} characters, no control characters (the deduplication key)."),
        ));
    };
    if text(&obj, "specversion").as_deref() != Some("1.0") {
        return Err(reject(
            RejectReason::InvalidEvent,
            "`specversion` must be \"1.0\".".to_owned(),
        ));
    }
    let Some(source) = text(&obj, "source").filter(|s| plain_text(s, MAX_ID_CHARS)) else {
        return Err(reject(
            RejectReason::InvalidEvent,
            format!("`source` is required: 1 to {MAX_ID_CHARS} characters, no control characters."),
        ));
    };
    let Some(event_type) = text(&obj, "type") else {
        return Err(reject(
            RejectReason::InvalidEvent,
            "`type` is required: the meter.".to_owned(),
        ));
    };
    let Some(meter) = meters.get(&event_type) else {
        return Err(reject(
            RejectReason::UnknownMeter,
            "`type` names no configured meter.".to_owned(),
        ));
    };
    let subject = match obj.get("subject").and_then(|v| v.as_str()).map(uuid::Uuid::parse_str) {
        Some(Ok(u)) => u,
        _ => {
            return Err(reject(
                RejectReason::UnknownSubject,
                "`subject` must be a tenant API key's id or a tenant's id.".to_owned(),
            ));
        }
    };
    let time = match obj.get("time") {
        None | Some(serde_json::Value::Null) => now,
        Some(serde_json::Value::String(s)) => {
            match OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
                Ok(t) => t,
                Err(_) => {
                    return Err(reject(
                        RejectReason::BadTime,
                        "`time` must be an RFC 3339 timestamp.".to_owned(),
                    ));
                }
            }
        }
        Some(_) => {
            return Err(reject(
                RejectReason::BadTime,
                "`time` must be an RFC 3339 timestamp.".to_owned(),
            ));
        }
    };
    if time > now + limits.max_skew {
        return Err(reject(RejectReason::BadTime, "`time` is in the future.".to_owned()));
    }
    if time < now - limits.max_age {
        return Err(reject(
            RejectReason::BadTime,
            format!("`time` is older than {} days.", limits.max_age.whole_days()),
        ));
    }
    let data = match obj.remove("data") {
        Some(serde_json::Value::Object(m)) => m,
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(_) => {
            return Err(reject(
                RejectReason::InvalidEvent,
                "`data` must be a JSON object.".to_owned(),
            ));
        }
    };
    let value = match (&meter.value, meter.aggregation) {
        (_, Aggregation::Count) => 1,
        (Some(field), _) => match data.get(field) {
            None | Some(serde_json::Value::Null) => {
                return Err(reject(
                    RejectReason::MissingValue,
                    format!("`data.{field}` (the quantity of {event_type}) is missing."),
                ));
            }
            Some(v) => match quantity(v) {
                Some(n) => n,
                None => {
                    return Err(reject(
                        RejectReason::InvalidValue,
                        format!("`data.{field}` must be an integer from 0 to {MAX_QUANTITY}."),
                    ));
                }
            },
        },
        (None, _) => 1,
    };
    let mut dims = BTreeMap::new();
    for d in &meter.dimensions {
        let v = match data.get(d) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::Bool(b)) => b.to_string(),
            _ => continue,
        };
        if !plain_text(&v, MAX_DIMENSION_CHARS) && !v.is_empty() {
            return Err(reject(
                RejectReason::InvalidEvent,
                format!("`data.{d}` must be at most {MAX_DIMENSION_CHARS} characters, no control characters."),
            ));
        }
        dims.insert(d.clone(), v);
    }
    Ok(ParsedEvent {
        index,
        source,
        id: event_id,
        meter: meter.event_type.clone(),
        time,
        subject,
        value,
        dims: dims_key(&dims),
    })
}

/// 1 to `max` characters, none of them a control character (NUL is refused by PostgreSQL's
/// `text`; the others have no place in an id or a label).
fn plain_text(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

/// A quantity: a non-negative integer (a JSON number without fraction, or a string of digits).
fn quantity(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e18)
                .map(|f| f as i64)
        }),
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
    .filter(|n| (0..=MAX_QUANTITY).contains(n))
}

/// The canonical text of a set of dimension values (JSON, keys sorted): what rollups group by.
pub fn dims_key(dims: &BTreeMap<String, String>) -> String {
    serde_json::to_string(dims).unwrap_or_else(|_| "{}".to_owned())
}

/// The dimension values back from their canonical text.
pub fn dims_of(key: &str) -> BTreeMap<String, String> {
    serde_json::from_str(key).unwrap_or_default()
}

/// Dimension values as people read them: `model=gpt-4o, region=eu`, or "—" for none.
pub fn dims_label(key: &str) -> String {
    let d = dims_of(key);
    if d.is_empty() {
        return "—".to_owned();
    }
    d.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// What a subject id stands for, as ingestion needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageSubject {
    pub tenant_id: TenantId,
    /// Set when the subject was an API key.
    pub api_key_id: Option<uuid::Uuid>,
    pub region: String,
    pub suspended: bool,
    /// The tenant's priority tier (prices may differ by tier).
    pub tier: crate::tenant::PriorityTier,
}

/// An accepted event, bound to its tenant: what the journal holds until a sweep moves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub tenant_id: TenantId,
    pub api_key_id: Option<uuid::Uuid>,
    pub source: String,
    pub event_id: String,
    pub meter: String,
    pub time: OffsetDateTime,
    pub value: i64,
    pub dims: String,
    pub received_at: OffsetDateTime,
}

/// A row of a region's journal: a single entry (the per-event rows of nodes before batch
/// rows, and of PostgreSQL's journals), or a batch row holding many ([`encode_entries`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JournalKey {
    Event(i64),
    Batch(i64),
}

/// Where a sweep goes on reading a region's journal: past these sequence numbers of each
/// kind of row (0: from the start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalCursor {
    pub event: i64,
    pub batch: i64,
}

/// One journal row as a sweep reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRow {
    pub key: JournalKey,
    pub entries: Vec<JournalEntry>,
}

/// What one read of a journal gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalTake {
    pub rows: Vec<JournalRow>,
    /// Entries in `rows`.
    pub entries: usize,
    /// Whether the read stopped at its limit (more may follow `next`).
    pub full: bool,
    /// Where the next read goes on from, when `full`.
    pub next: JournalCursor,
}

/// A journal row holding many entries (one accepted batch's events of one region): the
/// compact form [`encode_entries`] writes and [`decode_entries`] reads. One row and one
/// statement per batch instead of one row and ten parameters per event; the strings a batch
/// repeats (source, meter, dimension values) are written once.
///
/// Layout (version 1): `1`, the string table (varint count, then each as varint length +
/// UTF-8), the entries (varint count, then each: tenant id (16 bytes), `0` or `1` + API key id
/// (16 bytes), source (table index), event id (varint length + UTF-8), meter (table index),
/// time (i64 microseconds, zigzag varint), value (zigzag varint), dimensions (table index)).
/// Every entry of a row shares the row's `received_at`.
const JOURNAL_CODEC_V1: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn micros_of(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The compact form of a journal row's entries (see [`JOURNAL_CODEC_V1`]); times keep
/// microseconds, as the stores do.
pub fn encode_entries(entries: &[JournalEntry]) -> Vec<u8> {
    let mut table: Vec<&str> = Vec::new();
    let mut index: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for e in entries {
        for s in [e.source.as_str(), e.meter.as_str(), e.dims.as_str()] {
            if !index.contains_key(s) {
                index.insert(s, table.len() as u64);
                table.push(s);
            }
        }
    }
    let mut out = Vec::with_capacity(16 + table.iter().map(|s| s.len() + 2).sum::<usize>() + entries.len() * 64);
    out.push(JOURNAL_CODEC_V1);
    put_varint(&mut out, table.len() as u64);
    for s in &table {
        put_str(&mut out, s);
    }
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        out.extend_from_slice(e.tenant_id.0.as_bytes());
        match e.api_key_id {
            Some(k) => {
                out.push(1);
                out.extend_from_slice(k.as_bytes());
            }
            None => out.push(0),
        }
        put_varint(&mut out, index.get(e.source.as_str()).copied().unwrap_or(0));
        put_str(&mut out, &e.event_id);
        put_varint(&mut out, index.get(e.meter.as_str()).copied().unwrap_or(0));
        put_varint(&mut out, zigzag(micros_of(e.time)));
        put_varint(&mut out, zigzag(e.value));
        put_varint(&mut out, index.get(e.dims.as_str()).copied().unwrap_or(0));
    }
    out
}

/// A reader over an encoded row; every read fails cleanly on a short or malformed row.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }

    fn str(&mut self) -> Option<&'a str> {
        let n = self.len()?;
        std::str::from_utf8(self.bytes(n)?).ok()
    }

    fn uuid(&mut self) -> Option<uuid::Uuid> {
        uuid::Uuid::from_slice(self.bytes(16)?).ok()
    }
}

/// The entries of a journal row written by [`encode_entries`], each received at `received_at`.
pub fn decode_entries(payload: &[u8], received_at: OffsetDateTime) -> Result<Vec<JournalEntry>> {
    decode(payload, received_at)
        .ok_or_else(|| Error::internal("a usage journal row is not readable (unknown or damaged encoding)"))
}

fn decode(payload: &[u8], received_at: OffsetDateTime) -> Option<Vec<JournalEntry>> {
    let mut r = Reader { buf: payload };
    if r.byte()? != JOURNAL_CODEC_V1 {
        return None;
    }
    let strings = r.len()?;
    let mut table = Vec::with_capacity(strings.min(payload.len()));
    for _ in 0..strings {
        table.push(r.str()?);
    }
    let n = r.len()?;
    // Each entry takes at least 22 bytes: a count past that is damage, not a reason to allocate.
    let mut out = Vec::with_capacity(n.min(payload.len() / 22 + 1));
    let at = |r: &mut Reader<'_>| table.get(r.len()?).copied();
    for _ in 0..n {
        let tenant_id = TenantId(r.uuid()?);
        let api_key_id = match r.byte()? {
            0 => None,
            1 => Some(r.uuid()?),
            _ => return None,
        };
        let source = at(&mut r)?;
        let event_id = r.str()?;
        let meter = at(&mut r)?;
        let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unzigzag(r.varint()?)) * 1_000).ok()?;
        let value = unzigzag(r.varint()?);
        let dims = at(&mut r)?;
        out.push(JournalEntry {
            tenant_id,
            api_key_id,
            source: source.to_owned(),
            event_id: event_id.to_owned(),
            meter: meter.to_owned(),
            time,
            value,
            dims: dims.to_owned(),
            received_at,
        });
    }
    r.buf.is_empty().then_some(out)
}

/// One hour of one meter for one combination of dimension values and one API key (none when
/// the subject was the tenant): what a tenant's database keeps after the raw events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollup {
    /// The hour's start (UTC).
    pub hour: OffsetDateTime,
    pub meter: String,
    pub dims: String,
    pub api_key_id: Option<uuid::Uuid>,
    pub value: i64,
    pub events: i64,
}

/// A meter's total over a span for one combination of dimension values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterTotal {
    pub meter: String,
    pub dims: String,
    pub value: i64,
    pub events: i64,
}

/// The start of the UTC hour holding `t`.
pub fn hour_of(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_time(time::Time::from_hms(t.hour(), 0, 0).unwrap_or(time::Time::MIDNIGHT))
}

/// A calendar month (UTC): the billing period of budgets and cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: time::Month,
}

impl Month {
    pub fn of(t: OffsetDateTime) -> Self {
        let t = t.to_offset(time::UtcOffset::UTC);
        Self {
            year: t.year(),
            month: t.month(),
        }
    }

    /// `YYYY-MM`.
    pub fn parse(s: &str) -> Option<Self> {
        let (y, m) = s.trim().split_once('-')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let year: i32 = y.parse().ok()?;
        let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
        (2000..=9999).contains(&year).then_some(Self { year, month })
    }

    pub fn start(self) -> OffsetDateTime {
        time::Date::from_calendar_date(self.year, self.month, 1)
            .unwrap_or(time::Date::MIN)
            .midnight()
            .assume_utc()
    }

    pub fn next(self) -> Self {
        if self.month == time::Month::December {
            Self {
                year: self.year + 1,
                month: time::Month::January,
            }
        } else {
            Self {
                year: self.year,
                month: self.month.next(),
            }
        }
    }

    pub fn previous(self) -> Self {
        if self.month == time::Month::January {
            Self {
                year: self.year - 1,
                month: time::Month::December,
            }
        } else {
            Self {
                year: self.year,
                month: self.month.previous(),
            }
        }
    }

    /// The first instant after the month.
    pub fn end(self) -> OffsetDateTime {
        self.next().start()
    }

    /// "December 2026".
    pub fn label(self) -> String {
        format!("{} {}", self.month, self.year)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, u8::from(self.month))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;
    use serde_json::json;

    fn catalog() -> MeterCatalog {
        MeterCatalog::new(MeterCatalog::defaults()).unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn event(id: &str) -> serde_json::Value {
        json!({"specversion": "1.0", "id": id, "source": "gw", "type": "llm.tokens",
               "subject": uuid::Uuid::nil().to_string(), "data": {"tokens": 12, "model": "gpt-4o", "other": "x"}})
    }

    fn parse(v: serde_json::Value) -> (Vec<ParsedEvent>, Vec<Rejected>) {
        parse_events(
            &serde_json::to_vec(&v).unwrap(),
            Some(Envelope::Batch),
            &catalog(),
            &IngestLimits::default(),
            now(),
        )
        .unwrap()
    }

    #[test]
    fn a_good_event_keeps_only_the_meters_dimensions() {
        let (ok, rejected) = parse(json!([event("a")]));
        assert!(rejected.is_empty());
        assert_eq!(ok[0].value, 12);
        assert_eq!(ok[0].dims, r#"{"model":"gpt-4o"}"#);
        assert_eq!(ok[0].time, now());
    }

    #[test]
    fn each_bad_event_is_rejected_with_its_reason_and_the_rest_accepted() {
        let mut unknown = event("b");
        unknown["type"] = json!("nope");
        let mut no_value = event("c");
        no_value["data"] = json!({"model": "m"});
        let mut fraction = event("d");
        fraction["data"]["tokens"] = json!(1.5);
        let mut future = event("e");
        future["time"] = json!("2099-01-01T00:00:00Z");
        let mut bad_subject = event("f");
        bad_subject["subject"] = json!("someone");
        let mut huge = event("h");
        huge["data"]["tokens"] = json!(MAX_QUANTITY + 1);
        let (ok, rejected) = parse(json!([
            event("a"),
            unknown,
            no_value,
            fraction,
            future,
            bad_subject,
            7,
            huge,
            event("nul\u{0}id")
        ]));
        assert_eq!(ok.len(), 1);
        let codes: Vec<_> = rejected.iter().map(|r| (r.index, r.code)).collect();
        assert_eq!(
            codes,
            vec![
                (1, RejectReason::UnknownMeter),
                (2, RejectReason::MissingValue),
                (3, RejectReason::InvalidValue),
                (4, RejectReason::BadTime),
                (5, RejectReason::UnknownSubject),
                (6, RejectReason::InvalidEvent),
                (7, RejectReason::InvalidValue),
                (8, RejectReason::InvalidEvent),
            ]
        );
        assert_eq!(rejected[0].id.as_deref(), Some("b"));
    }

    #[test]
    fn a_batch_over_the_cap_is_refused_whole() {
        let items: Vec<_> = (0..1001).map(|i| event(&i.to_string())).collect();
        let body = serde_json::to_vec(&items).unwrap();
        let err = parse_events(
            &body,
            Some(Envelope::Batch),
            &catalog(),
            &IngestLimits::default(),
            now(),
        )
        .unwrap_err();
        assert_eq!(err.code(), "batch_too_large");
    }

    #[test]
    fn a_journal_row_reads_back_the_entries_it_was_written_from() {
        let t = TenantId(uuid::Uuid::new_v4());
        let at = now() + Duration::nanoseconds(123_456_789);
        let entries: Vec<JournalEntry> = (0..5)
            .map(|i| JournalEntry {
                tenant_id: if i % 2 == 0 { t } else { TenantId(uuid::Uuid::new_v4()) },
                api_key_id: (i % 3 == 0).then(uuid::Uuid::new_v4),
                source: if i < 3 { "gw".into() } else { "gw-2".into() },
                event_id: format!("ev-{i}-é"),
                meter: "llm.tokens".into(),
                time: now() - Duration::microseconds(i * 1_000_001),
                value: if i == 4 { MAX_QUANTITY } else { i },
                dims: if i == 1 {
                    "{}".into()
                } else {
                    r#"{"model":"gpt-4o"}"#.into()
                },
                received_at: at,
            })
            .collect();
        let row = encode_entries(&entries);
        // The received time is the row's, and keeps microseconds (as the stores do).
        let back = decode_entries(&row, at).unwrap();
        assert_eq!(back, entries);
        assert_eq!(decode_entries(&encode_entries(&[]), at).unwrap(), vec![]);
        // A damaged row is an error, never a panic or a wrong entry.
        for cut in [0, 1, 5, row.len() - 1] {
            assert!(decode_entries(&row[..cut], at).is_err(), "cut at {cut}");
        }
        let mut other = row.clone();
        other[0] = 9;
        assert!(decode_entries(&other, at).is_err());
    }

    #[test]
    fn months_count_across_the_year_end() {
        let m = Month::parse("2026-12").unwrap();
        assert_eq!(m.next().to_string(), "2027-01");
        assert_eq!(m.previous().to_string(), "2026-11");
        assert_eq!(Month::of(m.end() - Duration::seconds(1)), m);
        assert!(Month::parse("2026-13").is_none());
    }
}
