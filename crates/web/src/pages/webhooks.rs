//! Settings → Webhooks (`/settings/webhooks`): the owner's webhook endpoints (platform
//! configuration, `ManageWebhooks`). A list; a New endpoint form (URL, description, event types
//! grouped by resource with "every … event", region, enabled); each endpoint's page with its
//! edit form, Enable / Disable, Roll secret and Delete (both confirmed), and its deliveries with
//! **Resend**. The signing secret is shown once, on the page that answers the create or the roll.

use super::{Chrome, Errors, Opt, ShownOnce, fmt_time, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::access::{Authorized, ManageWebhooks};
use quarterdeck_domain::core::{EndpointWithSecret, SignedIn};
use quarterdeck_domain::webhook::{DeliveryView, Endpoint, EndpointDraft, Topic};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Deliveries shown per page of an endpoint's page.
const DELIVERIES_PER_PAGE: u32 = 50;

/// The badge class for an endpoint's state (`Endpoint::state`).
fn state_badge(state: &str) -> &'static str {
    match state {
        "enabled" => "active",
        "failing" => "read_only",
        "disabled (failing)" => "suspended",
        _ => "neutral",
    }
}

/// One row of the list, and the head of an endpoint's page.
pub struct EndpointRow {
    pub id: String,
    pub url: String,
    pub description: String,
    pub event_types: String,
    pub region: String,
    pub state: &'static str,
    pub badge: &'static str,
    pub enabled: bool,
    /// Why it is disabled, in words ("" when enabled).
    pub reason: String,
    /// "" when the last attempt succeeded (or none was made).
    pub failing_since: String,
    /// Until when a rolled secret still signs ("" when none).
    pub previous_secret_until: String,
    pub created: String,
    pub updated: String,
}

impl EndpointRow {
    fn of(e: &Endpoint, now: OffsetDateTime) -> Self {
        let state = e.state();
        Self {
            id: e.id.to_string(),
            url: e.url.clone(),
            description: e.description.clone(),
            event_types: e.subscription.patterns().join(", "),
            region: e.region.clone().unwrap_or_else(|| "all".to_owned()),
            state,
            badge: state_badge(state),
            enabled: e.enabled,
            reason: match (e.enabled, e.disabled_reason.as_deref()) {
                (true, _) => String::new(),
                (false, Some("failing")) => "disabled after 3 days without a successful delivery".to_owned(),
                (false, _) => "disabled by hand".to_owned(),
            },
            failing_since: e.failing_since.map(fmt_time).unwrap_or_default(),
            previous_secret_until: e
                .previous_secret_until
                .filter(|u| e.previous_secret_sealed.is_some() && *u > now)
                .map(fmt_time)
                .unwrap_or_default(),
            created: fmt_time(e.created_at),
            updated: fmt_time(e.updated_at),
        }
    }
}

/// A delivery as its table shows it.
pub struct DeliveryRow {
    pub id: String,
    pub event_type: String,
    pub event_id: String,
    pub attempts: u32,
    /// `HTTP 200`, `HTTP 500`, `timeout`…, or "—" before the first attempt.
    pub last_result: String,
    /// `123 ms`, or "—".
    pub response_time: String,
    pub last_attempt: String,
    /// When the next attempt is due (pending only), else "—".
    pub next_retry: String,
    pub status: String,
    pub badge: &'static str,
}

impl DeliveryRow {
    fn of(d: &DeliveryView) -> Self {
        let last_result = match (d.last_status, &d.last_error) {
            (_, Some(err)) => err.clone(),
            (Some(s), None) => format!("HTTP {s}"),
            (None, None) => "—".to_owned(),
        };
        Self {
            id: d.id.to_string(),
            event_type: d.event_type.clone(),
            event_id: d.event_id.to_string(),
            attempts: d.attempts,
            last_result,
            response_time: d
                .last_response_ms
                .filter(|_| d.attempts > 0)
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "—".to_owned()),
            last_attempt: d.last_attempt_at.map(fmt_time).unwrap_or_else(|| "—".to_owned()),
            next_retry: d.next_attempt_at.map(fmt_time).unwrap_or_else(|| "—".to_owned()),
            badge: match d.status.as_str() {
                "delivered" => "active",
                "failed" => "suspended",
                "cancelled" => "neutral",
                _ => "invited",
            },
            status: d.status.clone(),
        }
    }
}

