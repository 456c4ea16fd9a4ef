//! Bob Jenkins' lookup2 hash, which PowerDNS calls `burtle`. Its LUA pickers hash client addresses
//! and names with it, so the same function gives the same answers (pickhashed, pickwhashed,
//! picknamehashed, pickchashed).

use std::net::IpAddr;

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 13);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 8);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 13);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 12);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 16);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 5);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 3);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 10);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 15);
}

fn lookup2(key: &[u8], init: u32, fold: fn(u8) -> u8) -> u32 {
    let mut a: u32 = 0x9e37_79b9;
    let mut b: u32 = 0x9e37_79b9;
    let mut c: u32 = init;
    let word = |k: &[u8]| -> u32 {
        u32::from(fold(k[0]))
            | u32::from(fold(k[1])) << 8
            | u32::from(fold(k[2])) << 16
            | u32::from(fold(k[3])) << 24
    };
    let mut k = key;
    while k.len() >= 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    // The key length is folded into c; its low byte is reserved for it.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "lookup2 adds the length modulo 2^32"
    )]
    {
        c = c.wrapping_add(key.len() as u32);
    }
    let byte = |i: usize, shift: u32| -> u32 { u32::from(fold(k[i])) << shift };
    let n = k.len();
    if n >= 11 {
        c = c.wrapping_add(byte(10, 24));
    }
    if n >= 10 {
        c = c.wrapping_add(byte(9, 16));
    }
    if n >= 9 {
        c = c.wrapping_add(byte(8, 8));
    }
    if n >= 8 {
        b = b.wrapping_add(byte(7, 24));
    }
    if n >= 7 {
        b = b.wrapping_add(byte(6, 16));
    }
    if n >= 6 {
        b = b.wrapping_add(byte(5, 8));
    }
    if n >= 5 {
        b = b.wrapping_add(byte(4, 0));
    }
    if n >= 4 {
        a = a.wrapping_add(byte(3, 24));
    }
    if n >= 3 {
        a = a.wrapping_add(byte(2, 16));
    }
    if n >= 2 {
        a = a.wrapping_add(byte(1, 8));
    }
    if n >= 1 {
        a = a.wrapping_add(byte(0, 0));
    }
    mix(&mut a, &mut b, &mut c);
    c
}

/// lookup2 over `key` with initial value `init`.
pub fn burtle(key: &[u8], init: u32) -> u32 {
    lookup2(key, init, |b| b)
}

/// Case-insensitive lookup2 (ASCII letters folded to lower case), as used for DNS names.
pub fn burtle_ci(key: &[u8], init: u32) -> u32 {
    lookup2(key, init, |b| b.to_ascii_lowercase())
}

/// PowerDNS's `ComboAddress::addressOnlyHash`: lookup2 over the address bytes in network order.
pub fn address_hash(addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(v4) => burtle(&v4.octets(), 0),
        IpAddr::V6(v6) => burtle(&v6.octets(), 0),
    }
}

/// PowerDNS's `DNSName::hash()`: case-insensitive lookup2 over the uncompressed wire form,
/// including the root label's terminating zero byte.
pub fn name_hash(name: &str) -> u32 {
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "labels are at most 63 bytes"
        )]
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    burtle_ci(&wire, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup2_known_values() {
        // Values of this implementation; the side-by-side tests against PowerDNS
        // (tests/powerdns.rs) check that pickhashed/pickwhashed agree with PowerDNS's burtle.
        assert_eq!(burtle(b"", 0), 0xbd49_d10d);
        assert_eq!(burtle(b"Four score and seven years ago", 0), 0x50f2_424b);
        assert_eq!(burtle(b"Four score and seven years ago", 1), 0x89de_ae7e);
    }

    #[test]
    fn case_insensitive_variant_folds() {
        assert_eq!(burtle_ci(b"ExAmple", 7), burtle(b"example", 7));
    }
}
