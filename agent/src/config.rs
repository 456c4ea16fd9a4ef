//! Agent configuration file (YAML).
//!
//! Relative paths are resolved against the directory of the configuration file.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

use catalyst_policy::datapath::{
    DEFAULT_CONNTRACK_MAX, DEFAULT_ENDPOINTS_MAX, DEFAULT_EVENTS_BYTES, DEFAULT_IPCACHE_MAX,
    DEFAULT_POLICY_MAX,
};
use catalyst_policy::http::{HttpLimits, LimitError};

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config `{path}`")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("invalid config `{path}`: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Field path, line and reason.
        message: String,
    },
    /// A value is inconsistent.
    #[error("invalid config `{path}`: {field}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Field.
        field: String,
        /// Why.
        message: String,
    },
}

/// Top-level agent configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Node name reported in flows. Default: the host name.
    #[serde(default = "default_node")]
    pub node: String,
    /// bpffs directory for pinned maps and links. Default `/sys/fs/bpf/catalyst`.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// Policy manifest files or directories (`*.yaml`, `*.yml`), watched for changes.
    #[serde(default)]
    pub policy_paths: Vec<PathBuf>,
    /// Global audit mode: would-be drops are forwarded and reported as AUDIT. Default false.
    #[serde(default)]
    pub audit: bool,
    /// Minimum interval between two events for one connection (drop reports), milliseconds.
    /// Default 1000.
    #[serde(default = "default_event_interval_ms")]
    pub event_interval_ms: u64,
    /// Which datapath events are produced (all by default): Cilium's `bpf-events-*-enabled`.
    #[serde(default)]
    pub bpf_events: BpfEvents,
    /// Addresses of this node; peers with these addresses have the `host` identity.
    #[serde(default)]
    pub host_addresses: Vec<IpAddr>,
    /// Workload endpoints on this node.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Extra ipcache entries: remote endpoints and nodes.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Map capacities.
    #[serde(default)]
    pub maps: MapSizes,
    /// Conntrack idle timeouts by protocol and state (Cilium's defaults).
    #[serde(default)]
    pub conntrack_timeouts: ConntrackTimeouts,
    /// How often expired conntrack entries are removed and the table's occupancy is reported
    /// (`catalyst_conntrack_entries`), milliseconds (at least 1000). Default 10000.
    #[serde(default = "default_conntrack_gc_interval_ms")]
    pub conntrack_gc_interval_ms: u64,
    /// How programs are attached: `auto` (TCX with pinned links where the kernel has TCX and
    /// allows pinning links, else tc clsact), `tcx` or `tc`. Default `auto`.
    #[serde(default = "default_attach_mode")]
    pub attach_mode: crate::datapath::AttachMode,
    /// Where flow records go: `stdout` (compact lines), `none`, or a file path (JSON lines).
    /// Default `stdout`.
    #[serde(default = "default_flow_log")]
    pub flow_log: String,
    /// How often the policy and config files are polled for changes, milliseconds. Default 500.
    /// Edits are normally noticed at once through inotify; polling is the fallback (and brings
    /// in interfaces that appear later).
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
    /// The Hubble-compatible Observer API and the in-memory flow ring.
    #[serde(default)]
    pub observer: ObserverConfig,
    /// The Prometheus `/metrics` endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Flow export to NATS `JetStream`.
    #[serde(default)]
    pub nats: NatsConfig,
    /// Per-workload compliance signals (published over the `nats` connection).
    #[serde(default)]
    pub signals: SignalsConfig,
    /// Where endpoints and policies come from: `standalone` (this file and the policy files) or
    /// `kubernetes` (the API server, plus the policy files). Default `standalone`.
    #[serde(default)]
    pub mode: Mode,
    /// Kubernetes mode settings (read when `mode: kubernetes`).
    #[serde(default)]
    pub kubernetes: crate::k8s::KubernetesConfig,
}

/// Source of endpoints and policies.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Endpoints from this file, policies from `policy_paths`.
    #[default]
    Standalone,
    /// Pods, namespaces, nodes and policies from the Kubernetes API (`docs/kubernetes.md`).
    Kubernetes,
}

