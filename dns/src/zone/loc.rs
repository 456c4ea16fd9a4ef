//! LOC records (RFC 1876), which hickory-proto does not model: the presentation form parsed
//! into wire RDATA exactly as `PowerDNS`'s `LOCRecordContent` does (fractional seconds to three
//! digits, truncated; sizes and precisions to two fractional digits; latitude and longitude in
//! either order), served as opaque RDATA of type 29.

use hickory_proto::rr::{RData, RecordType, rdata::NULL};

/// Record type code of LOC.
pub const LOC_TYPE_CODE: u16 = 29;

/// The LOC record type (hickory-proto has no variant for it).
pub fn loc_type() -> RecordType {
    RecordType::from(LOC_TYPE_CODE)
}

/// True for the type names of LOC (`LOC`, `TYPE29`).
pub fn is_loc(word: &str) -> bool {
    word.eq_ignore_ascii_case("LOC") || word.eq_ignore_ascii_case("TYPE29")
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// `m`/`M` and the whitespace after it, if present.
    fn skip_m(&mut self) {
        if matches!(self.peek(), Some(b'm' | b'M')) {
            self.pos += 1;
            self.skip_space();
        }
    }

    /// An unsigned integer (wrapping as a C `unsigned int`); None without a digit.
    fn digits(&mut self) -> Option<u32> {
        let mut n: u32 = 0;
        let mut parsed = false;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            parsed = true;
            n = n.wrapping_mul(10).wrapping_add(u32::from(c - b'0'));
            self.pos += 1;
        }
        parsed.then_some(n)
    }

    /// An unsigned integer (wrapping as a C `unsigned int`), then whitespace.
    fn num(&mut self) -> Option<u32> {
        let n = self.digits();
        self.skip_space();
        n
    }

    /// `.DDD`: up to `digits` fractional digits (truncated, padded with zeros); 0 without `.`.
    fn frac_digits(&mut self, digits: u32) -> u32 {
        let mut n = 0;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            for _ in 0..digits {
                n *= 10;
                if let Some(c) = self.peek().filter(u8::is_ascii_digit) {
                    n += u32::from(c - b'0');
                    self.pos += 1;
                }
            }
        }
        n
    }

    /// `.DDD` as [`Self::frac_digits`], the digits beyond `digits` skipped, then whitespace.
    fn frac(&mut self, digits: u32) -> u32 {
        let n = self.frac_digits(digits);
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.skip_space();
        n
    }

    /// Seconds: `SEC[.FRAC]` (three fractional digits kept, truncated), then — as every released
    /// PowerDNS (4.x to 5.1) — any non-space characters right after them are skipped, then
    /// whitespace. `latlonloc()` relies on it: PowerDNS prints seconds such as
    /// `1.27898e-12`, read as 1.278 s.
    fn seconds(&mut self) -> Option<(u32, u32)> {
        let Some(n) = self.digits() else {
            self.skip_space();
            return None;
        };
        let frac = self.frac_digits(3);
        while self.peek().is_some_and(|c| !c.is_ascii_whitespace()) {
            self.pos += 1;
        }
        self.skip_space();
        Some((n, frac))
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
}

/// `DEG [MIN [SEC[.FRAC]]] (N|S|E|W)` → (is latitude, encoded value).
fn coordinate(c: &mut Cursor<'_>) -> Result<(bool, u32), String> {
    let deg = c
        .num()
        .ok_or("expecting a latitude or longitude in LOC contents")?;
    let (mut min, mut secs, mut frac) = (0, 0, 0);
    if let Some(m) = c.num() {
        if m >= 60 {
            return Err("invalid latitude or longitude minutes in LOC contents".into());
        }
        min = m;
        if let Some((s, f)) = c.seconds() {
            secs = s;
            frac = f;
            if secs > 60 || (secs == 60 && frac > 0) {
                return Err("invalid latitude or longitude seconds in LOC contents".into());
            }
        }
    }
    let (latitude, add) = match c.peek() {
        Some(b'N' | b'n') => (true, true),
        Some(b'S' | b's') => (true, false),
        Some(b'E' | b'e') => (false, true),
        Some(b'W' | b'w') => (false, false),
        Some(_) => return Err("invalid hemisphere specification in LOC contents".into()),
        None => return Err("expecting hemisphere in LOC contents".into()),
    };
    if latitude && deg > 90 {
        return Err("invalid latitude degrees in LOC contents".into());
    }
    if !latitude && deg > 180 {
        return Err("invalid longitude degrees in LOC contents".into());
    }
    let v = deg
        .wrapping_mul(60)
        .wrapping_add(min)
        .wrapping_mul(60)
        .wrapping_add(secs)
        .wrapping_mul(1000)
        .wrapping_add(frac);
    let value = if add {
        (1u32 << 31).wrapping_add(v)
    } else {
        (1u32 << 31).wrapping_sub(v)
    };
    c.pos += 1;
    c.skip_space();
    Ok((latitude, value))
}

