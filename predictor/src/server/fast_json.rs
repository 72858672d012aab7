//! A hand-written byte scanner for exactly one body shape, `{"requests":[row...]}` of
//! `/predict/bulk/strict`, straight into [`Features`]: no `Value` tree, no serde visitor, no
//! string copies. It exists because the typed serde pass spent about half of a 1000-row call.
//!
//! Data flow: [`bulk_features`] walks the bytes once; every row's known keys are matched as
//! byte strings and their values read in place. It answers `None` whenever anything is unusual
//! (an escape or control character in a string, invalid UTF-8, a value of another type or out
//! of range, a float or a negative number in an integer field, a missing or duplicate key, a
//! nested value under an unknown key, too few or too many rows, trailing bytes): the caller then
//! runs the generic walk, which names the offending field. The contract is one-way: every body
//! this accepts, the generic walk (`serde_json::Value` + `parse_bulk_features`) accepts with the
//! bit-identical rows. That is why numbers are either read by Clinger's exact fast path (a
//! significand of at most 2^53 times an exactly representable power of ten, one correctly rounded
//! operation: the value every correct parser and serde_json's own default parser agree on) or,
//! for anything else, handed to serde_json itself, the very parser the generic walk uses.

use crate::features::{Features, PodType};

/// Exact powers of ten as f64 (10^22 is the largest one a double holds exactly).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The largest significand a double holds exactly.
const MAX_EXACT: u64 = 1 << 53;

// One bit per known key of a row, to find duplicates and missing required keys.
const KV: u16 = 1;
const INPUT: u16 = 1 << 1;
const WAITING: u16 = 1 << 2;
const RUNNING: u16 = 1 << 3;
const GENERATED: u16 = 1 << 4;
const PREFIX: u16 = 1 << 5;
const POD: u16 = 1 << 6;
const PREFILL: u16 = 1 << 7;
const DECODE: u16 = 1 << 8;
const ENC_MATCHED: u16 = 1 << 9;
const ENC_INPUT: u16 = 1 << 10;
const SINCE_TOKEN: u16 = 1 << 11;
const SINCE_PREFILL: u16 = 1 << 12;
const REQUIRED: u16 = KV | INPUT | WAITING | RUNNING | GENERATED | PREFIX;