/// Compliance signals (`docs/signals.md`): checks per local workload, published to NATS
/// `JetStream` (subjects `catalyst.signals.<org>.<env>.<app>`) or logged when NATS is not
/// configured.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    /// Whether signals are computed at all. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Evaluation window, milliseconds: flows and drops are counted per window and every check
    /// is evaluated at the end of each window (and at once on every policy or endpoint
    /// change). Default 10000.
    #[serde(default = "default_signals_interval_ms")]
    pub interval_ms: u64,
    /// Every signal is republished at least this often even when unchanged (a heartbeat),
    /// milliseconds; between heartbeats only changed signals are published. Default 60000.
    #[serde(default = "default_signals_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// `JetStream` stream, created when missing with subjects `catalyst.signals.>`. Default
    /// `CATALYST_SIGNALS`.
    #[serde(default = "default_signals_stream")]
    pub stream: String,
    /// Age limit of the stream's messages when the agent creates it, seconds (0: unlimited).
    /// Default 86400.
    #[serde(default = "default_signals_max_age_s")]
    pub max_age_s: u64,
    /// Signals queued for publishing; when full (NATS slow or down) further signals are
    /// dropped and counted (`catalyst_signals_dropped_total`). Default 16384.
    #[serde(default = "default_signals_buffer")]
    pub buffer: usize,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: default_signals_interval_ms(),
            heartbeat_ms: default_signals_heartbeat_ms(),
            stream: default_signals_stream(),
            max_age_s: default_signals_max_age_s(),
            buffer: default_signals_buffer(),
        }
    }
}

/// NATS `JetStream` export of flows (`DESIGN.md` §4.5).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL (`nats://host:4222`); `null` (the default) exports nothing and logs so.
    #[serde(default)]
    pub url: Option<String>,
    /// Cluster name in the subject `catalyst.flows.<cluster>.<node>`. Default `default`.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// `JetStream` stream, created when missing with subjects `catalyst.flows.>`. Default
    /// `CATALYST_FLOWS`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Flows queued for publishing; when full (NATS slow or down) further flows are dropped and
    /// counted, the datapath reader never waits. Default 8192.
    #[serde(default = "default_nats_buffer")]
    pub buffer: usize,
    /// Export one flow in `sample` (1 exports every flow). Default 1.
    #[serde(default = "default_sample")]
    pub sample: u32,
    /// Credentials file (`.creds`: user JWT and `NKey` seed, as `nsc` writes it). Default none.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// File holding a bare `NKey` user seed (`SU…`); not with `credentials`. Default none.
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// TLS to the server: `ca_file`, and `cert_file` + `key_file` for mutual TLS. Default none
    /// (a `tls://` URL still negotiates TLS with the system's roots).
    #[serde(default)]
    pub tls: Option<catalyst_policy::nats::NatsTls>,
}

