//! The portal's usage and cost (issue 12), for who may read the tenant's usage (its admins, or
//! a platform user with `billing:read` impersonating): **Usage** (`/portal/usage`: per meter a
//! chart of the days drawn as SVG on the server, the same numbers in a table, breakdowns by
//! dimension values and by API key, a date range), its CSV (`/portal/usage.csv`), **Cost**
//! (`/portal/cost`: this month and the five before, against the budget), and the dashboard's
//! usage cards. Figures come from `Core`; this module only lays them out.

use super::chart::{BarChart, with_unit};
use super::portal::PortalChrome;
use super::{Errors, render};
use crate::auth::PortalSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::access::ReadUsage;
use quarterdeck_domain::budget::{BudgetStatus, Standing};
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::core::{CostLine, Freshness, MeterUsage, MonthCost, Share, UsageRow};
use quarterdeck_domain::tenant::Tenant;
use quarterdeck_domain::usage::{Aggregation, Meter, dims_label};
use quarterdeck_domain::{Error, FieldError};
use time::macros::format_description;
use time::{Date, Duration};

/// Days the Usage page shows by default (ending today).
const DEFAULT_DAYS: i64 = 30;
/// Months the Cost page shows: this one and the five before.
const COST_MONTHS: u32 = 6;

// ---- Usage ---------------------------------------------------------------------------------

/// A day in the table beneath a chart.
pub struct DayRow {
    pub date: String,
    pub value: String,
    pub events: String,
}

/// A breakdown line (dimension values or API key).
pub struct ShareRow {
    pub label: String,
    pub value: String,
    /// "42 %", or "—" where parts do not add up (a `max` meter).
    pub share: String,
    pub events: String,
}

/// One meter's section of the Usage page.
pub struct MeterView {
    /// For ids in the page.
    pub slug: String,
    pub name: String,
    /// "Total" (or "Highest" for a `max` meter) with its value.
    pub total_label: &'static str,
    pub total: String,
    pub events: String,
    pub empty: bool,
    pub chart: BarChart,
    pub days: Vec<DayRow>,
    /// The dimensions the meter keeps ("model"), for the breakdown's heading.
    pub dimension_names: String,
    pub by_dimension: Vec<ShareRow>,
    pub by_key: Vec<ShareRow>,
}

impl MeterView {
    fn of(m: &MeterUsage) -> Self {
        let unit = m.meter.unit.clone().unwrap_or_default();
        let slug: String = m
            .meter
            .event_type
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let points: Vec<(Date, i64)> = m.days.iter().map(|d| (d.day, d.value)).collect();
        let adds_up = m.meter.aggregation != Aggregation::Max;
        let share = |s: &Share| ShareRow {
            label: s.label.clone(),
            value: with_unit(s.value, &unit),
            share: if adds_up {
                percent(s.value, m.total)
            } else {
                "—".to_owned()
            },
            events: with_unit(s.events, ""),
        };
        Self {
            chart: BarChart::daily(&format!("chart-{slug}"), &m.meter.name, &points, &unit),
            slug,
            name: m.meter.name.clone(),
            total_label: if adds_up { "Total" } else { "Highest" },
            total: with_unit(m.total, &unit),
            events: with_unit(m.events, ""),
            empty: m.events == 0,
            days: m
                .days
                .iter()
                .map(|d| DayRow {
                    date: d.day.to_string(),
                    value: with_unit(d.value, &unit),
                    events: with_unit(d.events, ""),
                })
                .collect(),
            dimension_names: m.meter.dimensions.join(", "),
            by_dimension: m.by_dimension.iter().map(share).collect(),
            by_key: m.by_key.iter().map(share).collect(),
        }
    }
}

/// "42 %", "<1 %" for a sliver, "0 %".
fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 || part <= 0 {
        return "0 %".to_owned();
    }
    let p = i128::from(part) * 100 / i128::from(whole);
    if p == 0 { "<1 %".to_owned() } else { format!("{p} %") }
}