/// The endpoint form as posted (event types repeat), kept as typed when it is shown again.
#[derive(Default, Clone)]
pub struct EndpointForm {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub region: String,
    pub enabled: bool,
    /// The endpoint's `updated_at` (unix nanoseconds) when the form was loaded: a save over a
    /// change made since is refused, not applied over it.
    pub version: String,
}

impl EndpointForm {
    fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut f = Self::default();
        for (k, v) in pairs {
            match k.as_str() {
                "url" => f.url = v.clone(),
                "description" => f.description = v.clone(),
                "event_types" => f.event_types.push(v.clone()),
                "region" => f.region = v.clone(),
                "enabled" => f.enabled = true,
                "version" => f.version = v.clone(),
                _ => {}
            }
        }
        f
    }

    fn blank() -> Self {
        Self {
            enabled: true,
            ..Default::default()
        }
    }

    fn of(e: &Endpoint) -> Self {
        Self {
            url: e.url.clone(),
            description: e.description.clone(),
            event_types: e.subscription.patterns().to_vec(),
            region: e.region.clone().unwrap_or_default(),
            enabled: e.enabled,
            version: e.updated_at.unix_timestamp_nanos().to_string(),
        }
    }

    /// What is subscribed to, tidied: `*` alone if chosen, and a family's events dropped when
    /// the whole family is chosen.
    fn subscription(&self) -> Vec<String> {
        if self.event_types.iter().any(|t| t == "*") {
            return vec!["*".to_owned()];
        }
        let families: Vec<&str> = self.event_types.iter().filter_map(|t| t.strip_suffix(".*")).collect();
        self.event_types
            .iter()
            .filter(|t| t.ends_with(".*") || !families.iter().any(|f| t.split('.').next() == Some(*f)))
            .cloned()
            .collect()
    }

    fn draft(&self, state: &AppState) -> Result<EndpointDraft, Error> {
        EndpointDraft::parse(
            &self.url,
            &self.description,
            &self.subscription(),
            Some(self.region.as_str()),
            self.enabled,
            &state.core.config.regions,
        )
    }
}

/// One checkbox.
pub struct Choice {
    pub value: String,
    pub checked: bool,
}

/// The event types of one resource (`tenant`), with "every tenant event" (`tenant.*`).
pub struct TopicGroup {
    pub family: String,
    /// The resource in words: "API key", "provider credential".
    pub label: String,
    pub every: Choice,
    pub topics: Vec<Choice>,
}

/// The form's choices, checked as `form` says.
pub struct FormChoices {
    pub everything: bool,
    pub groups: Vec<TopicGroup>,
    pub regions: Vec<Opt>,
}

impl FormChoices {
    fn of(state: &AppState, form: &EndpointForm) -> Self {
        let checked = |v: &str| form.event_types.iter().any(|t| t == v);
        let mut groups: Vec<TopicGroup> = Vec::new();
        for t in Topic::ALL {
            let family = t.as_str().split('.').next().unwrap_or_default().to_owned();
            let choice = Choice {
                value: t.as_str().to_owned(),
                checked: checked(t.as_str()),
            };
            match groups.iter_mut().find(|g| g.family == family) {
                Some(g) => g.topics.push(choice),
                None => {
                    let every = format!("{family}.*");
                    groups.push(TopicGroup {
                        every: Choice {
                            checked: checked(&every),
                            value: every,
                        },
                        label: match family.as_str() {
                            "api_key" => "API key".to_owned(),
                            f => f.replace('_', " "),
                        },
                        family,
                        topics: vec![choice],
                    });
                }
            }
        }
        let mut regions = vec![Opt {
            value: String::new(),
            label: "All regions".to_owned(),
            selected: form.region.is_empty(),
        }];
        regions.extend(state.core.config.regions.iter().map(|r| Opt {
            value: r.clone(),
            label: r.clone(),
            selected: *r == form.region,
        }));
        // A region no longer configured stays shown as chosen, so saving never widens the
        // endpoint to every region unnoticed (the save is refused until another is picked).
        if !form.region.is_empty() && !state.core.config.regions.contains(&form.region) {
            regions.push(Opt {
                value: form.region.clone(),
                label: format!("{} (no longer configured)", form.region),
                selected: true,
            });
        }
        Self {
            everything: checked("*"),
            groups,
            regions,
        }
    }
}