impl NatsConfig {
    /// How to authenticate, for the suite's one connection module
    /// ([`catalyst_policy::nats::connect`]).
    pub fn auth(&self) -> catalyst_policy::nats::NatsAuth {
        catalyst_policy::nats::NatsAuth {
            credentials: self.credentials.clone(),
            nkey_seed_file: self.nkey_seed_file.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The authentication files, checked when NATS is enabled: `(field, message)` on error.
    fn validate_auth(&self) -> Result<(), (String, String)> {
        use catalyst_policy::nats::{NatsAuth, NatsConnectError};
        if self.url.is_none() {
            return Ok(());
        }
        self.auth().validate().map(drop).map_err(|e| {
            let field = NatsAuth::error_field(&e).to_owned();
            let message = match e {
                NatsConnectError::Read { path, source, .. } => {
                    format!("cannot read `{}`: {source}", path.display())
                }
                NatsConnectError::Invalid { reason, .. } => reason,
                other @ NatsConnectError::Connect { .. } => other.to_string(),
            };
            (field, message)
        })
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            cluster: default_cluster(),
            stream: default_stream(),
            buffer: default_nats_buffer(),
            sample: default_sample(),
            credentials: None,
            nkey_seed_file: None,
            tls: None,
        }
    }
}

/// Observer API (Hubble `observer.Observer` gRPC) and flow ring settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObserverConfig {
    /// TCP address of the gRPC server; `null` disables it. Default `127.0.0.1:4244` (Hubble's
    /// agent port; listen on `0.0.0.0:4244` to let Hubble Relay reach it).
    #[serde(default = "default_observer_listen")]
    pub listen_address: Option<SocketAddr>,
    /// UNIX socket of the gRPC server; `null` disables it. Default
    /// `/var/run/catalyst/hubble.sock`.
    #[serde(default = "default_observer_socket")]
    pub unix_socket: Option<PathBuf>,
    /// Flows kept in memory for `GetFlows` (entries). Default 65536.
    #[serde(default = "default_ring_capacity")]
    pub ring_capacity: usize,
    /// How often the kernel's lost-event counter is checked and reported, milliseconds.
    /// Default 1000.
    #[serde(default = "default_lost_check_ms")]
    pub lost_events_interval_ms: u64,
    /// TLS for the TCP listener (the UNIX socket stays plaintext, guarded by its file
    /// permissions); `null` (the default) serves plaintext.
    #[serde(default)]
    pub tls: Option<ObserverTlsConfig>,
    /// Cluster name flows, `GetNamespaces` and `peer.Peer` report (Cilium's `cluster-name`);
    /// peers of a cluster other than `default` are named `<cluster>/<node>`. Default `default`.
    #[serde(default = "default_cluster")]
    pub cluster_name: String,
    /// `host:port` that `peer.Peer` announces for this node (what hubble-relay dials); `null`
    /// (the default) announces the bound TCP address (an unspecified bind address such as
    /// `0.0.0.0` cannot be dialled: set this, e.g. to the node IP, when relays run elsewhere).
    #[serde(default)]
    pub advertise_address: Option<String>,
    /// Largest gRPC message the server decodes or encodes, bytes. Default 4194304 (4 MiB,
    /// gRPC's default).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams (RPCs) per client connection. Default 256.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval on idle connections, milliseconds (0: no pings).
    /// Default 30000.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    /// How long a keepalive ping may go unanswered before the connection is closed,
    /// milliseconds. Default 20000.
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
}

/// A workload (controller) an endpoint belongs to.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Workload name (`web`). Required.
    pub name: String,
    /// Workload kind (`Deployment`, `StatefulSet`, `DaemonSet`, …). Required.
    pub kind: String,
}

/// TLS of the Observer API's TCP listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObserverTlsConfig {
    /// Server certificate chain (PEM file). Required.
    pub cert: PathBuf,
    /// Private key of the certificate (PEM file, PKCS#8, PKCS#1 or SEC1). Required.
    pub key: PathBuf,
    /// CA bundle (PEM file) that client certificates must chain to: set it for mutual TLS
    /// (clients without a valid certificate are refused). Default `null`: no client
    /// certificates.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        Self {
            listen_address: default_observer_listen(),
            unix_socket: default_observer_socket(),
            ring_capacity: default_ring_capacity(),
            lost_events_interval_ms: default_lost_check_ms(),
            tls: None,
            cluster_name: default_cluster(),
            advertise_address: None,
            max_message_bytes: default_max_message_bytes(),
            max_concurrent_streams: default_max_concurrent_streams(),
            keepalive_interval_ms: default_keepalive_interval_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
        }
    }
}

/// Prometheus metrics settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics` HTTP endpoint; `null` disables it. Default `127.0.0.1:9965`
    /// (Hubble's metrics port).
    #[serde(default = "default_metrics_listen")]
    pub listen_address: Option<SocketAddr>,
    /// Distinct destination ports `hubble_port_distribution_total` labels before it counts
    /// further ports as `port="other"`. Default 256.
    #[serde(default = "default_max_ports")]
    pub max_ports: usize,
    /// How often the datapath counters map is read into `catalyst_*` metrics, milliseconds.
    /// Default 1000.
    #[serde(default = "default_counters_interval_ms")]
    pub counters_interval_ms: u64,
    /// Longest a request to the endpoint may take from accept to the last byte of the answer,
    /// milliseconds (a client that sends its request slowly or not at all is disconnected and
    /// counted in `catalyst_http_refused_total{reason="timeout"}`). Default 5000.
    #[serde(default = "default_http_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Largest request head (request line and headers) accepted, bytes; larger ones are answered
    /// `431`. At least 8192. Default 16384.
    #[serde(default = "default_http_request_bytes")]
    pub max_request_bytes: usize,
    /// Connections served at once; one more is answered `503` and closed. Default 64.
    #[serde(default = "default_http_connections")]
    pub max_connections: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen_address: default_metrics_listen(),
            max_ports: default_max_ports(),
            counters_interval_ms: default_counters_interval_ms(),
            request_timeout_ms: default_http_timeout_ms(),
            max_request_bytes: default_http_request_bytes(),
            max_connections: default_http_connections(),
        }
    }
}

