//! The price book (`[pricing]` in the settings file): per meter, and optionally per dimension
//! values, a unit price in integer minor units of one currency per N units, with overrides by
//! the tenant's priority tier. Cost is computed from aggregated quantities, never stored: a
//! changed price book reprices every view at once. Money is an `i64` of minor units, and the
//! arithmetic is integer (`i128` inside), rounded half up once per line.

use crate::error::{Error, Result};
use crate::tenant::PriorityTier;
use crate::usage::{Aggregation, MeterCatalog, dims_of};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One price: `unit_price` minor units per `per` units of `meter`, where the event's
/// dimensions include every pair of `when` (empty: any).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub meter: String,
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// Minor units (cents for USD) per `per` units.
    pub unit_price: i64,
    #[serde(default = "one")]
    pub per: i64,
    /// Per priority tier (`standard`, `high`, `critical`), a unit price replacing `unit_price`.
    #[serde(default)]
    pub tiers: BTreeMap<String, i64>,
}

fn one() -> i64 {
    1
}

/// The `[pricing]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSettings {
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// Minor units per major unit (100 for USD and EUR, 1 for JPY).
    #[serde(default = "hundred")]
    pub minor_units: i64,
    #[serde(default)]
    pub prices: Vec<Price>,
}

fn hundred() -> i64 {
    100
}

impl Default for PricingSettings {
    fn default() -> Self {
        Self {
            currency: "USD".to_owned(),
            minor_units: 100,
            prices: Vec::new(),
        }
    }
}

/// The checked price book.
#[derive(Clone, Debug, Default)]
pub struct PriceBook {
    settings: PricingSettings,
}

/// The price a line is charged at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppliedPrice {
    pub unit_price: i64,
    pub per: i64,
}

impl PriceBook {
    pub fn new(settings: PricingSettings, meters: &MeterCatalog) -> Result<Self> {
        let bad = |m: String| Error::internal(format!("pricing: {m}"));
        let c = &settings.currency;
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(bad(format!("currency {c:?} must be an ISO 4217 code such as USD")));
        }
        if ![1, 10, 100, 1000].contains(&settings.minor_units) {
            return Err(bad("minor_units must be 1, 10, 100 or 1000".to_owned()));
        }
        for (i, p) in settings.prices.iter().enumerate() {
            let Some(meter) = meters.get(&p.meter) else {
                return Err(bad(format!(
                    "price {} names meter {:?}, which is not configured",
                    i + 1,
                    p.meter
                )));
            };
            if p.unit_price < 0 || p.per < 1 || p.tiers.values().any(|v| *v < 0) {
                return Err(bad(format!(
                    "price {} ({}): unit_price and tier prices must be ≥ 0 and per ≥ 1",
                    i + 1,
                    p.meter
                )));
            }
            for t in p.tiers.keys() {
                PriorityTier::parse(t).map_err(|_| bad(format!("price {}: unknown tier {t:?}", i + 1)))?;
            }
            for k in p.when.keys() {
                if !meter.dimensions.contains(k) {
                    return Err(bad(format!(
                        "price {} ({}) matches on {k:?}, which the meter does not keep",
                        i + 1,
                        p.meter
                    )));
                }
            }
            if settings.prices[..i]
                .iter()
                .any(|o| o.meter == p.meter && o.when == p.when)
            {
                return Err(bad(format!(
                    "price {} ({}) repeats an earlier price's match",
                    i + 1,
                    p.meter
                )));
            }
        }
        Ok(Self { settings })
    }

    pub fn currency(&self) -> &str {
        &self.settings.currency
    }

    pub fn prices(&self) -> &[Price] {
        &self.settings.prices
    }

    /// The price for a meter and dimension values (canonical key): the matching price with the
    /// most `when` pairs; `None` when nothing matches (the line is not priced: cost 0).
    pub fn price(&self, meter: &str, dims: &str, tier: PriorityTier) -> Option<AppliedPrice> {
        let dims = dims_of(dims);
        self.settings
            .prices
            .iter()
            .filter(|p| p.meter == meter && p.when.iter().all(|(k, v)| dims.get(k) == Some(v)))
            .max_by_key(|p| p.when.len())
            .map(|p| AppliedPrice {
                unit_price: p.tiers.get(tier.as_str()).copied().unwrap_or(p.unit_price),
                per: p.per,
            })
    }

    /// The cost in minor units of `quantity` of a meter at these dimension values (rounded
    /// half up), with the price used: what one line shows.
    pub fn cost(&self, meter: &str, dims: &str, tier: PriorityTier, quantity: i64) -> (i64, Option<AppliedPrice>) {
        let (micros, price) = self.cost_micros(meter, dims, tier, quantity);
        (round_micros(micros), price)
    }

    /// The same cost in millionths of a minor unit, unrounded enough that totals can add lines
    /// first and round once: spreading usage over many dimension values (each line under half
    /// a cent) must not make it free.
    pub fn cost_micros(
        &self,
        meter: &str,
        dims: &str,
        tier: PriorityTier,
        quantity: i64,
    ) -> (i128, Option<AppliedPrice>) {
        match self.price(meter, dims, tier) {
            Some(p) => (line_micros(quantity, &p), Some(p)),
            None => (0, None),
        }
    }

    /// Money as people read it: `USD 12.34` (minor units shown with the currency's places).
    pub fn format(&self, minor: i64) -> String {
        format_money(&self.settings.currency, self.settings.minor_units, minor)
    }

    pub fn minor_units(&self) -> i64 {
        self.settings.minor_units
    }
}

