//! RFC 3339 timestamps without a date-time crate: formatting the server's own clock, and
//! checking (not interpreting) the `timestamp` clients attach to training rows, which is never a
//! model input.

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (the shape llm-d's strict path
/// emits).
pub fn rfc3339(unix_s: f64) -> String {
    let secs = unix_s.floor();
    let micros = ((unix_s - secs) * 1e6).round().min(999_999.0) as u64;
    let secs = secs as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Whether `s` is an RFC 3339 date-time (`T` or space separator, any number of fraction
/// digits, `Z` or a numeric offset).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    let num = |r: std::ops::Range<usize>| -> u32 {
        s.get(r).and_then(|x| x.parse().ok()).unwrap_or(u32::MAX)
    };
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't' | b' ')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len()
                && digits(i + 1..i + 3)
                && b[i + 3] == b':'
                && digits(i + 4..i + 6)
                && num(i + 1..i + 3) <= 23
                && num(i + 4..i + 6) <= 59
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000000+00:00");
        // 2026-08-20T12:00:00.123456Z
        assert_eq!(
            rfc3339(1_787_227_200.123_456),
            "2026-08-20T12:00:00.123456+00:00"
        );
        assert!(is_rfc3339(&rfc3339(1_787_227_200.5)));
    }

    #[test]
    fn accepts_llm_d_timestamps_and_rejects_garbage() {
        for ok in [
            "2026-08-20T12:00:00.412345678Z",
            "2026-08-20T12:00:00Z",
            "2026-08-20 12:00:00+02:00",
            "2026-08-20T12:00:00.1-07:30",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "",
            "yesterday",
            "2026-13-20T12:00:00Z",
            "2026-08-20T12:00:00",
            "2026-08-20T12:00:00.Z",
            "2026-08-20T12:00:00Zjunk",
            "2026-08-20T25:00:00Z",
            "２０２６-08-20T12:00:00Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
