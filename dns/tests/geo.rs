//! Geo functions against MaxMind-format databases the test writes itself (nothing downloaded):
//! the library lookups, the running server with ECS, and PowerDNS's GeoIP backend on the same
//! files when it is installed.

#![allow(clippy::doc_markdown, reason = "test prose")]

mod common;

use std::{net::Ipv4Addr, path::PathBuf};

use catalyst_dns::geo::GeoDb;
use common::{mmdb, *};
use hickory_proto::rr::RecordType;

/// Amsterdam (NL, EU), New York (US, NA), Sydney (AU, OC) networks, and an ASN database.
fn fixtures(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let city = mmdb::build(
        "GeoIP2-City",
        &[
            (
                Ipv4Addr::new(192, 0, 2, 0),
                24,
                mmdb::city("NL", "EU", "NH", 52.37, 4.89),
            ),
            (
                Ipv4Addr::new(198, 51, 100, 0),
                24,
                mmdb::city("US", "NA", "NY", 40.71, -74.0),
            ),
            (
                Ipv4Addr::new(203, 0, 113, 0),
                24,
                mmdb::city("AU", "OC", "NSW", -33.87, 151.21),
            ),
            (
                Ipv4Addr::new(10, 1, 0, 0),
                16,
                mmdb::city("DE", "EU", "BE", 52.52, 13.40),
            ),
            (
                Ipv4Addr::new(10, 2, 0, 0),
                16,
                mmdb::city("JP", "AS", "13", 35.68, 139.69),
            ),
            // More than six decimals (PowerDNS's GeoIP backend passes six), both hemispheres
            // negative, and the equator / prime meridian.
            (
                Ipv4Addr::new(10, 3, 0, 0),
                16,
                mmdb::city("FR", "EU", "IDF", 48.856_613_9, 2.352_221_9),
            ),
            (
                Ipv4Addr::new(10, 4, 0, 0),
                16,
                mmdb::city("BR", "SA", "SP", -23.550_519_9, -46.633_309_4),
            ),
            (
                Ipv4Addr::new(10, 5, 0, 0),
                16,
                mmdb::city("GH", "AF", "AA", 0.0, 0.0),
            ),
            (
                Ipv4Addr::new(10, 6, 0, 0),
                16,
                mmdb::city("NZ", "OC", "WGN", -41.286_460_000_1, 174.776_236_999_9),
            ),
        ],
    );
    let asn = mmdb::build(
        "GeoLite2-ASN",
        &[
            (Ipv4Addr::new(10, 1, 0, 0), 16, mmdb::asn(64500)),
            (Ipv4Addr::new(10, 2, 0, 0), 16, mmdb::asn(64501)),
        ],
    );
    let (c, a) = (dir.join("city.mmdb"), dir.join("asn.mmdb"));
    std::fs::write(&c, city).unwrap();
    std::fs::write(&a, asn).unwrap();
    (c, a)
}

#[test]
fn mmdb_fixture_lookups() {
    let dir = scratch("geo-lib");
    let (c, a) = fixtures(&dir);
    let db = GeoDb::open(Some(&c), Some(&a)).unwrap();
    let nl = db.lookup("192.0.2.55".parse().unwrap());
    assert_eq!(nl.country.as_deref(), Some("nl"));
    assert_eq!(nl.continent.as_deref(), Some("eu"));
    assert_eq!(nl.region.as_deref(), Some("nh"));
    assert_eq!(nl.location, Some((52.37, 4.89)));
    assert_eq!(db.lookup("10.1.9.9".parse().unwrap()).asn, Some(64500));
    assert_eq!(db.lookup("8.8.8.8".parse().unwrap()).country, None);
}

const ZONE: &str = r#"$ORIGIN geo.test.
$TTL 60
@        IN SOA ns.geo.test. hm.geo.test. 1 3600 600 604800 60
@        IN NS  ns
ns       IN A   127.0.0.1
closest  IN LUA A   "pickclosest({'192.0.2.1', '198.51.100.1', '203.0.113.1'})"
cc       IN LUA TXT "countryCode()"
cont     IN LUA TXT "continentCode()"
eu       IN LUA A   ";if continent('EU') then return '192.0.2.1' else return '198.51.100.1' end"
asn      IN LUA A   ";if asnum({64500, 64502}) then return '192.0.2.64' else return '192.0.2.65' end"
ll       IN LUA TXT "latlon()"
loc      IN LUA LOC "latlonloc()"
loctxt   IN LUA TXT "latlonloc()"
*.magic  IN LUA A   "closestMagic()"
"#;

