//! `/billing` (every tenant's usage and cost for a month, sortable) and `/billing.csv` (the same
//! table as a spreadsheet), for platform users with `billing:read`.

use super::{Chrome, Errors, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::FieldError;
use quarterdeck_domain::access::ViewBilling;
use quarterdeck_domain::core::{BillingOverview, BillingRow};
use quarterdeck_domain::pricing::{PriceBook, group};
use quarterdeck_domain::usage::{Meter, Month};
use serde::Deserialize;
use std::cmp::Ordering;

#[derive(Deserialize, Default)]
pub struct BillingQuery {
    #[serde(default)]
    month: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    dir: String,
}

/// The columns the table sorts by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SortKey {
    Cost,
    Name,
    Events,
    Budget,
}

impl SortKey {
    fn parse(s: &str) -> Self {
        match s {
            "name" => Self::Name,
            "events" => Self::Events,
            "budget" => Self::Budget,
            _ => Self::Cost,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Self::Cost => "cost",
            Self::Name => "name",
            Self::Events => "events",
            Self::Budget => "budget",
        }
    }
    /// Names read A to Z first; figures largest first.
    fn default_ascending(self) -> bool {
        self == Self::Name
    }
}

/// What the query asks for, with a bad month reported (and the current month shown).
struct Asked {
    month: Month,
    month_error: Option<FieldError>,
    sort: SortKey,
    ascending: bool,
}

fn asked(q: &BillingQuery, now: time::OffsetDateTime) -> Asked {
    let current = Month::of(now);
    let (month, month_error) = if q.month.trim().is_empty() {
        (current, None)
    } else {
        match Month::parse(&q.month) {
            Some(m) => (m, None),
            None => (
                current,
                Some(FieldError::new(
                    "month",
                    "invalid_month",
                    "Choose a month as YYYY-MM, e.g. 2026-12.",
                )),
            ),
        }
    };
    let sort = SortKey::parse(&q.sort);
    let ascending = match q.dir.as_str() {
        "asc" => true,
        "desc" => false,
        _ => sort.default_ascending(),
    };
    Asked {
        month,
        month_error,
        sort,
        ascending,
    }
}

/// The month's cost as a share of the budget, in percent.
fn percent_used(r: &BillingRow) -> Option<i64> {
    r.budget
        .as_ref()
        .filter(|b| b.amount > 0)
        .map(|b| i64::try_from(i128::from(r.cost) * 100 / i128::from(b.amount)).unwrap_or(i64::MAX))
}

fn sort_rows(rows: &mut [BillingRow], key: SortKey, ascending: bool) {
    let name = |r: &BillingRow| r.tenant.name.as_str().to_lowercase();
    rows.sort_by(|a, b| {
        let primary = match key {
            SortKey::Cost => a.cost.cmp(&b.cost),
            SortKey::Name => name(a).cmp(&name(b)),
            SortKey::Events => a.events.cmp(&b.events),
            // Tenants without a budget sort below every one with a budget.
            SortKey::Budget => percent_used(a)
                .unwrap_or(-1)
                .cmp(&percent_used(b).unwrap_or(-1))
                .then_with(|| {
                    let amount = |r: &BillingRow| r.budget.as_ref().map_or(-1, |b| b.amount);
                    amount(a).cmp(&amount(b))
                }),
        };
        let primary = if ascending { primary } else { primary.reverse() };
        if primary == Ordering::Equal {
            name(a).cmp(&name(b)).then(a.tenant.id.0.cmp(&b.tenant.id.0))
        } else {
            primary
        }
    });
}

/// A quantity as people read it: `1,234,567`.
fn quantity(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", group(n.unsigned_abs()))
}

/// A meter's column heading.
pub struct MeterColumn {
    pub name: String,
    pub unit: String,
}

/// One tenant's line of the table.
pub struct Line {
    pub id: String,
    pub name: String,
    pub status: &'static str,
    pub status_label: &'static str,
    pub tier: &'static str,
    pub quantities: Vec<String>,
    pub events: String,
    pub cost: String,
    /// The budget's amount and the share used, when one is set.
    pub budget: Option<(String, i64)>,
}

