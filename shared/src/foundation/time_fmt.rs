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

/// Milliseconds since the Unix epoch, as live answers record their checkpoints.
pub fn now_ms() -> u64 {
    u64::try_from(now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The creation time a message id (UUIDv7) carries: a message's `created_at` is
/// read from its id, so list order (by id) and `created_at` always agree.
pub fn of_id(id: uuid::Uuid) -> String {
    let at = id
        .get_timestamp()
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            i128::from(secs) * 1_000_000_000 + i128::from(nanos)
        })
        .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .unwrap_or_else(now);
    format(at)
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
    fn id_times_follow_id_order() {
        let mut ids: Vec<uuid::Uuid> = (0..2000).map(|_| uuid::Uuid::now_v7()).collect();
        let times: Vec<String> = ids.iter().map(|id| of_id(*id)).collect();
        ids.sort();
        let sorted: Vec<String> = ids.iter().map(|id| of_id(*id)).collect();
        assert_eq!(times, sorted);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        let first = parse(&times[0]).expect("parses");
        assert!((now() - first).whole_seconds().abs() < 5);
    }

    #[test]
    fn after_moves_forward_past_a_future_previous() {
        let future = format(now() + Duration::hours(1));
        let next = after(Some(&future));
        assert!(format(next) > future);
        assert!(after(None) <= now());
    }
}
