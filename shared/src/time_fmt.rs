//! Timestamps as stored and served: RFC 3339 UTC with a fixed six-digit fraction,
//! so that string order is time order (the user index sorts on `updated_at`).

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime};

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn format(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    // Every UTC datetime of years 0..=9999 is representable in this format.
    utc.format(FORMAT).unwrap_or_default()
}

pub fn parse(s: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(s, FORMAT)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// A timestamp strictly after `previous`, normally the clock: the clocks of two
/// function instances may disagree by a little, and `updated_at` only moves forward.
pub fn after(previous: Option<&str>) -> OffsetDateTime {
    let now = now();
    match previous.and_then(parse) {
        Some(prev) if prev >= now => prev + Duration::microseconds(1),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_and_round_trip() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.000007 UTC);
        let s = format(t);
        assert_eq!(s, "2026-01-02T03:04:05.000007Z");
        assert_eq!(parse(&s), Some(t));
    }

    #[test]
    fn after_moves_forward_past_a_future_previous() {
        let future = format(now() + Duration::hours(1));
        let next = after(Some(&future));
        assert!(format(next) > future);
        assert!(after(None) <= now());
    }
}