impl MetricsConfig {
    /// The endpoint's limits, checked (the error names the field).
    pub fn limits(&self) -> Result<HttpLimits, LimitError> {
        HttpLimits::from_config(
            self.request_timeout_ms,
            self.max_request_bytes,
            self.max_connections,
        )
    }
}

/// One workload endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Pod or workload name.
    pub name: String,
    /// Namespace. Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Host-side interface of the workload (for a veth pair: the peer in the host namespace).
    pub interface: String,
    /// Addresses of the workload.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Labels (`key: value`; a key may carry a source prefix such as `k8s:`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Audit mode for this endpoint. Default false.
    #[serde(default)]
    pub audit: bool,
    /// Source-address check: packets the workload sends from an address other than its own
    /// (`addresses`, at most one per family while the check is on) are dropped with reason 132
    /// `INVALID_SOURCE_IP`. Set `false` for workloads that route or forward traffic of other
    /// addresses. Default true.
    #[serde(default = "default_true")]
    pub source_check: bool,
    /// Named ports the workload declares (as Kubernetes `containers[].ports[]` with a name):
    /// policy `toPorts` entries whose `port` is a name resolve through them. Default none.
    #[serde(default)]
    pub ports: Vec<NamedPortConfig>,
    /// Workloads (controllers) the endpoint belongs to, as flows show them in
    /// `Endpoint.workloads` (`[{name: web, kind: Deployment}]`). Kubernetes mode fills them from
    /// the pod's owner references. Default none.
    #[serde(default)]
    pub workloads: Vec<WorkloadConfig>,
}

/// A named port of a workload.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamedPortConfig {
    /// The name (`IANA_SVC_NAME`: 1–15 of `a-z0-9-`).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`. Default `TCP`.
    #[serde(default = "default_port_protocol")]
    pub protocol: catalyst_policy::ports::Protocol,
}

fn default_port_protocol() -> catalyst_policy::ports::Protocol {
    catalyst_policy::ports::Protocol::Tcp
}

/// An extra ipcache entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Prefix (an address is a /32 or /128).
    pub prefix: IpNet,
    /// Reserved entity: `host`, `remote-node`, `kube-apiserver`, `health`, `ingress`,
    /// `unmanaged`, `init`. Exclusive with `labels`.
    #[serde(default)]
    pub entity: Option<String>,
    /// Labels of a remote endpoint. Exclusive with `entity`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Map capacities (entries; ring buffer in bytes).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MapSizes {
    /// Endpoint map entries. Default 4096.
    #[serde(default = "default_endpoints_max")]
    pub endpoints: u32,
    /// Entries per ipcache trie (IPv4 and IPv6). Default 65536.
    #[serde(default = "default_ipcache_max")]
    pub ipcache: u32,
    /// Policy map entries. Default 262144.
    #[serde(default = "default_policy_max")]
    pub policy: u32,
    /// Conntrack entries (LRU). Default 262144.
    #[serde(default = "default_conntrack_max")]
    pub conntrack: u32,
    /// Event ring buffer bytes (power of two). Default 1 MiB.
    #[serde(default = "default_events_bytes")]
    pub events_bytes: u32,
    /// Datagrams in flight as IP fragments tracked at once (LRU). Default 8192 (Cilium's
    /// `bpf-fragments-map-max`).
    #[serde(default = "default_fragments_max")]
    pub fragments: u32,
}