#[derive(Template)]
#[template(path = "portal_usage.html")]
pub struct UsagePage {
    pub chrome: PortalChrome,
    /// The range as typed (kept when it is wrong).
    pub from: String,
    pub to: String,
    pub errors: Errors,
    /// The range shown, in words ("2026-11-03 to 2026-12-02"); empty when the range was refused.
    pub range: String,
    pub meters: Vec<MeterView>,
    pub freshness: String,
    /// `/portal/usage.csv?from=…&to=…` for the range shown.
    pub csv_href: String,
}

impl UsagePage {
    pub fn nothing_used(&self) -> bool {
        self.meters.iter().all(|m| m.empty)
    }
}

/// `from` and `to` as the query gives them (the first of each; absent or empty: the default).
struct RangeQuery {
    from: String,
    to: String,
}

impl RangeQuery {
    fn of(pairs: &[(String, String)]) -> Self {
        let first = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            from: first("from"),
            to: first("to"),
        }
    }

    /// The days asked for; a date that does not parse is an error on its field. Whether the
    /// span is allowed is the domain's to say.
    fn dates(&self, today: Date) -> Result<(Date, Date), Error> {
        let mut problems = Vec::new();
        let mut day = |field: &str, raw: &str, default: Date| {
            if raw.is_empty() {
                return default;
            }
            Date::parse(raw, format_description!("[year]-[month]-[day]")).unwrap_or_else(|_| {
                problems.push(FieldError::new(
                    field,
                    "invalid_date",
                    "Enter a date as YYYY-MM-DD, e.g. 2026-12-01.",
                ));
                default
            })
        };
        let to = day("to", &self.to, today);
        let from = day("from", &self.from, to - Duration::days(DEFAULT_DAYS - 1));
        if problems.is_empty() {
            Ok((from, to))
        } else {
            Err(Error::Validation(problems))
        }
    }
}

/// "Up to date as of 14:02:11 UTC (3 s ago)", or "No usage received yet".
pub fn freshness_line(f: &Freshness) -> String {
    match (f.through, f.lag_seconds()) {
        (Some(t), Some(lag)) => {
            let at = t
                .format(format_description!("[hour]:[minute]:[second]"))
                .unwrap_or_default();
            format!("Up to date as of {at} UTC ({lag} s ago)")
        }
        _ => "No usage received yet".to_owned(),
    }
}

/// `GET /portal/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`.
pub async fn usage(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let proof = s.principal.require_for_tenant::<ReadUsage>(t.id)?;
    let q = RangeQuery::of(&pairs);
    let today = state.core.clock.now().date();
    let report = match q.dates(today) {
        Ok((from, to)) => state.core.usage_report(&proof, from, to).await,
        Err(e) => Err(e),
    };
    match report {
        Ok(r) => Ok(render(&UsagePage {
            chrome: PortalChrome::new(&s, &t, "usage"),
            from: r.from.to_string(),
            to: r.to.to_string(),
            errors: Errors::default(),
            range: format!("{} to {}", r.from, r.to),
            meters: r.meters.iter().map(MeterView::of).collect(),
            freshness: freshness_line(&r.freshness),
            csv_href: format!("/portal/usage.csv?from={}&to={}", r.from, r.to),
        })),
        Err(Error::Validation(fields)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&UsagePage {
                chrome: PortalChrome::new(&s, &t, "usage"),
                from: q.from,
                to: q.to,
                errors: Errors::from_fields(&fields),
                range: String::new(),
                meters: Vec::new(),
                freshness: String::new(),
                csv_href: String::new(),
            }),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

// ---- CSV -----------------------------------------------------------------------------------

const CSV_HEADER: [&str; 7] = [
    "date",
    "meter",
    "dimensions",
    "api_key_id",
    "api_key_name",
    "value",
    "events",
];

/// `GET /portal/usage.csv?from&to`: one line per day, meter, dimension values and key.
pub async fn usage_csv(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let proof = s.principal.require_for_tenant::<ReadUsage>(t.id)?;
    let (from, to) = RangeQuery::of(&pairs).dates(state.core.clock.now().date())?;
    let rows = state.core.usage_rows(&proof, from, to).await?;
    let filename = format!("usage-{}-{from}-{to}.csv", t.slug.as_str());
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        csv(&rows),
    )
        .into_response())
}