#[test]
fn geo_answers_follow_the_client_subnet() {
    let dir = scratch("geo-srv");
    let (c, a) = fixtures(&dir);
    let zf = dir.join("geo.zone");
    std::fs::write(&zf, ZONE).unwrap();
    let port = free_port();
    let cfg = config(
        port,
        &[("geo.test", &zf)],
        &format!("geo: {{city: {}, asn: {}}}\n", c.display(), a.display()),
    );
    let _srv = start_catalyst(&dir, &cfg, port);
    let q = |n: &str, t: RecordType, ecs: &str| answers(port, n, t, Some(ecs));
    assert_eq!(
        q("closest.geo.test.", RecordType::A, "10.1.2.0/24"),
        vec!["192.0.2.1"],
        "Berlin → Amsterdam"
    );
    assert_eq!(
        q("closest.geo.test.", RecordType::A, "10.2.2.0/24"),
        vec!["203.0.113.1"],
        "Tokyo → Sydney"
    );
    assert_eq!(
        q("closest.geo.test.", RecordType::A, "198.51.100.0/24"),
        vec!["198.51.100.1"]
    );
    assert_eq!(
        q("cc.geo.test.", RecordType::TXT, "10.2.0.0/16"),
        vec!["jp"]
    );
    assert_eq!(q("cc.geo.test.", RecordType::TXT, "8.8.8.0/24"), vec!["--"]);
    assert_eq!(
        q("cont.geo.test.", RecordType::TXT, "203.0.113.0/24"),
        vec!["oc"]
    );
    assert_eq!(
        q("eu.geo.test.", RecordType::A, "10.1.0.0/16"),
        vec!["192.0.2.1"]
    );
    assert_eq!(
        q("eu.geo.test.", RecordType::A, "10.2.0.0/16"),
        vec!["198.51.100.1"]
    );
    assert_eq!(
        q("asn.geo.test.", RecordType::A, "10.1.5.0/24"),
        vec!["192.0.2.64"]
    );
    assert_eq!(
        q("asn.geo.test.", RecordType::A, "10.2.5.0/24"),
        vec!["192.0.2.65"]
    );
    assert_eq!(
        q("ll.geo.test.", RecordType::TXT, "192.0.2.0/24"),
        vec!["52.370000 4.890000"]
    );
    assert_eq!(
        q(
            "192-0-2-1.203-0-113-1.magic.geo.test.",
            RecordType::A,
            "10.2.0.0/16"
        ),
        vec!["203.0.113.1"]
    );
}

#[test]
fn geo_functions_match_powerdns_geoip_backend() {
    if !require(
        "geo_functions_match_powerdns_geoip_backend",
        &[Need::Pdns, Need::PdnsGeoip],
    ) {
        return;
    }
    let dir = scratch("geo-pdns");
    let (c, a) = fixtures(&dir);
    let zf = dir.join("geo.zone");
    std::fs::write(&zf, ZONE).unwrap();
    let geozones = dir.join("geo-zones.yaml");
    std::fs::write(&geozones, "domains: []\n").unwrap();
    let cport = free_port();
    let pport = free_port();
    let zones: [(&str, &std::path::Path); 1] = [("geo.test", &zf)];
    let _p = start_pdns(
        &dir,
        &zones,
        pport,
        &format!(
            "launch=bind,geoip\ngeoip-database-files=mmdb:{} mmdb:{}\ngeoip-zones-file={}\n",
            c.display(),
            a.display(),
            geozones.display()
        ),
    );
    let _c = start_catalyst(
        &dir,
        &config(
            cport,
            &zones,
            &format!("geo: {{city: {}, asn: {}}}\n", c.display(), a.display()),
        ),
        cport,
    );
    // rcode and every answer record with its TTL.
    let answer = |port: u16, n: &str, t: RecordType, ecs: &str| {
        let m = query_raw(port, n, t, Some(ecs))
            .unwrap_or_else(|| panic!("no answer for {n} {t} on {port}"));
        let mut v: Vec<String> = m
            .answers
            .iter()
            .map(|r| format!("{} {} {}", r.ttl, r.record_type(), r.data))
            .collect();
        v.sort();
        (m.metadata.response_code, v)
    };
    let mut diffs = Vec::new();
    for ecs in [
        "10.1.2.0/24",
        "10.2.2.0/24",
        "10.3.0.0/24",
        "10.4.0.0/24",
        "10.5.0.0/24",
        "10.6.0.0/24",
        "8.8.8.0/24",
        "198.51.100.0/24",
        "192.0.2.0/24",
        "203.0.113.0/24",
    ] {
        for (n, t) in [
            ("closest.geo.test.", RecordType::A),
            ("eu.geo.test.", RecordType::A),
            ("asn.geo.test.", RecordType::A),
            ("192-0-2-1.203-0-113-1.magic.geo.test.", RecordType::A),
            ("cc.geo.test.", RecordType::TXT),
            ("cont.geo.test.", RecordType::TXT),
            ("ll.geo.test.", RecordType::TXT),
            ("loc.geo.test.", RecordType::from(29)),
            ("loctxt.geo.test.", RecordType::TXT),
        ] {
            let ours = answer(cport, n, t, ecs);
            let theirs = answer(pport, n, t, ecs);
            if ours != theirs {
                diffs.push(format!(
                    "{n} ecs={ecs}: catalyst {ours:?} PowerDNS {theirs:?}"
                ));
            }
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