/// Which events the datapath produces for flows (Cilium's `bpf-events-drop-enabled`,
/// `bpf-events-policy-verdict-enabled`, `bpf-events-trace-enabled`). Turning a kind off removes
/// its flows from the Observer API, metrics and NATS, and its cost (a ring-buffer record read by
/// the agent); counters are kept either way.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BpfEvents {
    /// Drop events. Default true.
    #[serde(default = "default_true")]
    pub drop: bool,
    /// Policy-verdict events of allowed (and audited) new connections. Default true.
    #[serde(default = "default_true")]
    pub policy_verdict: bool,
    /// Trace events: TCP flag transitions (SYN, FIN, RST per direction) and first replies.
    /// Default true.
    #[serde(default = "default_true")]
    pub trace: bool,
}

impl Default for BpfEvents {
    fn default() -> Self {
        Self {
            drop: true,
            policy_verdict: true,
            trace: true,
        }
    }
}

impl BpfEvents {
    /// The `CFG_F_NO_*_EVENTS` bits of the kinds turned off.
    pub fn config_flags(self) -> u32 {
        use catalyst_policy::datapath::{
            CFG_F_NO_DROP_EVENTS, CFG_F_NO_TRACE_EVENTS, CFG_F_NO_VERDICT_EVENTS,
        };
        let mut f = 0;
        if !self.drop {
            f |= CFG_F_NO_DROP_EVENTS;
        }
        if !self.policy_verdict {
            f |= CFG_F_NO_VERDICT_EVENTS;
        }
        if !self.trace {
            f |= CFG_F_NO_TRACE_EVENTS;
        }
        f
    }
}

/// Largest conntrack idle timeout accepted, seconds (one year).
pub const MAX_CT_TIMEOUT_S: u32 = 365 * 24 * 3600;

/// Conntrack idle timeouts, seconds (each at least 1, at most [`MAX_CT_TIMEOUT_S`]). A connection idle longer than the
/// timeout of its state is over; its next packet is a new connection, evaluated again.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConntrackTimeouts {
    /// TCP before the first reply, s. Default 60 (Cilium `bpf-ct-timeout-regular-tcp-syn`).
    #[serde(default = "default_ct_tcp_syn")]
    pub tcp_syn_s: u32,
    /// TCP once a reply was seen, s. Default 21600 (Cilium `bpf-ct-timeout-regular-tcp`).
    #[serde(default = "default_ct_tcp_established")]
    pub tcp_established_s: u32,
    /// TCP after FIN or RST, s. Default 10 (Cilium `bpf-ct-timeout-regular-tcp-fin`).
    #[serde(default = "default_ct_tcp_closing")]
    pub tcp_closing_s: u32,
    /// UDP, s. Default 60 (Cilium `bpf-ct-timeout-regular-any`).
    #[serde(default = "default_ct_udp")]
    pub udp_s: u32,
    /// ICMP, `ICMPv6`, SCTP and other protocols, s. Default 60
    /// (Cilium `bpf-ct-timeout-regular-any`).
    #[serde(default = "default_ct_other")]
    pub other_s: u32,
}

fn default_conntrack_gc_interval_ms() -> u64 {
    10_000
}

fn default_ct_tcp_syn() -> u32 {
    catalyst_policy::datapath::DEFAULT_CT_TIMEOUTS.tcp_syn_s
}
fn default_ct_tcp_established() -> u32 {
    catalyst_policy::datapath::DEFAULT_CT_TIMEOUTS.tcp_established_s
}
fn default_ct_tcp_closing() -> u32 {
    catalyst_policy::datapath::DEFAULT_CT_TIMEOUTS.tcp_closing_s
}
fn default_ct_udp() -> u32 {
    catalyst_policy::datapath::DEFAULT_CT_TIMEOUTS.udp_s
}
fn default_ct_other() -> u32 {
    catalyst_policy::datapath::DEFAULT_CT_TIMEOUTS.other_s
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        Self {
            tcp_syn_s: default_ct_tcp_syn(),
            tcp_established_s: default_ct_tcp_established(),
            tcp_closing_s: default_ct_tcp_closing(),
            udp_s: default_ct_udp(),
            other_s: default_ct_other(),
        }
    }
}