/// The CSV document (RFC 4180: CRLF line ends, fields quoted when they must be).
pub fn csv(rows: &[UsageRow]) -> String {
    let mut out = String::new();
    push_record(&mut out, CSV_HEADER.iter().map(|h| (*h).to_owned()));
    for r in rows {
        let dims = if r.dims.is_empty() || r.dims == "{}" {
            String::new()
        } else {
            dims_label(&r.dims)
        };
        push_record(
            &mut out,
            [
                r.day.to_string(),
                r.meter.clone(),
                dims,
                r.api_key_id.map(|k| k.to_string()).unwrap_or_default(),
                r.api_key_name.clone(),
                r.value.to_string(),
                r.events.to_string(),
            ],
        );
    }
    out
}

fn push_record(out: &mut String, fields: impl IntoIterator<Item = String>) {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(&f));
    }
    out.push_str("\r\n");
}

/// One field: a leading `= + - @` (or tab, carriage return) gets an apostrophe so that a
/// spreadsheet does not run it as a formula (key names and dimension values are anyone's
/// input); then quoted if it holds a comma, a quote or a line break.
pub fn csv_field(raw: &str) -> String {
    let neutral = if raw.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{raw}")
    } else {
        raw.to_owned()
    };
    if neutral.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", neutral.replace('"', "\"\""))
    } else {
        neutral
    }
}

// ---- Cost ----------------------------------------------------------------------------------

/// A priced line.
pub struct LineView {
    pub meter: String,
    pub dims: String,
    pub quantity: String,
    /// "USD 2.50 / 1,000,000 tokens", or "Not priced".
    pub unit_price: String,
    pub cost: String,
}

/// A month of the Cost page.
pub struct MonthView {
    /// `2026-12`
    pub id: String,
    /// "December 2026"
    pub label: String,
    pub total: String,
    pub lines: Vec<LineView>,
}

/// The budget against this month.
pub struct BudgetView {
    pub amount: String,
    pub spent: String,
    pub percent: i64,
    /// `<progress>`: value and max in minor units (the value stops at max).
    pub progress_value: i64,
    pub progress_max: i64,
    pub threshold_percent: u8,
    pub threshold_amount: String,
    pub hard_limit: bool,
    pub blocked: bool,
    pub standing: &'static str,
    pub standing_label: &'static str,
}

#[derive(Template)]
#[template(path = "portal_cost.html")]
pub struct CostPage {
    pub chrome: PortalChrome,
    pub current: MonthView,
    pub previous: Vec<MonthView>,
    pub budget: Option<BudgetView>,
    pub freshness: String,
}

fn unit_of(state: &AppState, meter: &str) -> String {
    state
        .core
        .config
        .meters
        .get(meter)
        .and_then(|m| m.unit.clone())
        .unwrap_or_default()
}

fn line_view(state: &AppState, l: &CostLine) -> LineView {
    let pricing = &state.core.config.pricing;
    let unit = unit_of(state, &l.meter);
    let unit_price = match &l.price {
        Some(p) if p.per == 1 => format!("{} each", pricing.format(p.unit_price)),
        Some(p) => format!("{} / {}", pricing.format(p.unit_price), with_unit(p.per, &unit)),
        None => "Not priced".to_owned(),
    };
    LineView {
        meter: l.meter_name.clone(),
        dims: dims_label(&l.dims),
        quantity: with_unit(l.quantity, &unit),
        unit_price,
        cost: pricing.format(l.cost),
    }
}

fn month_view(state: &AppState, m: &MonthCost) -> MonthView {
    MonthView {
        id: m.month.to_string(),
        label: m.month.label(),
        total: state.core.config.pricing.format(m.total),
        lines: m.lines.iter().map(|l| line_view(state, l)).collect(),
    }
}