/// A size or precision in metres (`N[.NN][m]`) as RFC 1876's mantissa/exponent byte.
fn precsize(c: &mut Cursor<'_>) -> Result<u8, String> {
    const POW10: [u32; 10] = [
        1,
        10,
        100,
        1000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
    ];
    let m = c
        .num()
        .ok_or("expecting a size or precision in LOC contents")?;
    let cm = c.frac(2);
    c.skip_m();
    let cm = m.wrapping_mul(100).wrapping_add(cm);
    let mut exponent = 0;
    while exponent < 9 && cm >= POW10[exponent + 1] {
        exponent += 1;
    }
    let mantissa = (cm / POW10[exponent]).min(9);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "mantissa ≤ 9, exponent ≤ 9"
    )]
    Ok(((mantissa << 4) | exponent as u32) as u8)
}

/// Parse LOC presentation text into its 16 bytes of wire RDATA.
pub fn parse_loc(text: &str) -> Result<[u8; 16], String> {
    let mut c = Cursor {
        s: text.trim_start().as_bytes(),
        pos: 0,
    };
    let (t1, v1) = coordinate(&mut c)?;
    let (t2, v2) = coordinate(&mut c)?;
    if t1 == t2 {
        return Err("expecting latitude and longitude in LOC contents".into());
    }
    let (lat, lon) = if t1 { (v1, v2) } else { (v2, v1) };
    let mut altitude: u32 = 10_000_000;
    if !c.at_end() {
        let negative = match c.peek() {
            Some(b'-') => {
                c.pos += 1;
                true
            }
            Some(b'+') => {
                c.pos += 1;
                false
            }
            _ => false,
        };
        let m = c.num().ok_or("expecting altitude in LOC contents")?;
        let cm = c.frac(2);
        c.skip_m();
        let delta = m.wrapping_mul(100).wrapping_add(cm);
        altitude = if negative {
            altitude.wrapping_sub(delta)
        } else {
            altitude.wrapping_add(delta)
        };
    }
    let (mut size, mut horiz, mut vert) = (0x12, 0x16, 0x13);
    if !c.at_end() {
        size = precsize(&mut c)?;
    }
    if !c.at_end() {
        horiz = precsize(&mut c)?;
    }
    if !c.at_end() {
        vert = precsize(&mut c)?;
    }
    let mut out = [0u8; 16];
    out[1] = size;
    out[2] = horiz;
    out[3] = vert;
    out[4..8].copy_from_slice(&lat.to_be_bytes());
    out[8..12].copy_from_slice(&lon.to_be_bytes());
    out[12..16].copy_from_slice(&altitude.to_be_bytes());
    Ok(out)
}

/// LOC text as RDATA.
pub fn loc_rdata(text: &str) -> Result<RData, String> {
    let wire = parse_loc(text).map_err(|e| format!("`{text}`: {e}"))?;
    Ok(RData::Unknown {
        code: loc_type(),
        rdata: NULL::with(wire.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_rfc1876_and_powerdns() {
        // RFC 1876 example-like: 42 21 54 N 71 06 18 W -24m 30m.
        let w = parse_loc("42 21 54 N 71 06 18 W -24m 30m").unwrap();
        assert_eq!(w[0..4], [0, 0x33, 0x16, 0x13]);
        assert_eq!(
            u32::from_be_bytes(w[4..8].try_into().unwrap()),
            (1 << 31) + ((42 * 60 + 21) * 60 + 54) * 1000
        );
        assert_eq!(
            u32::from_be_bytes(w[8..12].try_into().unwrap()),
            (1 << 31) - ((71 * 60 + 6) * 60 + 18) * 1000
        );
        assert_eq!(
            u32::from_be_bytes(w[12..16].try_into().unwrap()),
            10_000_000 - 2400
        );
    }

    #[test]
    fn fractional_seconds_are_truncated_to_milliseconds() {
        let w = parse_loc("51 59 33.6789 N 5 55 0.5 E 0.00m 1.00m 10000.00m 10.00m").unwrap();
        assert_eq!(
            u32::from_be_bytes(w[4..8].try_into().unwrap()),
            (1 << 31) + ((51 * 60 + 59) * 60 + 33) * 1000 + 678
        );
        assert_eq!(
            u32::from_be_bytes(w[8..12].try_into().unwrap()),
            (1 << 31) + ((5 * 60 + 55) * 60) * 1000 + 500
        );
        assert_eq!(w[1..4], [0x12, 0x16, 0x13]);
        assert_eq!(
            u32::from_be_bytes(w[12..16].try_into().unwrap()),
            10_000_000
        );
    }

    #[test]
    fn garbage_after_the_seconds_is_skipped_as_released_powerdns() {
        assert_eq!(
            parse_loc("52 31 12 N 13 24 1.27898e-12 E 0.00m 1.00m 10000.00m 10.00m").unwrap(),
            parse_loc("52 31 12 N 13 24 1.278 E 0.00m 1.00m 10000.00m 10.00m").unwrap()
        );
        assert!(
            parse_loc("0 0 -0 S 0 0 -0 W 0.00m").is_err(),
            "negative zero seconds"
        );
    }

    #[test]
    fn errors_name_the_part() {
        assert!(
            parse_loc("91 0 0 N 0 0 0 E")
                .unwrap_err()
                .contains("latitude degrees")
        );
        assert!(
            parse_loc("1 60 0 N 0 0 0 E")
                .unwrap_err()
                .contains("minutes")
        );
        assert!(
            parse_loc("1 0 0 N 2 0 0 S")
                .unwrap_err()
                .contains("latitude and longitude")
        );
        assert!(parse_loc("1 0 0 X").unwrap_err().contains("hemisphere"));
    }
}
