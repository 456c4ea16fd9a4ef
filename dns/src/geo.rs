//! Geo lookups from MaxMind-format databases (city and ASN), as PowerDNS's GeoIP backend does.

use std::{net::IpAddr, path::Path};

use maxminddb::{Reader, geoip2};

/// Failure opening a database.
#[derive(Debug, thiserror::Error)]
#[error("failed to open mmdb `{path}`")]
pub struct GeoError {
    path: String,
    #[source]
    source: maxminddb::MaxMindDbError,
}

/// What the geo functions need to know about an address.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GeoInfo {
    /// ISO country code, lower case.
    pub country: Option<String>,
    /// Continent code, lower case.
    pub continent: Option<String>,
    /// First subdivision ISO code, lower case.
    pub region: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Latitude and longitude in degrees.
    pub location: Option<(f64, f64)>,
}

/// Open city and/or ASN databases.
pub struct GeoDb {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("city", &self.city.is_some())
            .field("asn", &self.asn.is_some())
            .finish()
    }
}

fn open(path: &Path) -> Result<Reader<Vec<u8>>, GeoError> {
    Reader::open_readfile(path).map_err(|source| GeoError {
        path: path.display().to_string(),
        source,
    })
}

impl GeoDb {
    /// Open the configured databases; either may be absent.
    pub fn open(city: Option<&Path>, asn: Option<&Path>) -> Result<Self, GeoError> {
        Ok(Self {
            city: city.map(open).transpose()?,
            asn: asn.map(open).transpose()?,
        })
    }

    /// Look an address up in both databases.
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        let mut info = GeoInfo::default();
        if let Some(reader) = &self.city
            && let Ok(Some(city)) = reader.lookup::<geoip2::City<'_>>(ip)
        {
            info.country = city
                .country
                .and_then(|c| c.iso_code)
                .map(str::to_ascii_lowercase);
            info.continent = city
                .continent
                .and_then(|c| c.code)
                .map(str::to_ascii_lowercase);
            info.region = city
                .subdivisions
                .and_then(|s| s.into_iter().next())
                .and_then(|s| s.iso_code)
                .map(str::to_ascii_lowercase);
            info.location = city
                .location
                .and_then(|l| Some((l.latitude?, l.longitude?)));
        }
        if let Some(reader) = &self.asn
            && let Ok(Some(asn)) = reader.lookup::<geoip2::Asn<'_>>(ip)
        {
            info.asn = asn.autonomous_system_number;
        }
        info
    }
}