fn budget_view(state: &AppState, b: &BudgetStatus) -> BudgetView {
    let pricing = &state.core.config.pricing;
    let amount = b.budget.amount.max(1);
    BudgetView {
        amount: pricing.format(b.budget.amount),
        spent: pricing.format(b.spent),
        percent: b.percent(),
        progress_value: b.spent.clamp(0, amount),
        progress_max: amount,
        threshold_percent: b.budget.threshold_percent,
        threshold_amount: pricing.format(b.budget.threshold_amount()),
        hard_limit: b.budget.hard_limit,
        blocked: b.blocked,
        standing: b.standing.as_str(),
        standing_label: match b.standing {
            Standing::Within => "Within budget",
            Standing::ThresholdReached => "Alert threshold reached",
            Standing::Exceeded => "Budget reached",
        },
    }
}

/// `GET /portal/cost`.
pub async fn cost(State(state): State<AppState>, PortalSession(s, t): PortalSession) -> Result<Response, HtmlError> {
    let proof = s.principal.require_for_tenant::<ReadUsage>(t.id)?;
    let report = state.core.cost_report(&proof, COST_MONTHS).await?;
    let mut months = report.months.iter().map(|m| month_view(&state, m));
    let Some(current) = months.next() else {
        return Err(Error::internal("the cost report has no current month").into());
    };
    Ok(render(&CostPage {
        chrome: PortalChrome::new(&s, &t, "cost"),
        current,
        previous: months.collect(),
        budget: report.budget.as_ref().map(|b| budget_view(&state, b)),
        freshness: freshness_line(&report.freshness),
    }))
}

// ---- Dashboard cards -----------------------------------------------------------------------

/// One meter's month to date on the dashboard.
pub struct MeterCard {
    pub slug: String,
    pub name: String,
    pub value: String,
    pub unit: String,
}

/// The dashboard's usage and cost cards.
pub struct UsageCards {
    pub month: String,
    pub cost: String,
    /// "65 % of the USD 10.00 budget", when there is one.
    pub budget: Option<String>,
    pub blocked: bool,
    pub meters: Vec<MeterCard>,
}

/// The cards for who may read usage; `None` for the others.
pub async fn dashboard_cards(state: &AppState, s: &SignedIn, t: &Tenant) -> Result<Option<UsageCards>, Error> {
    let Ok(proof) = s.principal.require_for_tenant::<ReadUsage>(t.id) else {
        return Ok(None);
    };
    let report = state.core.cost_report(&proof, 1).await?;
    let Some(month) = report.months.first() else {
        return Ok(None);
    };
    let pricing = &state.core.config.pricing;
    let meters = state
        .core
        .config
        .meters
        .meters()
        .iter()
        .map(|m| meter_card(m, &month.lines))
        .collect();
    Ok(Some(UsageCards {
        month: month.month.label(),
        cost: pricing.format(month.total),
        budget: report
            .budget
            .as_ref()
            .map(|b| format!("{} % of the {} budget", b.percent(), pricing.format(b.budget.amount))),
        blocked: report.budget.as_ref().is_some_and(|b| b.blocked),
        meters,
    }))
}

fn meter_card(m: &Meter, lines: &[CostLine]) -> MeterCard {
    let total = lines
        .iter()
        .filter(|l| l.meter == m.event_type)
        .fold(0, |acc, l| m.aggregation.fold(acc, l.quantity));
    MeterCard {
        slug: m
            .event_type
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect(),
        name: m.name.clone(),
        value: with_unit(total, ""),
        unit: m.unit.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formula_is_neutralised_and_a_comma_or_quote_is_quoted() {
        assert_eq!(csv_field("=cmd"), "'=cmd");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("@x"), "'@x");
        assert_eq!(csv_field("-2"), "'-2");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=a,b"), "\"'=a,b\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn a_share_is_a_whole_percent() {
        assert_eq!(percent(1, 3), "33 %");
        assert_eq!(percent(1, 1000), "<1 %");
        assert_eq!(percent(0, 10), "0 %");
    }
}
