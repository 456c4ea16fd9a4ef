//! The one NATS connection module of the suite (DESIGN.md §4.5): how every program (agent, DNS,
//! controllers) authenticates to NATS and builds subjects.
//!
//! It lives in `catalyst-policy` because that is the crate every program already shares and the
//! workspace's top level is fixed (DESIGN.md §2); the connection half sits behind the optional
//! `nats` feature, so agent-ebpf and programs without NATS do not compile `async-nats`. Subject
//! tokens ([`subject_token`], [`subject`]) need no feature.
//!
//! Authentication: a credentials file (JWT + `NKey` seed, `nsc` output) or a bare `NKey` seed file,
//! not both; TLS with an optional CA bundle and an optional client certificate (mutual TLS).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A NATS subject token for `value`: every character other than an ASCII letter, digit, `-` or
/// `_` becomes `_` (so a `.` in a node, cluster, zone or label value cannot add a subject level,
/// and `*`, `>` or white space cannot make a wildcard or break the protocol line); an empty value
/// is `_` (an empty token is not a valid subject).
pub fn subject_token(value: &str) -> String {
    if value.is_empty() {
        return "_".to_owned();
    }
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `prefix` (a fixed, trusted subject such as `catalyst.flows`) followed by one sanitised token
/// per value: `subject("catalyst.flows", &["eu", "node.a"])` is `catalyst.flows.eu.node_a`.
pub fn subject(prefix: &str, values: &[&str]) -> String {
    let mut s = prefix.to_owned();
    for v in values {
        s.push('.');
        s.push_str(&subject_token(v));
    }
    s
}

/// TLS to the NATS server (`tls:` in each program's `nats:` section).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    /// PEM bundle of the CAs that sign the server's certificate; default none (the system's
    /// roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `key_file`. Default none.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Default none.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// How to reach and authenticate to NATS: built by each program from its own `nats:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// Credentials file (`.creds`: user JWT and `NKey` seed).
    pub credentials: Option<PathBuf>,
    /// File holding a bare `NKey` user seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// TLS; `None` connects as the URL says (`tls://` still negotiates TLS).
    pub tls: Option<NatsTls>,
}

/// Why a NATS connection could not be set up. `field` names the configuration field at fault
/// (`nats.credentials`, `nats.nkey_seed_file`, `nats.tls.key_file`, …).
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// A setting is wrong on its face.
    #[error("{field}: {reason}")]
    Invalid {
        /// Configuration field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A file named by a setting cannot be read.
    #[error("{field}: cannot read `{}`: {source}", path.display())]
    Read {
        /// Configuration field.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The client could not connect (only without retrying the first connection).
    #[cfg(feature = "nats")]
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// Server URL.
        url: String,
        /// Client's reason.
        #[source]
        source: async_nats::ConnectError,
    },
}

impl NatsAuth {
    /// Resolves relative file names against `base` (the directory of the configuration file
    /// that named them).
    pub fn rebase(&mut self, base: &std::path::Path) {
        let tls = self.tls.as_mut();
        let files = [self.credentials.as_mut(), self.nkey_seed_file.as_mut()]
            .into_iter()
            .chain(tls.into_iter().flat_map(|t| {
                [
                    t.ca_file.as_mut(),
                    t.cert_file.as_mut(),
                    t.key_file.as_mut(),
                ]
            }));
        for p in files.flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The configuration field a validation error names (`nats.credentials`, …).
    pub fn error_field(e: &NatsConnectError) -> &'static str {
        match e {
            NatsConnectError::Invalid { field, .. } | NatsConnectError::Read { field, .. } => field,
            #[cfg(feature = "nats")]
            NatsConnectError::Connect { .. } => "nats.url",
        }
    }

    /// Checks what can be checked without a server: one authentication method, a client
    /// certificate with its key, readable files, a well-formed seed. Returns the seed when a
    /// seed file is set.
    pub fn validate(&self) -> Result<Option<String>, NatsConnectError> {
        if self.credentials.is_some() && self.nkey_seed_file.is_some() {
            return Err(NatsConnectError::Invalid {
                field: "nats.nkey_seed_file",
                reason: "set either `credentials` or `nkey_seed_file`, not both".into(),
            });
        }
        if let Some(tls) = &self.tls {
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => {
                    return Err(NatsConnectError::Invalid {
                        field: "nats.tls.key_file",
                        reason: "a client certificate (`cert_file`) needs its key".into(),
                    });
                }
                (None, Some(_)) => {
                    return Err(NatsConnectError::Invalid {
                        field: "nats.tls.cert_file",
                        reason: "a client key (`key_file`) needs its certificate".into(),
                    });
                }
                _ => {}
            }
            for (field, path) in [
                ("nats.tls.ca_file", &tls.ca_file),
                ("nats.tls.cert_file", &tls.cert_file),
                ("nats.tls.key_file", &tls.key_file),
            ] {
                if let Some(path) = path {
                    std::fs::metadata(path).map_err(|source| NatsConnectError::Read {
                        field,
                        path: path.clone(),
                        source,
                    })?;
                }
            }
        }
        if let Some(path) = &self.credentials {
            std::fs::metadata(path).map_err(|source| NatsConnectError::Read {
                field: "nats.credentials",
                path: path.clone(),
                source,
            })?;
        }
        let Some(path) = &self.nkey_seed_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| NatsConnectError::Read {
            field: "nats.nkey_seed_file",
            path: path.clone(),
            source,
        })?;
        let seed = text.trim();
        // An NKey user seed: 58 base32 characters starting `SU`.
        if !(seed.len() == 58
            && seed.starts_with("SU")
            && seed
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)))
        {
            return Err(NatsConnectError::Invalid {
                field: "nats.nkey_seed_file",
                reason: format!(
                    "`{}` does not hold an NKey user seed (`SU…`)",
                    path.display()
                ),
            });
        }
        Ok(Some(seed.to_owned()))
    }
}

