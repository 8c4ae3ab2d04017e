//! Budgets: a monthly amount per tenant (minor units of the price book's currency), a soft
//! threshold that warns the tenant's admins once per month, and an optional hard limit that
//! stops the tenant's API keys (`budget_exceeded`) until the next month or a raised budget.

use crate::error::{Error, Problems, Result};
use crate::ids::TenantId;
use crate::usage::Month;
use serde::Serialize;
use time::OffsetDateTime;

pub const DEFAULT_THRESHOLD_PERCENT: u8 = 80;

/// A tenant's budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Budget {
    pub tenant_id: TenantId,
    /// Per calendar month (UTC), in minor units.
    pub amount: i64,
    /// The soft threshold, in percent of `amount` (1–100).
    pub threshold_percent: u8,
    /// Whether reaching `amount` stops the tenant's keys.
    pub hard_limit: bool,
    pub updated_by: Option<crate::ids::UserId>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Budget {
    /// The cost at which the soft threshold is reached (rounded up).
    pub fn threshold_amount(&self) -> i64 {
        let n = i128::from(self.amount) * i128::from(self.threshold_percent);
        i64::try_from((n + 99) / 100).unwrap_or(i64::MAX)
    }

    /// Where `spent` stands against this budget.
    pub fn standing(&self, spent: i64) -> Standing {
        if spent >= self.amount {
            Standing::Exceeded
        } else if spent >= self.threshold_amount() {
            Standing::ThresholdReached
        } else {
            Standing::Within
        }
    }
}

/// Where a month's cost stands against the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Within,
    ThresholdReached,
    Exceeded,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Within => "within",
            Self::ThresholdReached => "threshold_reached",
            Self::Exceeded => "exceeded",
        }
    }
}

/// A crossing recorded once per tenant and month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossing {
    Threshold,
    Exceeded,
}

impl Crossing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::Exceeded => "exceeded",
        }
    }
}

/// A budget as a form or the API sends it: the amount in major units ("1500" or "1500.00").
#[derive(Clone, Debug, Default)]
pub struct BudgetRequest {
    pub amount: String,
    pub threshold_percent: String,
    pub hard_limit: bool,
}

/// The largest budget accepted, in major units.
const MAX_MAJOR: i64 = 1_000_000_000_000;

impl BudgetRequest {
    /// The amount in minor units and the threshold, every bad field reported.
    pub fn parse(&self, minor_units: i64) -> Result<(i64, u8)> {
        let mut p = Problems::new();
        let amount = p.check(parse_amount(&self.amount, minor_units));
        let threshold = p.check(parse_threshold(&self.threshold_percent));
        p.finish()?;
        match (amount, threshold) {
            (Some(a), Some(t)) => Ok((a, t)),
            _ => Err(Error::internal("budget parse: a field was neither parsed nor reported")),
        }
    }
}

fn parse_amount(s: &str, minor_units: i64) -> Result<i64> {
    let bad = || {
        Error::field(
            "amount",
            "invalid_amount",
            "Enter the monthly amount as a number, e.g. 1500 or 1500.50.",
        )
    };
    let s = s.trim().replace(',', "");
    let places = match minor_units {
        1 => 0,
        10 => 1,
        1000 => 3,
        _ => 2,
    };
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if frac.len() > places {
        return Err(Error::field(
            "amount",
            "invalid_amount",
            format!("Use at most {places} decimal places."),
        ));
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    if whole > MAX_MAJOR {
        return Err(Error::field("amount", "invalid_amount", "That amount is too large."));
    }
    let mut frac_minor: i64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        frac_minor += i64::from(b - b'0') * 10_i64.pow(u32::try_from(places - 1 - i).unwrap_or(0));
    }
    let amount = whole * minor_units + frac_minor;
    if amount <= 0 {
        return Err(Error::field(
            "amount",
            "invalid_amount",
            "The amount must be more than zero.",
        ));
    }
    Ok(amount)
}

fn parse_threshold(s: &str) -> Result<u8> {
    let s = s.trim().trim_end_matches('%');
    if s.is_empty() {
        return Ok(DEFAULT_THRESHOLD_PERCENT);
    }
    match s.parse::<u8>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(Error::field(
            "threshold_percent",
            "invalid_threshold",
            "The alert threshold is a percentage from 1 to 100.",
        )),
    }
}

/// A tenant's budget with where the month stands (for pages and the API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BudgetStatus {
    pub budget: Budget,
    pub month: String,
    /// Month to date, minor units.
    pub spent: i64,
    pub standing: Standing,
    /// Whether the hard limit is stopping the tenant's keys now.
    pub blocked: bool,
}

impl BudgetStatus {
    pub fn new(budget: Budget, month: Month, spent: i64, blocked: bool) -> Self {
        let standing = budget.standing(spent);
        Self {
            budget,
            month: month.to_string(),
            spent,
            standing,
            blocked,
        }
    }

    /// Percent of the budget spent (may pass 100).
    pub fn percent(&self) -> i64 {
        if self.budget.amount <= 0 {
            return 0;
        }
        i64::try_from(i128::from(self.spent) * 100 / i128::from(self.budget.amount)).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;

    #[test]
    fn amounts_are_read_in_major_units_without_floats() {
        let r = |a: &str| BudgetRequest {
            amount: a.to_owned(),
            threshold_percent: String::new(),
            hard_limit: false,
        };
        assert_eq!(r("1500").parse(100).unwrap(), (150_000, 80));
        assert_eq!(r("1,500.5").parse(100).unwrap(), (150_050, 80));
        assert_eq!(r("0.01").parse(100).unwrap(), (1, 80));
        for bad in ["", "-3", "1.234", "abc", "0", "1e3"] {
            assert_eq!(r(bad).parse(100).unwrap_err().fields()[0].field, "amount", "{bad}");
        }
        let both = BudgetRequest {
            amount: "x".to_owned(),
            threshold_percent: "101".to_owned(),
            hard_limit: true,
        };
        assert_eq!(both.parse(100).unwrap_err().fields().len(), 2);
    }

    #[test]
    fn the_threshold_is_rounded_up_and_standing_follows_it() {
        let b = Budget {
            tenant_id: TenantId::new(),
            amount: 1001,
            threshold_percent: 80,
            hard_limit: true,
            updated_by: None,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(b.threshold_amount(), 801);
        assert_eq!(b.standing(800), Standing::Within);
        assert_eq!(b.standing(801), Standing::ThresholdReached);
        assert_eq!(b.standing(1001), Standing::Exceeded);
    }
}