#[derive(Template)]
#[template(path = "webhooks.html")]
pub struct WebhooksPage {
    pub chrome: Chrome,
    pub endpoints: Vec<EndpointRow>,
    pub max_endpoints: usize,
    pub notice: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "webhooks_new.html")]
pub struct NewWebhookPage {
    pub chrome: Chrome,
    pub form: EndpointForm,
    pub choices: FormChoices,
    pub errors: Errors,
}

#[derive(Template)]
#[template(path = "webhook_show.html")]
pub struct WebhookPage {
    pub chrome: Chrome,
    pub e: EndpointRow,
    pub form: EndpointForm,
    pub choices: FormChoices,
    pub errors: Errors,
    pub once: Option<ShownOnce>,
    pub notice: Option<&'static str>,
    pub deliveries: Vec<DeliveryRow>,
    /// The next (older) page's `before`, if there is one.
    pub older: Option<String>,
    /// Whether this is a later page (a link back to the newest).
    pub paged: bool,
    /// Whether the grace field of the roll dialog had an error (it opens again).
    pub roll_error: bool,
}

impl WebhookPage {
    /// Where an endpoint's form posts.
    pub fn action(&self) -> String {
        format!("/settings/webhooks/{}", self.e.id)
    }
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    done: Option<String>,
    before: Option<String>,
}

fn endpoint_id(raw: &str) -> Result<Uuid, Error> {
    raw.parse().map_err(|_| Error::NotFound)
}

pub async fn list(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Query(q): Query<PageQuery>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageWebhooks>()?;
    let now = state.core.clock.now();
    let endpoints = state.core.webhook_endpoints(&auth).await?;
    Ok(render(&WebhooksPage {
        chrome: Chrome::console(&s, "settings"),
        endpoints: endpoints.iter().map(|e| EndpointRow::of(e, now)).collect(),
        max_endpoints: quarterdeck_domain::webhook::MAX_ENDPOINTS,
        notice: match q.done.as_deref() {
            Some("deleted") => Some("Endpoint deleted."),
            _ => None,
        },
    }))
}

fn new_page(state: &AppState, s: &SignedIn, form: EndpointForm, errors: Errors) -> NewWebhookPage {
    NewWebhookPage {
        chrome: Chrome::console(s, "settings"),
        choices: FormChoices::of(state, &form),
        form,
        errors,
    }
}

pub async fn new_form(State(state): State<AppState>, CurrentSession(s): CurrentSession) -> Result<Response, HtmlError> {
    s.principal.require::<ManageWebhooks>()?;
    Ok(render(&new_page(&state, &s, EndpointForm::blank(), Errors::default())))
}

/// An endpoint's page: its details, its forms and a page of its deliveries.
async fn endpoint_page(
    state: &AppState,
    s: &SignedIn,
    auth: &Authorized<ManageWebhooks>,
    e: &Endpoint,
    before: Option<Uuid>,
) -> Result<WebhookPage, Error> {
    let mut deliveries = state
        .core
        .webhook_deliveries(auth, e.id, DELIVERIES_PER_PAGE + 1, before)
        .await?;
    let more = deliveries.len() > DELIVERIES_PER_PAGE as usize;
    deliveries.truncate(DELIVERIES_PER_PAGE as usize);
    let form = EndpointForm::of(e);
    Ok(WebhookPage {
        chrome: Chrome::console(s, "settings"),
        e: EndpointRow::of(e, state.core.clock.now()),
        choices: FormChoices::of(state, &form),
        form,
        errors: Errors::default(),
        once: None,
        notice: None,
        older: deliveries.last().filter(|_| more).map(|d| d.id.to_string()),
        deliveries: deliveries.iter().map(DeliveryRow::of).collect(),
        paged: before.is_some(),
        roll_error: false,
    })
}