impl ConntrackTimeouts {
    /// Each timeout between 1 second and [`MAX_CT_TIMEOUT_S`].
    fn validate(&self) -> Result<(), (String, String)> {
        for (name, v) in [
            ("tcp_syn_s", self.tcp_syn_s),
            ("tcp_established_s", self.tcp_established_s),
            ("tcp_closing_s", self.tcp_closing_s),
            ("udp_s", self.udp_s),
            ("other_s", self.other_s),
        ] {
            if v == 0 {
                return Err((
                    format!("conntrack_timeouts.{name}"),
                    "0 is below the minimum of 1 second".to_owned(),
                ));
            }
            // Conntrack entries keep their expiry in wrapping 67 ms ticks (about 4.5 years
            // each way): a year is far beyond any useful idle timeout and well inside that.
            if v > MAX_CT_TIMEOUT_S {
                return Err((
                    format!("conntrack_timeouts.{name}"),
                    format!("{v} is above the maximum of {MAX_CT_TIMEOUT_S} seconds (one year)"),
                ));
            }
        }
        Ok(())
    }

    /// The datapath's form.
    pub fn datapath(self) -> catalyst_policy::datapath::CtTimeouts {
        catalyst_policy::datapath::CtTimeouts {
            tcp_syn_s: self.tcp_syn_s,
            tcp_established_s: self.tcp_established_s,
            tcp_closing_s: self.tcp_closing_s,
            udp_s: self.udp_s,
            other_s: self.other_s,
            pad: 0,
        }
    }
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            endpoints: default_endpoints_max(),
            ipcache: default_ipcache_max(),
            policy: default_policy_max(),
            conntrack: default_conntrack_max(),
            events_bytes: default_events_bytes(),
            fragments: default_fragments_max(),
        }
    }
}