/// Millionths of a minor unit per minor unit.
const MICROS: i128 = 1_000_000;

/// `quantity × unit_price / per` in millionths of a minor unit (rounded half up there).
pub fn line_micros(quantity: i64, p: &AppliedPrice) -> i128 {
    let num = i128::from(quantity)
        .saturating_mul(i128::from(p.unit_price))
        .saturating_mul(MICROS);
    let per = i128::from(p.per.max(1));
    num.saturating_add(per / 2) / per
}

/// Millionths back to minor units, rounded half up, saturating at `i64::MAX`.
pub fn round_micros(micros: i128) -> i64 {
    i64::try_from(micros.saturating_add(MICROS / 2) / MICROS).unwrap_or(i64::MAX)
}

/// `quantity × unit_price / per`, rounded half up, saturating at `i64::MAX`.
pub fn line_cost(quantity: i64, p: &AppliedPrice) -> i64 {
    round_micros(line_micros(quantity, p))
}

/// `USD 12.34` for 1234 with 100 minor units; a negative amount keeps its sign.
pub fn format_money(currency: &str, minor_units: i64, minor: i64) -> String {
    let places = match minor_units {
        1 => 0,
        10 => 1,
        1000 => 3,
        _ => 2,
    };
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let unit = minor_units.unsigned_abs().max(1);
    let whole = group(abs / unit);
    if places == 0 {
        format!("{currency} {sign}{whole}")
    } else {
        format!("{currency} {sign}{whole}.{:0width$}", abs % unit, width = places)
    }
}

/// `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether a meter's totals over a period add up (sum, count) or take the largest (max).
pub fn folds_by_max(meters: &MeterCatalog, meter: &str) -> bool {
    meters.get(meter).is_some_and(|m| m.aggregation == Aggregation::Max)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;

    fn book() -> PriceBook {
        let meters = MeterCatalog::new(MeterCatalog::defaults()).unwrap();
        let settings: PricingSettings = toml_like();
        PriceBook::new(settings, &meters).unwrap()
    }

    fn toml_like() -> PricingSettings {
        PricingSettings {
            currency: "USD".to_owned(),
            minor_units: 100,
            prices: vec![
                Price {
                    meter: "llm.tokens".to_owned(),
                    when: BTreeMap::new(),
                    unit_price: 100,
                    per: 1_000_000,
                    tiers: BTreeMap::new(),
                },
                Price {
                    meter: "llm.tokens".to_owned(),
                    when: [("model".to_owned(), "gpt-4o".to_owned())].into(),
                    unit_price: 250,
                    per: 1_000_000,
                    tiers: [("critical".to_owned(), 200)].into(),
                },
            ],
        }
    }

    #[test]
    fn the_most_specific_price_wins_and_a_tier_overrides_it() {
        let b = book();
        let gpt = r#"{"model":"gpt-4o"}"#;
        assert_eq!(b.cost("llm.tokens", gpt, PriorityTier::Standard, 2_000_000).0, 500);
        assert_eq!(b.cost("llm.tokens", gpt, PriorityTier::Critical, 2_000_000).0, 400);
        assert_eq!(
            b.cost("llm.tokens", r#"{"model":"mini"}"#, PriorityTier::Standard, 2_000_000)
                .0,
            200
        );
        assert_eq!(b.cost("api.requests", "{}", PriorityTier::Standard, 10), (0, None));
    }

    #[test]
    fn a_line_is_rounded_half_up_in_integers() {
        let p = AppliedPrice {
            unit_price: 1,
            per: 1000,
        };
        assert_eq!(line_cost(499, &p), 0);
        assert_eq!(line_cost(500, &p), 1);
        assert_eq!(
            line_cost(
                i64::MAX,
                &AppliedPrice {
                    unit_price: i64::MAX,
                    per: 1
                }
            ),
            i64::MAX
        );
    }

    #[test]
    fn many_small_lines_add_up_before_they_are_rounded() {
        let b = book();
        // 1,000 lines of 1,000 tokens at USD 1.00 per million: 0.1 cent each, 1 dollar in all.
        let micros: i128 = (0..1000)
            .map(|i| {
                b.cost_micros(
                    "llm.tokens",
                    &format!(r#"{{"model":"m{i}"}}"#),
                    PriorityTier::Standard,
                    1000,
                )
                .0
            })
            .sum();
        assert_eq!(round_micros(micros), 100);
        assert_eq!(
            b.cost("llm.tokens", r#"{"model":"m1"}"#, PriorityTier::Standard, 1000)
                .0,
            0
        );
    }

    #[test]
    fn money_is_shown_with_the_currencys_places() {
        assert_eq!(format_money("USD", 100, 123_456), "USD 1,234.56");
        assert_eq!(format_money("JPY", 1, 1200), "JPY 1,200");
        assert_eq!(format_money("USD", 100, 5), "USD 0.05");
    }

    #[test]
    fn a_price_for_an_unknown_meter_or_dimension_is_refused() {
        let meters = MeterCatalog::new(MeterCatalog::defaults()).unwrap();
        let mut s = toml_like();
        s.prices[0].meter = "nope".to_owned();
        assert!(PriceBook::new(s, &meters).is_err());
        let mut s = toml_like();
        s.prices[1].when = [("colour".to_owned(), "red".to_owned())].into();
        assert!(PriceBook::new(s, &meters).is_err());
    }
}