fn shown_once(title: String, created: &EndpointWithSecret) -> ShownOnce {
    ShownOnce {
        title,
        secret: created.secret.clone(),
        note: "Give it to the receiver: it verifies each delivery's webhook-signature with it (a Standard Webhooks library takes it as it is)."
            .to_owned(),
        kept: ShownOnce::SEALED,
    }
}

pub async fn create(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageWebhooks>()?;
    let f = EndpointForm::from_pairs(&pairs);
    let result = match f.draft(&state) {
        Ok(draft) => state.core.create_webhook_endpoint(&auth, draft).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(created) => {
            let mut p = endpoint_page(&state, &s, &auth, &created.endpoint, None).await?;
            p.once = Some(shown_once("Endpoint created: its signing secret".to_owned(), &created));
            Ok(render(&p))
        }
        Err(Error::Validation(fields)) => {
            let p = new_page(&state, &s, f, Errors::from_fields(&fields));
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&p)).into_response())
        }
        Err(e @ Error::Conflict { .. }) => {
            let fields = [quarterdeck_domain::FieldError::new("_", "conflict", e.to_string())];
            let p = new_page(&state, &s, f, Errors::from_fields(&fields));
            Ok((StatusCode::CONFLICT, render(&p)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn show(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(raw): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageWebhooks>()?;
    let e = state.core.webhook_endpoint(&auth, endpoint_id(&raw)?).await?;
    // A `before` that is no delivery id shows the newest page.
    let before = q.before.as_deref().and_then(|b| b.parse().ok());
    let mut p = endpoint_page(&state, &s, &auth, &e, before).await?;
    p.notice = match q.done.as_deref() {
        Some("saved") => Some("Endpoint saved."),
        Some("enabled") => Some("Endpoint enabled: what is pending for it is sent now, in order."),
        Some("disabled") => Some("Endpoint disabled: its events wait until it is enabled again."),
        Some("resent") => Some("Delivery queued again: it is sent shortly."),
        _ => None,
    };
    Ok(render(&p))
}

/// The edit form: URL, description, event types, region (enabled stays as it is; the
/// Enable / Disable button changes it).
pub async fn update(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(raw): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageWebhooks>()?;
    let e = state.core.webhook_endpoint(&auth, endpoint_id(&raw)?).await?;
    let mut f = EndpointForm::from_pairs(&pairs);
    f.enabled = e.enabled;
    // A form without a version (or with a bad one) is treated as stale.
    let based_on = f
        .version
        .parse::<i128>()
        .ok()
        .and_then(|n| time::OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let result = match f.draft(&state) {
        Ok(draft) => state.core.update_webhook_endpoint(&auth, e.id, draft, based_on).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(_) => Ok(Redirect::to(&format!("/settings/webhooks/{}?done=saved", e.id)).into_response()),
        Err(Error::Validation(fields)) => {
            let mut p = endpoint_page(&state, &s, &auth, &e, None).await?;
            p.choices = FormChoices::of(&state, &f);
            p.form = f;
            p.errors = Errors::from_fields(&fields);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&p)).into_response())
        }
        Err(e_changed @ Error::Conflict { .. }) => {
            // What was typed stays; the page shows the endpoint as it is now beside it, and
            // the form is now based on that version.
            let fresh = state.core.webhook_endpoint(&auth, e.id).await?;
            let mut p = endpoint_page(&state, &s, &auth, &fresh, None).await?;
            p.choices = FormChoices::of(&state, &f);
            p.form = f;
            // Saving again (having seen the endpoint as it is now) applies what was typed.
            p.form.version = EndpointForm::of(&fresh).version;
            let fields = [quarterdeck_domain::FieldError::new(
                "_",
                "conflict",
                e_changed.to_string(),
            )];
            p.errors = Errors::from_fields(&fields);
            Ok((StatusCode::CONFLICT, render(&p)).into_response())
        }
        Err(err) => Err(err.into()),
    }
}

pub async fn enable(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(raw): Path<String>,
) -> Result<Response, HtmlError> {
    set_enabled(state, s, raw, true).await
}

pub async fn disable(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(raw): Path<String>,
) -> Result<Response, HtmlError> {
    set_enabled(state, s, raw, false).await
}

async fn set_enabled(state: AppState, s: SignedIn, raw: String, enabled: bool) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageWebhooks>()?;
    let e = state
        .core
        .set_webhook_endpoint_enabled(&auth, endpoint_id(&raw)?, enabled)
        .await?;
    let done = if enabled { "enabled" } else { "disabled" };
    Ok(Redirect::to(&format!("/settings/webhooks/{}?done={done}", e.id)).into_response())
}