/// Connection options carrying `auth` (credentials file or `NKey` seed, TLS) and `name`, with
/// connection events logged at info; callers add what their connection needs (server order,
/// ping interval, …) and connect.
#[cfg(feature = "nats")]
pub async fn options(
    auth: &NatsAuth,
    name: &str,
) -> Result<async_nats::ConnectOptions, NatsConnectError> {
    let seed = auth.validate()?;
    let mut opts = async_nats::ConnectOptions::new().name(name);
    if let Some(path) = &auth.credentials {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| NatsConnectError::Read {
                field: "nats.credentials",
                path: path.clone(),
                source,
            })?;
    }
    if let Some(seed) = seed {
        opts = opts.nkey(seed);
    }
    if let Some(tls) = &auth.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let program = name.to_owned();
    Ok(opts.event_callback(move |event| {
        let program = program.clone();
        async move { tracing::info!(%event, client = %program, "NATS connection event") }
    }))
}

/// Connects to `url` with `auth`. With `retry_first` the call returns a client at once that
/// keeps trying to connect in the background (and reconnects later on its own); without it a
/// failed first connection is an error. Connection events are logged at info with `name`.
#[cfg(feature = "nats")]
pub async fn connect(
    url: &str,
    auth: &NatsAuth,
    name: &str,
    retry_first: bool,
) -> Result<async_nats::Client, NatsConnectError> {
    let mut opts = options(auth, name).await?;
    if retry_first {
        opts = opts.retry_on_initial_connect();
    }
    opts.connect(url)
        .await
        .map_err(|source| NatsConnectError::Connect {
            url: url.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_cannot_add_levels_or_wildcards() {
        assert_eq!(subject_token("node.a"), "node_a");
        assert_eq!(subject_token("a*b>c d\te"), "a_b_c_d_e");
        assert_eq!(subject_token(""), "_");
        assert_eq!(subject_token("ok-Name_1"), "ok-Name_1");
        assert_eq!(subject_token("nœud"), "n_ud");
        assert_eq!(
            subject("catalyst.flows", &["eu.west", "node.1"]),
            "catalyst.flows.eu_west.node_1"
        );
        assert_eq!(subject("p", &["", "x"]), "p._.x");
    }

    fn scratch(name: &str, body: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("catalyst-nats-auth-{name}-{}", std::process::id()));
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn bad_settings_name_the_field() {
        let creds = scratch("creds", "x");
        let seed = scratch("seed", "not a seed\n");
        let err = |a: NatsAuth| a.validate().unwrap_err().to_string();
        let e = err(NatsAuth {
            credentials: Some(creds.clone()),
            nkey_seed_file: Some(seed.clone()),
            tls: None,
        });
        assert!(e.starts_with("nats.nkey_seed_file:"), "{e}");
        let e = err(NatsAuth {
            nkey_seed_file: Some(seed.clone()),
            ..NatsAuth::default()
        });
        assert!(
            e.starts_with("nats.nkey_seed_file:") && e.contains("NKey"),
            "{e}"
        );
        let e = err(NatsAuth {
            tls: Some(NatsTls {
                cert_file: Some(creds.clone()),
                ..NatsTls::default()
            }),
            ..NatsAuth::default()
        });
        assert!(e.starts_with("nats.tls.key_file:"), "{e}");
        let e = err(NatsAuth {
            tls: Some(NatsTls {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..NatsTls::default()
            }),
            ..NatsAuth::default()
        });
        assert!(e.starts_with("nats.tls.ca_file:"), "{e}");
        let good = scratch(
            "good",
            "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU\n",
        );
        let s = NatsAuth {
            nkey_seed_file: Some(good.clone()),
            ..NatsAuth::default()
        }
        .validate()
        .unwrap();
        assert_eq!(s.as_deref().map(str::len), Some(58));
        for p in [creds, seed, good] {
            let _ = std::fs::remove_file(p);
        }
    }
}