/// A sortable column heading: its link, and whether (and how) the table is sorted by it.
pub struct SortLink {
    pub href: String,
    /// `ascending`, `descending` or "" (for `aria-sort`).
    pub aria: &'static str,
    /// "▲", "▼" or "".
    pub arrow: &'static str,
}

#[derive(Template)]
#[template(path = "billing.html")]
pub struct BillingPage {
    pub chrome: Chrome,
    pub month_label: String,
    pub month_input: String,
    pub prev_link: String,
    pub next_link: String,
    pub csv_link: String,
    pub meters: Vec<MeterColumn>,
    pub lines: Vec<Line>,
    pub totals: Vec<String>,
    pub total_events: String,
    pub total_cost: String,
    pub sort_name: SortLink,
    pub sort_events: SortLink,
    pub sort_cost: SortLink,
    pub sort_budget: SortLink,
    pub errors: Errors,
}

fn link(month: Month, sort: SortKey, ascending: bool) -> String {
    format!(
        "/billing?month={month}&sort={}&dir={}",
        sort.as_str(),
        if ascending { "asc" } else { "desc" }
    )
}

fn sort_link(a: &Asked, key: SortKey) -> SortLink {
    let active = a.sort == key;
    // A click on the sorted column turns it round; on another, sorts by it its usual way.
    let ascending = if active { !a.ascending } else { key.default_ascending() };
    SortLink {
        href: link(a.month, key, ascending),
        aria: match (active, a.ascending) {
            (false, _) => "",
            (true, true) => "ascending",
            (true, false) => "descending",
        },
        arrow: match (active, a.ascending) {
            (false, _) => "",
            (true, true) => "▲",
            (true, false) => "▼",
        },
    }
}

/// Per meter, the month's quantity over every tenant (folded the meter's way).
fn meter_totals(meters: &[Meter], rows: &[BillingRow]) -> Vec<i64> {
    meters
        .iter()
        .map(|m| {
            rows.iter()
                .filter_map(|r| r.quantities.get(&m.event_type))
                .fold(0, |acc, q| m.aggregation.fold(acc, *q))
        })
        .collect()
}

fn page(chrome: Chrome, a: &Asked, o: &BillingOverview, meters: &[Meter], prices: &PriceBook) -> BillingPage {
    let lines = o
        .rows
        .iter()
        .map(|r| Line {
            id: r.tenant.id.to_string(),
            name: r.tenant.name.as_str().to_owned(),
            status: r.tenant.status.as_str(),
            status_label: r.tenant.status.label(),
            tier: r.tenant.tier.label(),
            quantities: meters
                .iter()
                .map(|m| quantity(r.quantities.get(&m.event_type).copied().unwrap_or(0)))
                .collect(),
            events: quantity(r.events),
            cost: prices.format(r.cost),
            budget: r
                .budget
                .as_ref()
                .map(|b| (prices.format(b.amount), percent_used(r).unwrap_or(0))),
        })
        .collect();
    BillingPage {
        chrome,
        month_label: a.month.label(),
        month_input: a.month.to_string(),
        prev_link: link(a.month.previous(), a.sort, a.ascending),
        next_link: link(a.month.next(), a.sort, a.ascending),
        csv_link: format!(
            "/billing.csv?month={}&sort={}&dir={}",
            a.month,
            a.sort.as_str(),
            if a.ascending { "asc" } else { "desc" }
        ),
        meters: meters
            .iter()
            .map(|m| MeterColumn {
                name: m.name.clone(),
                unit: m.unit.clone().unwrap_or_default(),
            })
            .collect(),
        lines,
        totals: meter_totals(meters, &o.rows).into_iter().map(quantity).collect(),
        total_events: quantity(o.rows.iter().map(|r| r.events).fold(0, i64::saturating_add)),
        total_cost: prices.format(o.total),
        sort_name: sort_link(a, SortKey::Name),
        sort_events: sort_link(a, SortKey::Events),
        sort_cost: sort_link(a, SortKey::Cost),
        sort_budget: sort_link(a, SortKey::Budget),
        errors: Errors::from_fields(&a.month_error.iter().cloned().collect::<Vec<_>>()),
    }
}