fn default_attach_mode() -> crate::datapath::AttachMode {
    crate::datapath::AttachMode::Auto
}
fn default_node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".to_owned(), |s| s.trim().to_owned())
}
fn default_pin_path() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/catalyst")
}
fn default_event_interval_ms() -> u64 {
    1000
}
fn default_namespace() -> String {
    "default".to_owned()
}
fn default_flow_log() -> String {
    "stdout".to_owned()
}
fn default_watch_interval_ms() -> u64 {
    500
}
#[expect(
    clippy::unnecessary_wraps,
    reason = "serde default of an optional field"
)]
fn default_observer_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 4244)))
}
#[expect(
    clippy::unnecessary_wraps,
    reason = "serde default of an optional field"
)]
fn default_observer_socket() -> Option<PathBuf> {
    Some(PathBuf::from("/var/run/catalyst/hubble.sock"))
}
fn default_ring_capacity() -> usize {
    65_536
}
fn default_lost_check_ms() -> u64 {
    1000
}
fn default_max_message_bytes() -> usize {
    4 << 20
}
fn default_max_concurrent_streams() -> u32 {
    256
}
fn default_keepalive_interval_ms() -> u64 {
    30_000
}
fn default_keepalive_timeout_ms() -> u64 {
    20_000
}
#[expect(
    clippy::unnecessary_wraps,
    reason = "serde default of an optional field"
)]
fn default_metrics_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9965)))
}
fn default_max_ports() -> usize {
    256
}
fn default_counters_interval_ms() -> u64 {
    1000
}
fn default_http_timeout_ms() -> u64 {
    catalyst_policy::http::DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_http_request_bytes() -> usize {
    catalyst_policy::http::DEFAULT_MAX_REQUEST_BYTES
}
fn default_http_connections() -> usize {
    catalyst_policy::http::DEFAULT_MAX_CONNECTIONS
}
fn default_cluster() -> String {
    "default".to_owned()
}
fn default_stream() -> String {
    "CATALYST_FLOWS".to_owned()
}
fn default_nats_buffer() -> usize {
    8192
}
fn default_sample() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_signals_interval_ms() -> u64 {
    10_000
}
fn default_signals_heartbeat_ms() -> u64 {
    60_000
}
fn default_signals_stream() -> String {
    "CATALYST_SIGNALS".to_owned()
}
fn default_signals_max_age_s() -> u64 {
    86_400
}
fn default_signals_buffer() -> usize {
    16_384
}
fn default_endpoints_max() -> u32 {
    DEFAULT_ENDPOINTS_MAX
}
fn default_ipcache_max() -> u32 {
    DEFAULT_IPCACHE_MAX
}
fn default_policy_max() -> u32 {
    DEFAULT_POLICY_MAX
}
fn default_conntrack_max() -> u32 {
    DEFAULT_CONNTRACK_MAX
}
fn default_fragments_max() -> u32 {
    catalyst_policy::datapath::DEFAULT_FRAGMENTS_MAX
}
fn default_events_bytes() -> u32 {
    DEFAULT_EVENTS_BYTES
}

impl AgentConfig {
    /// Reads and validates `path`; relative paths inside are resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let mut cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let at = inner
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            ConfigError::Parse {
                path: path.to_owned(),
                message: format!("{field}: {inner}{at}"),
            }
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        for p in &mut cfg.policy_paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(tls) = &mut cfg.observer.tls {
            for p in [
                Some(&mut tls.cert),
                Some(&mut tls.key),
                tls.client_ca.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        let mut auth = cfg.nats.auth();
        auth.rebase(base);
        cfg.nats.credentials = auth.credentials;
        cfg.nats.nkey_seed_file = auth.nkey_seed_file;
        cfg.nats.tls = auth.tls;
        if let Some(k) = &mut cfg.kubernetes.kubeconfig
            && k.is_relative()
        {
            *k = base.join(&*k);
        }
        if cfg.flow_log != "stdout" && cfg.flow_log != "none" {
            let p = Path::new(&cfg.flow_log);
            if p.is_relative() {
                cfg.flow_log = base.join(p).to_string_lossy().into_owned();
            }
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        if let Err((field, message)) = self.nats.validate_auth() {
            return Err(invalid(field, message));
        }
        if self.mode == Mode::Kubernetes
            && let Err((field, message)) = self.kubernetes.validate(self.nats.url.is_some())
        {
            return Err(invalid(field, message));
        }
        let mut seen_if = BTreeMap::new();
        let mut seen_name = BTreeMap::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            if let Some(j) = seen_if.insert(ep.interface.clone(), i) {
                return Err(invalid(
                    format!("endpoints[{i}].interface"),
                    format!(
                        "interface `{}` is already used by endpoints[{j}]",
                        ep.interface
                    ),
                ));
            }
            if let Some(j) = seen_name.insert((ep.namespace.clone(), ep.name.clone()), i) {
                return Err(invalid(
                    format!("endpoints[{i}].name"),
                    format!("`{}/{}` is already endpoints[{j}]", ep.namespace, ep.name),
                ));
            }
            if ep.interface.is_empty() || ep.interface.len() > 15 {
                return Err(invalid(
                    format!("endpoints[{i}].interface"),
                    format!("`{}` is not a valid interface name", ep.interface),
                ));
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.entity.is_some() != p.labels.is_empty() {
                return Err(invalid(
                    format!("peers[{i}]"),
                    "exactly one of `entity` and `labels` is required".to_owned(),
                ));
            }
        }
        if let Err((field, message)) = self.conntrack_timeouts.validate() {
            return Err(invalid(field, message));
        }
        if self.signals.interval_ms < 100 {
            return Err(invalid(
                "signals.interval_ms".to_owned(),
                format!("{} is below the minimum of 100", self.signals.interval_ms),
            ));
        }
        if let Err(e) = self.metrics.limits() {
            return Err(invalid(format!("metrics.{}", e.field()), e.reason()));
        }
        if self.observer.ring_capacity == 0 {
            return Err(invalid(
                "observer.ring_capacity".to_owned(),
                "must be at least 1".to_owned(),
            ));
        }
        if !self.maps.events_bytes.is_power_of_two() || self.maps.events_bytes < 4096 {
            return Err(invalid(
                "maps.events_bytes".to_owned(),
                format!(
                    "{} is not a power of two of at least 4096",
                    self.maps.events_bytes
                ),
            ));
        }
        for (field, v) in [
            ("maps.endpoints", self.maps.endpoints),
            ("maps.ipcache", self.maps.ipcache),
            ("maps.policy", self.maps.policy),
            ("maps.conntrack", self.maps.conntrack),
            ("maps.fragments", self.maps.fragments),
        ] {
            if v == 0 {
                return Err(invalid(field.to_owned(), "must be at least 1".to_owned()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/agent/agent.yaml");
        let cfg = AgentConfig::load(&path).expect("example config loads");
        assert!(!cfg.endpoints.is_empty());
        assert!(
            cfg.policy_paths
                .iter()
                .all(|p| p.is_absolute() || p.starts_with("..") || p.components().count() > 1)
        );
    }

    #[test]
    fn conntrack_timeouts_default_to_cilium_and_reject_zero_and_over_a_year() {
        let cfg = AgentConfig::parse(Path::new("agent.yaml"), "node: n1\n").unwrap();
        assert_eq!(
            cfg.conntrack_timeouts.datapath(),
            catalyst_policy::datapath::DEFAULT_CT_TIMEOUTS
        );
        let err = AgentConfig::parse(
            Path::new("agent.yaml"),
            "node: n1\nconntrack_timeouts: {udp_s: 0}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("conntrack_timeouts.udp_s"), "{err}");
        let err = AgentConfig::parse(
            Path::new("agent.yaml"),
            "node: n1\nconntrack_timeouts: {tcp_established_s: 31536001}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("conntrack_timeouts.tcp_established_s")
                && err.contains("above the maximum of 31536000"),
            "{err}"
        );
    }

    #[test]
    fn bpf_events_default_to_all_and_turn_off_by_kind() {
        use catalyst_policy::datapath::{CFG_F_NO_TRACE_EVENTS, CFG_F_NO_VERDICT_EVENTS};
        let cfg = AgentConfig::parse(Path::new("a.yaml"), "node: n1\n").unwrap();
        assert_eq!(cfg.bpf_events.config_flags(), 0);
        let cfg = AgentConfig::parse(
            Path::new("a.yaml"),
            "node: n1\nbpf_events: {policy_verdict: false, trace: false}\n",
        )
        .unwrap();
        assert_eq!(
            cfg.bpf_events.config_flags(),
            CFG_F_NO_VERDICT_EVENTS | CFG_F_NO_TRACE_EVENTS
        );
        let err = AgentConfig::parse(Path::new("a.yaml"), "bpf_events: {drops: false}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("drops"), "{err}");
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let err = AgentConfig::parse(
            Path::new("agent.yaml"),
            "node: n1\nendpoints:\n  - name: a\n    interface: v1\n    adresses: [10.0.0.1]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("agent.yaml"), "{err}");
        assert!(err.contains("endpoints[0]"), "{err}");
        assert!(err.contains("adresses"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn duplicate_interface_is_rejected() {
        let err = AgentConfig::parse(
            Path::new("a.yaml"),
            "endpoints:\n  - {name: a, interface: v1}\n  - {name: b, interface: v1}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("endpoints[1].interface"), "{err}");
    }

    #[test]
    fn metrics_endpoint_limits_are_checked_with_the_field_named() {
        let cfg = AgentConfig::parse(Path::new("a.yaml"), "node: n1\n").unwrap();
        assert_eq!(
            cfg.metrics.limits().unwrap(),
            catalyst_policy::http::HttpLimits::default()
        );
        for (yaml, field) in [
            (
                "{request_timeout_ms: 0}",
                "metrics.request_timeout_ms: must be at least 1",
            ),
            (
                "{max_request_bytes: 1024}",
                "metrics.max_request_bytes: 1024 is below the minimum of 8192",
            ),
            (
                "{max_connections: 0}",
                "metrics.max_connections: must be at least 1",
            ),
        ] {
            let err = AgentConfig::parse(Path::new("a.yaml"), &format!("metrics: {yaml}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.ends_with(field), "{err}");
        }
    }

    #[test]
    fn events_bytes_must_be_a_power_of_two() {
        let err = AgentConfig::parse(Path::new("a.yaml"), "maps: {events_bytes: 5000}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("maps.events_bytes"), "{err}");
    }
}