#[derive(Deserialize)]
pub struct RollForm {
    /// Hours the old secret keeps signing (0 to 168).
    #[serde(default)]
    grace_hours: String,
}

pub async fn roll(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(raw): Path<String>,
    Form(f): Form<RollForm>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageWebhooks>()?;
    let e = state.core.webhook_endpoint(&auth, endpoint_id(&raw)?).await?;
    let grace = match f.grace_hours.trim() {
        "" => Ok(None),
        h => h
            .parse::<i64>()
            .ok()
            .filter(|h| (0..=168).contains(h))
            .map(|h| Some(Duration::hours(h)))
            .ok_or_else(|| Error::field("grace_hours", "invalid", "from 0 to 168 hours (7 days)")),
    };
    let result = match grace {
        Ok(grace) => state.core.roll_webhook_secret(&auth, e.id, grace).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(rolled) => {
            let mut p = endpoint_page(&state, &s, &auth, &rolled.endpoint, None).await?;
            let title = if p.e.previous_secret_until.is_empty() {
                "New signing secret: the old one no longer signs".to_owned()
            } else {
                format!(
                    "New signing secret: the old one also signs until {}",
                    p.e.previous_secret_until
                )
            };
            p.once = Some(shown_once(title, &rolled));
            Ok(render(&p))
        }
        Err(Error::Validation(fields)) => {
            let mut p = endpoint_page(&state, &s, &auth, &e, None).await?;
            p.errors = Errors::from_fields(&fields);
            p.roll_error = true;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&p)).into_response())
        }
        Err(err) => Err(err.into()),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(raw): Path<String>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageWebhooks>()?;
    state.core.delete_webhook_endpoint(&auth, endpoint_id(&raw)?).await?;
    Ok(Redirect::to("/settings/webhooks?done=deleted").into_response())
}

pub async fn resend(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path((raw, delivery)): Path<(String, String)>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageWebhooks>()?;
    let endpoint = endpoint_id(&raw)?;
    state
        .core
        .resend_webhook_delivery(&auth, endpoint, endpoint_id(&delivery)?)
        .await?;
    Ok(Redirect::to(&format!("/settings/webhooks/{endpoint}?done=resent#deliveries")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(types: &[&str]) -> EndpointForm {
        EndpointForm {
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            ..EndpointForm::blank()
        }
    }

    #[test]
    fn everything_or_a_whole_family_replaces_the_single_types_it_covers() {
        assert_eq!(form(&["tenant.created", "*", "user.*"]).subscription(), ["*"]);
        assert_eq!(
            form(&["tenant.created", "tenant.*", "user.invited"]).subscription(),
            ["tenant.*", "user.invited"]
        );
        assert_eq!(form(&["api_key.created"]).subscription(), ["api_key.created"]);
    }
}