pub async fn show(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Query(q): Query<BillingQuery>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ViewBilling>()?;
    let a = asked(&q, state.core.clock.now());
    let mut overview = state.core.billing(&auth, a.month).await?;
    sort_rows(&mut overview.rows, a.sort, a.ascending);
    let mut p = page(
        Chrome::console(&s, "billing"),
        &a,
        &overview,
        state.core.config.meters.meters(),
        &state.core.config.pricing,
    );
    if a.month_error.is_some() {
        // Keep what was typed, so it can be corrected.
        p.month_input = q.month.chars().take(20).collect();
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&p)).into_response());
    }
    Ok(render(&p))
}

// ---- CSV ----------------------------------------------------------------------------------

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// Text that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, or a tab or carriage
/// return before one) gets a leading apostrophe, so it stays text.
fn neutralise(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

fn csv_line(out: &mut String, fields: &[String]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
    out.push_str("\r\n");
}

/// Minor units as a plain decimal in major units (`1234.56`), for spreadsheets.
fn decimal(minor: i64, minor_units: i64) -> String {
    let places: usize = match minor_units {
        1 => 0,
        10 => 1,
        1000 => 3,
        _ => 2,
    };
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let unit = minor_units.unsigned_abs().max(1);
    if places == 0 {
        format!("{sign}{}", abs / unit)
    } else {
        format!("{sign}{}.{:0places$}", abs / unit, abs % unit)
    }
}

fn csv(o: &BillingOverview, meters: &[Meter], minor_units: i64) -> String {
    let mut out = String::new();
    let mut head = vec![
        "Tenant".to_owned(),
        "Tenant id".to_owned(),
        "Status".to_owned(),
        "Tier".to_owned(),
    ];
    head.extend(meters.iter().map(|m| match &m.unit {
        Some(u) => format!("{} ({u})", m.name),
        None => m.name.clone(),
    }));
    head.extend([
        "Events".to_owned(),
        format!("Cost ({})", o.currency),
        format!("Budget ({})", o.currency),
        "Budget used (%)".to_owned(),
    ]);
    csv_line(&mut out, &head);
    for r in &o.rows {
        let mut f = vec![
            neutralise(r.tenant.name.as_str()),
            r.tenant.id.to_string(),
            r.tenant.status.as_str().to_owned(),
            r.tenant.tier.as_str().to_owned(),
        ];
        f.extend(
            meters
                .iter()
                .map(|m| r.quantities.get(&m.event_type).copied().unwrap_or(0).to_string()),
        );
        f.push(r.events.to_string());
        f.push(decimal(r.cost, minor_units));
        f.push(
            r.budget
                .as_ref()
                .map(|b| decimal(b.amount, minor_units))
                .unwrap_or_default(),
        );
        f.push(percent_used(r).map(|p| p.to_string()).unwrap_or_default());
        csv_line(&mut out, &f);
    }
    let mut total = vec!["Total".to_owned(), String::new(), String::new(), String::new()];
    total.extend(meter_totals(meters, &o.rows).into_iter().map(|q| q.to_string()));
    total.push(o.rows.iter().map(|r| r.events).fold(0, i64::saturating_add).to_string());
    total.push(decimal(o.total, minor_units));
    total.extend([String::new(), String::new()]);
    csv_line(&mut out, &total);
    out
}

pub async fn export(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Query(q): Query<BillingQuery>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ViewBilling>()?;
    let a = asked(&q, state.core.clock.now());
    if let Some(e) = a.month_error {
        return Err(HtmlError(quarterdeck_domain::Error::Validation(vec![e])));
    }
    let mut overview = state.core.billing(&auth, a.month).await?;
    sort_rows(&mut overview.rows, a.sort, a.ascending);
    let body = csv(
        &overview,
        state.core.config.meters.meters(),
        state.core.config.pricing.minor_units(),
    );
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"billing-{}.csv\"", a.month))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_neutralised() {
        let mut out = String::new();
        csv_line(
            &mut out,
            &[
                neutralise("=SUM(A1)"),
                neutralise("a,\"b\""),
                neutralise("plain"),
                neutralise("@x"),
            ],
        );
        assert_eq!(out, "'=SUM(A1),\"a,\"\"b\"\"\",plain,'@x\r\n");
        assert_eq!(decimal(123_456, 100), "1234.56");
        assert_eq!(decimal(5, 100), "0.05");
        assert_eq!(decimal(7, 1), "7");
    }
}