/// `{"requests":[row...]}` with 1..=`max_rows` rows, or `None` (see the module docs).
pub(super) fn bulk_features(body: &[u8], max_rows: usize) -> Option<Vec<Features>> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.eat(b'{')?;
    let mut rows = None;
    loop {
        s.ws();
        let key = s.string()?;
        s.colon()?;
        if key == b"requests" {
            if rows.is_some() {
                return None;
            }
            rows = Some(s.rows(max_rows)?);
        } else {
            s.skip_simple()?;
        }
        s.ws();
        match s.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    if s.i != body.len() {
        return None;
    }
    rows
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's four whitespace bytes, nothing else (as serde_json).
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            // Every byte that may follow whitespace is above b' ': one comparison, usually.
            if c > b' ' || !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return;
            }
            self.i += 1;
        }
    }

    /// The raw bytes of a string without escapes or control characters, valid UTF-8.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        self.string_rest()
    }

    /// [`Self::string`] after its opening quote.
    fn string_rest(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        let mut ascii = true;
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                c => ascii &= c < 0x80,
            }
        }
        let s = self.b.get(start..self.i - 1)?;
        if !ascii {
            std::str::from_utf8(s).ok()?;
        }
        Some(s)
    }

    /// The bytes of a number token: everything from here that can belong to one. Whether
    /// they form a valid JSON number is for the reader to decide.
    fn number_text(&mut self) -> &'a [u8] {
        let start = self.i;
        while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = self.peek() {
            self.i += 1;
        }
        self.b.get(start..self.i).unwrap_or_default()
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then_some(())?;
        self.i = end;
        Some(())
    }

    /// An unknown key's value: a string, a number, `true`, `false` or `null`; `None` for
    /// objects and arrays (the generic walk takes those).
    fn skip_simple(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'0'..=b'9' | b'-' => {
                let t = self.number_text();
                let plain = match t {
                    [b'-', rest @ ..] => rest,
                    _ => t,
                };
                // Up to 18 digits always fit an i64/u64; anything else serde_json checks.
                let simple = matches!(plain, [b'0'] | [b'1'..=b'9', ..])
                    && plain.len() <= 18
                    && plain.iter().all(u8::is_ascii_digit);
                if simple || serde_json::from_slice::<f64>(t).is_ok() {
                    Some(())
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// A non-negative integer written without fraction or exponent, at most `max`.
    fn uint(&mut self, max: u64) -> Option<u64> {
        let mut i = self.i;
        let mut n: u64 = 0;
        match self.b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                while let Some(&c @ b'0'..=b'9') = self.b.get(i) {
                    n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                    i += 1;
                }
            }
            _ => return None,
        }
        // A fraction, an exponent or a digit after a leading `0`: not a plain integer.
        if continues_number(self.b.get(i)) || n > max {
            return None;
        }
        self.i = i;
        Some(n)
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.uint(u64::from(u32::MAX))?).ok()
    }

    /// A JSON number.
    fn number(&mut self) -> Option<f64> {
        let rest = self.b.get(self.i..)?;
        match exact_prefix(rest) {
            Some((x, n)) if !continues_number(rest.get(n)) => {
                self.i += n;
                Some(x)
            }
            _ => serde_json::from_slice::<f64>(self.number_text()).ok(),
        }
    }

    /// A number in `0.0..=1.0`.
    fn fraction(&mut self) -> Option<f64> {
        let x = self.number()?;
        (0.0..=1.0).contains(&x).then_some(x)
    }

    /// `null` or a finite number `>= 0` (milliseconds).
    fn optional_nonneg(&mut self) -> Option<Option<f64>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        let x = self.number()?;
        (x.is_finite() && x >= 0.0).then_some(Some(x))
    }

    /// `pod_type`: `null` or a string without escapes.
    fn pod_type(&mut self) -> Option<PodType> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(PodType::Monolithic);
        }
        let s = std::str::from_utf8(self.string()?).ok()?;
        Some(PodType::from_label(Some(s)))
    }

    fn rows(&mut self, max_rows: usize) -> Option<Vec<Features>> {
        self.eat(b'[')?;
        // A row takes at least ~140 bytes: room for all rows but the longest, no more.
        let room = self.b.len().saturating_sub(self.i) / 128 + 1;
        let mut out = Vec::with_capacity(room.min(max_rows));
        loop {
            if out.len() >= max_rows {
                return None;
            }
            self.ws();
            out.push(self.row()?);
            self.ws();
            match self.next()? {
                b',' => {}
                b']' => return Some(out),
                _ => return None,
            }
        }
    }

    fn row(&mut self) -> Option<Features> {
        self.eat(b'{')?;
        let mut f = Features {
            pod_type: PodType::Monolithic,
            ..Features::default()
        };
        let mut seen = 0u16;
        loop {
            self.ws();
            self.eat(b'"')?;
            // Key and value in one dispatch: a known key (plain ASCII, so it needs no escape or
            // UTF-8 check) is matched by fixed-size comparisons the compiler inlines, and its
            // value read right there; any other key is scanned as a string, its value skipped.
            let bit = match self.peek()? {
                b'k' if self.key(b"kv_cache_percentage\"") => {
                    f.kv_cache_percentage = self.colon()?.fraction()?;
                    KV
                }
                b'i' if self.key(b"input_token_length\"") => {
                    f.input_token_length = self.colon()?.u32()?;
                    INPUT
                }
                b'n' if self.key(b"num_request_waiting\"") => {
                    f.num_request_waiting = self.colon()?.u32()?;
                    WAITING
                }
                b'n' if self.key(b"num_request_running\"") => {
                    f.num_request_running = self.colon()?.u32()?;
                    RUNNING
                }
                b'n' if self.key(b"num_tokens_generated\"") => {
                    f.num_tokens_generated = self.colon()?.u32()?;
                    GENERATED
                }
                b'p' if self.key(b"prefix_cache_score\"") => {
                    f.prefix_cache_score = self.colon()?.fraction()?;
                    PREFIX
                }
                b'p' if self.key(b"prefill_tokens_in_flight\"") => {
                    f.prefill_tokens_in_flight = self.colon()?.uint(u64::MAX)?;
                    PREFILL
                }
                b'p' if self.key(b"pod_type\"") => {
                    f.pod_type = self.colon()?.pod_type()?;
                    POD
                }
                b'd' if self.key(b"decode_tokens_in_flight\"") => {
                    f.decode_tokens_in_flight = self.colon()?.uint(u64::MAX)?;
                    DECODE
                }
                b'm' if self.key(b"ms_since_last_token\"") => {
                    f.ms_since_last_token = self.colon()?.optional_nonneg()?;
                    SINCE_TOKEN
                }
                b'm' if self.key(b"ms_since_oldest_prefill\"") => {
                    f.ms_since_oldest_prefill = self.colon()?.optional_nonneg()?;
                    SINCE_PREFILL
                }
                // Checked, not used (as the generic walk does).
                b'e' if self.key(b"encoder_matched_size\"") => {
                    self.colon()?.uint(u64::MAX)?;
                    ENC_MATCHED
                }
                b'e' if self.key(b"encoder_input_size\"") => {
                    self.colon()?.uint(u64::MAX)?;
                    ENC_INPUT
                }
                _ => {
                    self.string_rest()?;
                    self.colon()?.skip_simple()?;
                    0
                }
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            self.ws();
            match self.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        (seen & REQUIRED == REQUIRED).then_some(f)
    }

    /// Consumes `name` (a key's rest with its closing quote) if it is written here.
    fn key<const N: usize>(&mut self, name: &[u8; N]) -> bool {
        let here = self
            .b
            .get(self.i..)
            .and_then(<[u8]>::first_chunk::<N>)
            .is_some_and(|c| c == name);
        if here {
            self.i += N;
        }
        here
    }

    /// The `:` between a key and its value, with the whitespace around it.
    fn colon(&mut self) -> Option<&mut Self> {
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(self)
    }
}

/// Whether `c` can continue a number token (see [`Scanner::number_text`]).
fn continues_number(c: Option<&u8>) -> bool {
    matches!(c, Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
}

/// [`exact_prefix`] of exactly all of `t`.
#[cfg(test)]
fn exact_f64(t: &[u8]) -> Option<f64> {
    exact_prefix(t)
        .filter(|&(_, n)| n == t.len())
        .map(|(x, _)| x)
}

/// The non-negative JSON number at the start of `t` and its length in bytes, if its value is
/// exactly one correctly rounded operation away: significand ≤ 2^53 and decimal exponent
/// within ±22 (Clinger's fast path). `None` for anything else, valid or not (the caller asks
/// serde_json); the caller also checks that no number byte follows.
fn exact_prefix(t: &[u8]) -> Option<(f64, usize)> {
    let digit = |i: usize| t.get(i).filter(|c| c.is_ascii_digit()).map(|c| c - b'0');
    let mut i = 0;
    let mut sig: u64 = 0;
    let mut exp: i32 = 0;
    // Integer part: `0`, or a non-zero digit then digits.
    match t.first()? {
        b'0' => i = 1,
        b'1'..=b'9' => {
            while let Some(d) = digit(i) {
                sig = sig.checked_mul(10)?.checked_add(u64::from(d))?;
                i += 1;
            }
        }
        _ => return None,
    }
    if t.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(d) = digit(i) {
            sig = sig.checked_mul(10)?.checked_add(u64::from(d))?;
            exp = exp.checked_sub(1)?;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if let Some(b'e' | b'E') = t.get(i) {
        i += 1;
        let negative = t.get(i) == Some(&b'-');
        if let Some(b'-' | b'+') = t.get(i) {
            i += 1;
        }
        let start = i;
        let mut e: i32 = 0;
        while let Some(d) = digit(i) {
            e = e.checked_mul(10)?.checked_add(i32::from(d))?;
            i += 1;
        }
        if i == start {
            return None;
        }
        exp = if negative {
            exp.checked_sub(e)?
        } else {
            exp.checked_add(e)?
        };
    }
    if sig > MAX_EXACT {
        return None;
    }
    let pow = *POW10.get(usize::try_from(exp.unsigned_abs()).ok()?)?;
    let x = sig as f64;
    Some((if exp < 0 { x / pow } else { x * pow }, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_path_matches_the_standard_parser() {
        for t in [
            "0",
            "1",
            "0.5",
            "0.42",
            "1.0",
            "0.0",
            "5e-1",
            "0.5E+0",
            "1e0",
            "0.30000000000000004",
            "0.9166666666666666",
            "0.000001",
            "123456789012345e-15",
            "9007199254740993e-16",
        ] {
            let want: f64 = t.parse().unwrap();
            match exact_f64(t.as_bytes()) {
                Some(x) => assert_eq!(x.to_bits(), want.to_bits(), "{t}"),
                // Outside the fast path: the caller asks serde_json.
                None => assert!(
                    t.len() > 16 || t.contains('e'),
                    "{t} should be on the exact path"
                ),
            }
        }
        for bad in [
            "", "01", "1.", ".5", "1e", "1e+", "-0.5", "0x1", "1.5.", "1e5e5",
        ] {
            assert_eq!(exact_f64(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn unusual_bodies_are_refused() {
        let row = r#"{"kv_cache_percentage":0.5,"input_token_length":1,"num_request_waiting":0,"num_request_running":0,"num_tokens_generated":0,"prefix_cache_score":0}"#;
        let ok = format!(r#"{{"requests":[{row}]}}"#);
        assert!(bulk_features(ok.as_bytes(), 1).is_some());
        for bad in [
            ok.replace(":0,\"num_request_running", ":-0,\"num_request_running"),
            ok.replace(r#""input_token_length":1"#, r#""input_token_length":1e0"#),
            ok.replace(
                r#""input_token_length":1"#,
                r#""input_token_length":4294967296"#,
            ),
            ok.replace(r#""input_token_length":1"#, r#""input_token_length":01"#),
            ok.replace(r#""input_token_length":1,"#, ""),
            ok.replace(
                r#""input_token_length":1"#,
                r#""input_token_length":1,"input_token_length":1"#,
            ),
            ok.replace(r#"0.5"#, r#"1.5"#),
            ok.replace(r#"0.5"#, r#""0.5""#),
            ok.replace(r#"0.5"#, r#"0.5,"x":{}"#),
            ok.replace(r#"0.5"#, r#"0.5,"x":1e400"#),
            ok.replace(r#"0.5"#, r#"0.5,"x\n":1"#),
            ok.replace(r#"0.5"#, r#"0.5,"pod_type":1"#),
            format!("{ok} x"),
            format!("{ok},"),
            ok[..ok.len() - 1].to_string(),
            r#"{"requests":[]}"#.to_string(),
            r#"{}"#.to_string(),
        ] {
            assert_eq!(bulk_features(bad.as_bytes(), 1), None, "{bad}");
        }
        let two = format!(r#"{{"requests":[{row},{row}]}}"#);
        assert_eq!(bulk_features(two.as_bytes(), 1), None);
        assert_eq!(bulk_features(two.as_bytes(), 2).map(|v| v.len()), Some(2));
        // Invalid UTF-8 in a skipped string is refused too (the generic parse rejects it).
        let mut bytes = ok.replace(r#"0.5"#, r#"0.5,"x":"ab""#).into_bytes();
        let at = bytes.iter().position(|&c| c == b'a').unwrap();
        bytes[at] = 0xff;
        assert_eq!(bulk_features(&bytes, 1), None);
    }
}
