//! The Observer API end to end over gRPC: an in-process server fed with synthetic flows and a
//! client built from the project's protos, sending what the `hubble` CLI sends.

use std::time::Duration;

use tonic::Code;

use super::{Listeners, ObserverService, lost_event, serve};
use crate::{
    api::{
        flow::{self as pb, FlowFilter, LostEventSource},
        observer::{
            GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNodesRequest,
            ServerStatusRequest, get_flows_response::ResponseTypes,
            observer_client::ObserverClient,
        },
    },
    client,
    flow::{FlowRing, timestamp},
};

const T0: i128 = 1_795_651_200_000_000_000;
const SEC: i128 = 1_000_000_000;

/// Flow `i` at T0 + i seconds; odd flows are drops from shop/client, even ones forwarded to
/// shop/web.
fn flow(i: i64) -> pb::Flow {
    let dropped = i % 2 == 1;
    pb::Flow {
        time: Some(timestamp(T0 + i128::from(i) * SEC)),
        uuid: format!("flow-{i}"),
        verdict: if dropped {
            pb::Verdict::Dropped
        } else {
            pb::Verdict::Forwarded
        }
        .into(),
        drop_reason_desc: if dropped { 133 } else { 0 },
        node_name: "test-node".into(),
        source: Some(pb::Endpoint {
            identity: 300,
            namespace: "shop".into(),
            pod_name: "client".into(),
            labels: vec!["k8s:app=client".into()],
            ..Default::default()
        }),
        destination: Some(pb::Endpoint {
            identity: 301,
            namespace: "shop".into(),
            pod_name: "web".into(),
            ..Default::default()
        }),
        event_type: Some(pb::CiliumEventType {
            r#type: if dropped { 1 } else { 5 },
            sub_type: 0,
        }),
        summary: "TCP Flags: SYN".into(),
        is_reply: Some(false),
        ..Default::default()
    }
}

async fn start(ring: &FlowRing) -> ObserverClient<tonic::transport::Channel> {
    let listeners = Listeners::bind(Some("127.0.0.1:0".parse().expect("addr")), None)
        .await
        .expect("bind");
    let addr = listeners.tcp_addr().expect("tcp");
    let svc = ObserverService::new(ring.clone(), "test-node", &addr.to_string());
    tokio::spawn(serve(svc, listeners, None));
    let ch = client::connect(&addr.to_string(), Duration::from_secs(5))
        .await
        .expect("connect");
    ObserverClient::new(ch)
}

async fn collect(
    c: &mut ObserverClient<tonic::transport::Channel>,
    req: GetFlowsRequest,
) -> Vec<GetFlowsResponse> {
    let mut s = c.get_flows(req).await.expect("GetFlows").into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.expect("stream") {
        out.push(r);
    }
    out
}

fn uuids(rs: &[GetFlowsResponse]) -> Vec<String> {
    rs.iter()
        .map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => f.uuid.clone(),
            Some(ResponseTypes::LostEvents(l)) => format!("lost-{}", l.num_events_lost),
            _ => "?".into(),
        })
        .collect()
}

fn ring_with(n: i64) -> FlowRing {
    let ring = FlowRing::new(1000);
    for i in 0..n {
        ring.push_flow(flow(i));
    }
    ring
}

#[tokio::test]
async fn last_n_first_n_and_time_window() {
    let ring = ring_with(10);
    let mut c = start(&ring).await;
    let last = collect(
        &mut c,
        GetFlowsRequest {
            number: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(uuids(&last), ["flow-7", "flow-8", "flow-9"]);
    // Every response carries its flow's time and node.
    assert_eq!(last[0].node_name, "test-node");
    assert_eq!(last[0].time, Some(timestamp(T0 + 7 * SEC)));
    let first = collect(
        &mut c,
        GetFlowsRequest {
            number: 2,
            first: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(uuids(&first), ["flow-0", "flow-1"]);
    let window = collect(
        &mut c,
        GetFlowsRequest {
            number: 100,
            since: Some(timestamp(T0 + 4 * SEC)),
            until: Some(timestamp(T0 + 6 * SEC)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(uuids(&window), ["flow-4", "flow-5", "flow-6"]);
    // Filters: drops from shop/client only, last 2.
    let drops = collect(
        &mut c,
        GetFlowsRequest {
            number: 2,
            whitelist: vec![FlowFilter {
                verdict: vec![pb::Verdict::Dropped.into()],
                source_pod: vec!["shop/cli".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(uuids(&drops), ["flow-7", "flow-9"]);
}

#[tokio::test]
async fn first_with_follow_and_bad_filters_are_invalid_arguments() {
    let ring = ring_with(1);
    let mut c = start(&ring).await;
    let err = c
        .get_flows(GetFlowsRequest {
            first: true,
            follow: true,
            number: 1,
            ..Default::default()
        })
        .await
        .expect_err("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    let bad = GetFlowsRequest {
        whitelist: vec![FlowFilter {
            protocol: vec!["gre".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = c.get_flows(bad).await.expect_err("rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("gre"), "{}", err.message());
}

#[tokio::test]
async fn default_cli_field_mask_keeps_what_compact_output_needs() {
    let ring = ring_with(2);
    let mut c = start(&ring).await;
    let args = {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: client::ObserveArgs,
        }
        T::try_parse_from(["observe", "--last", "1"])
            .expect("parses")
            .a
    };
    let req = client::request(&args).expect("request");
    assert!(
        req.field_mask.is_some(),
        "compact output sends a field mask"
    );
    let rs = collect(&mut c, req).await;
    let Some(ResponseTypes::Flow(f)) = &rs[0].response_types else {
        panic!("a flow")
    };
    // Masked out: uuid and labels. Kept: what the compact line prints.
    assert!(f.uuid.is_empty());
    let src = f.source.as_ref().expect("source");
    assert!(src.labels.is_empty());
    assert_eq!((src.pod_name.as_str(), src.identity), ("client", 300));
    assert_eq!(f.summary, "TCP Flags: SYN");
    assert_eq!(f.verdict, pb::Verdict::Dropped as i32);
    assert_eq!(f.is_reply, Some(false));
    assert!(
        crate::flow::print::compact(f)
            .contains("shop/client (ID:300) -> shop/web (ID:301) Policy denied DROPPED")
    );
}

#[tokio::test]
async fn follow_streams_new_flows_and_lost_events_do_not_count() {
    let ring = ring_with(3);
    let mut c = start(&ring).await;
    // Lost events inside the selected span go along without counting toward `number`.
    ring.push_lost(lost_event(LostEventSource::PerfEventRingBuffer, 5));
    ring.push_flow(flow(3));
    let rs = collect(
        &mut c,
        GetFlowsRequest {
            number: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(uuids(&rs), ["flow-2", "lost-5", "flow-3"]);

    let mut s = c
        .get_flows(GetFlowsRequest {
            follow: true,
            whitelist: vec![FlowFilter {
                verdict: vec![pb::Verdict::Forwarded.into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    // number 0 with follow starts at the newest: nothing historic arrives.
    for i in 4..10 {
        ring.push_flow(flow(i));
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let r = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open");
        got.push(r);
    }
    assert_eq!(uuids(&got), ["flow-4", "flow-6", "flow-8"]);
}

#[tokio::test]
async fn status_nodes_namespaces_and_health() {
    let ring = ring_with(4);
    let mut c = start(&ring).await;
    let st = c
        .server_status(ServerStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!((st.num_flows, st.max_flows, st.seen_flows), (4, 1000, 4));
    assert_eq!(st.num_connected_nodes, Some(1));
    let nodes = c
        .get_nodes(GetNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name, "test-node");
    assert_eq!(
        nodes[0].state,
        crate::api::relay::NodeState::NodeConnected as i32
    );
    let ns = c
        .get_namespaces(GetNamespacesRequest {})
        .await
        .expect("namespaces")
        .into_inner()
        .namespaces;
    assert_eq!(
        ns.iter().map(|n| n.namespace.as_str()).collect::<Vec<_>>(),
        ["shop"]
    );
}

#[tokio::test]
async fn health_serving_over_the_unix_socket() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let dir = std::env::temp_dir().join(format!("catalyst-observer-test-{}", std::process::id()));
    let path = dir.join("hubble.sock");
    let ring = ring_with(1);
    let listeners = Listeners::bind(None, Some(&path)).await.expect("bind");
    tokio::spawn(serve(ObserverService::new(ring, "n", ""), listeners, None));
    let ch = client::connect(
        &format!("unix://{}", path.display()),
        Duration::from_secs(5),
    )
    .await
    .expect("connect");
    let h = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: super::HEALTH_SERVICE.into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(h.status, ServingStatus::Serving as i32);
    let rs = collect(
        &mut ObserverClient::new(ch),
        GetFlowsRequest {
            number: 5,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(uuids(&rs), ["flow-0"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Test PKI: a CA, a server certificate for `localhost` and a client certificate, as PEM files.
struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!("catalyst-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let write = |file: &str, text: String| std::fs::write(dir.join(file), text).expect("write");
        write("ca.pem", ca.pem());
        for (who, names) in [
            ("server", vec!["localhost".to_owned()]),
            ("client", vec!["observe-client".to_owned()]),
        ] {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &ca)
                .expect("signed");
            write(&format!("{who}.pem"), cert.pem());
            write(&format!("{who}-key.pem"), key.serialize_pem());
        }
        // A second, unrelated CA.
        let mut other = CertificateParams::new(Vec::<String>::new()).expect("params");
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other =
            CertifiedIssuer::self_signed(other, KeyPair::generate().expect("key")).expect("CA");
        write("other-ca.pem", other.pem());
        Self { dir }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.join(file)
    }

    fn server(&self, mutual: bool) -> crate::config::ObserverTlsConfig {
        crate::config::ObserverTlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            client_ca: mutual.then(|| self.path("ca.pem")),
        }
    }

    fn client(&self, addr: &str, ca: &str, with_cert: bool) -> client::ServerArgs {
        client::ServerArgs {
            tls: true,
            tls_ca_cert_files: vec![self.path(ca)],
            tls_server_name: Some("localhost".into()),
            tls_client_cert_file: with_cert.then(|| self.path("client.pem")),
            tls_client_key_file: with_cert.then(|| self.path("client-key.pem")),
            ..client::ServerArgs::plain(addr)
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_tls(ring: &FlowRing, tls: &crate::config::ObserverTlsConfig) -> String {
    let listeners = Listeners::bind(Some("127.0.0.1:0".parse().expect("addr")), None)
        .await
        .expect("bind");
    let addr = listeners.tcp_addr().expect("tcp").to_string();
    let svc = ObserverService::new(ring.clone(), "test-node", &addr);
    let tls = super::tls_config(tls).expect("TLS files load");
    tokio::spawn(serve(svc, listeners, Some(tls)));
    addr
}

/// Whether `ServerStatus` answers over `args` (connection and call both have to succeed).
async fn status_ok(args: &client::ServerArgs) -> bool {
    let Ok(ch) = args.connect().await else {
        return false;
    };
    ObserverClient::new(ch)
        .server_status(ServerStatusRequest {})
        .await
        .is_ok()
}

#[tokio::test]
async fn tls_serves_status_and_flows_and_refuses_plaintext() {
    let pki = Pki::new("server");
    let ring = ring_with(4);
    let addr = start_tls(&ring, &pki.server(false)).await;
    let args = pki.client(&addr, "ca.pem", false);
    let mut c = ObserverClient::new(args.connect().await.expect("TLS connect"));
    let st = c
        .server_status(ServerStatusRequest {})
        .await
        .expect("ServerStatus over TLS")
        .into_inner();
    assert_eq!(st.num_flows, 4);
    let rs = collect(
        &mut c,
        GetFlowsRequest {
            number: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(uuids(&rs), ["flow-2", "flow-3"]);
    // A plaintext client is refused.
    assert!(
        !status_ok(&client::ServerArgs::plain(&addr)).await,
        "plaintext must be refused"
    );
    // A client that does not trust the server's CA is refused.
    assert!(!status_ok(&pki.client(&addr, "other-ca.pem", false)).await);
    // The wrong server name does not verify.
    let wrong_name = client::ServerArgs {
        tls_server_name: Some("not-the-agent".into()),
        ..pki.client(&addr, "ca.pem", false)
    };
    assert!(!status_ok(&wrong_name).await);
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new("mutual");
    let ring = ring_with(1);
    let addr = start_tls(&ring, &pki.server(true)).await;
    assert!(
        status_ok(&pki.client(&addr, "ca.pem", true)).await,
        "client certificate accepted"
    );
    assert!(
        !status_ok(&pki.client(&addr, "ca.pem", false)).await,
        "no client certificate: refused"
    );
}

#[test]
fn tls_flags_without_tls_are_an_error_and_unix_sockets_stay_plaintext() {
    let args = client::ServerArgs {
        tls_server_name: Some("x".into()),
        ..client::ServerArgs::plain("127.0.0.1:4244")
    };
    assert!(args.tls_config().is_err());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let unix = client::ServerArgs {
        tls: true,
        ..client::ServerArgs::plain("unix:///nonexistent.sock")
    };
    let err = rt
        .block_on(unix.connect())
        .expect_err("TLS over a UNIX socket");
    assert!(err.to_string().contains("UNIX"), "{err}");
}

#[test]
fn unreadable_tls_files_are_named() {
    let err = super::tls_config(&crate::config::ObserverTlsConfig {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
        client_ca: None,
    })
    .expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

#[tokio::test]
async fn reflection_lists_the_observer_and_health_services() {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let ring = ring_with(1);
    let listeners = Listeners::bind(Some("127.0.0.1:0".parse().expect("addr")), None)
        .await
        .expect("bind");
    let addr = listeners.tcp_addr().expect("tcp").to_string();
    tokio::spawn(serve(
        ObserverService::new(ring, "n", &addr),
        listeners,
        None,
    ));
    let ch = client::connect(&addr, Duration::from_secs(5))
        .await
        .expect("connect");
    let ask = |m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = tokio_stream::iter([
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "observer.Observer".into(),
        )),
    ]);
    let mut answers = ServerReflectionClient::new(ch)
        .server_reflection_info(requests)
        .await
        .expect("reflection")
        .into_inner();
    let Some(Ok(list)) = answers.next().await else {
        panic!("no answer to ListServices");
    };
    let Some(MessageResponse::ListServicesResponse(list)) = list.message_response else {
        panic!("unexpected answer {list:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["observer.Observer", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let Some(Ok(file)) = answers.next().await else {
        panic!("no answer to FileContainingSymbol");
    };
    let Some(MessageResponse::FileDescriptorResponse(fd)) = file.message_response else {
        panic!("unexpected answer {file:?}");
    };
    assert!(!fd.file_descriptor_proto.is_empty());
}

/// An HTTP/2 frame: 9-byte header and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK literal (without indexing) whose name is static-table entry `index`, or a new
/// name when `index` is 0; no Huffman coding.
fn hpack_literal(index: u8, name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![index];
    if index == 0 {
        b.push(u8::try_from(name.len()).expect("short"));
        b.extend(name.as_bytes());
    }
    b.push(u8::try_from(value.len()).expect("short"));
    b.extend(value.as_bytes());
    b
}

/// What a gRPC C-core client (grpcio) sends on `unix:///…/hubble.sock`: the socket path,
/// percent-encoded, as `:authority`. h2 alone resets such a stream (`PROTOCOL_ERROR`) before
/// tonic sees it; the agent answers it as any other request.
#[tokio::test]
async fn percent_encoded_authority_over_the_unix_socket() {
    use futures_util::StreamExt as _;
    use h2::frame::Frame;
    use tokio::io::AsyncWriteExt as _;

    let dir = std::env::temp_dir().join(format!(
        "catalyst-observer-authority-{}",
        std::process::id()
    ));
    let path = dir.join("hubble.sock");
    let listeners = Listeners::bind(None, Some(&path)).await.expect("bind");
    tokio::spawn(serve(
        ObserverService::new(ring_with(1), "n", ""),
        listeners,
        None,
    ));
    let authority = path.display().to_string().replace('/', "%2F");
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    block.extend(hpack_literal(1, "", &authority));
    block.extend(hpack_literal(4, "", "/grpc.health.v1.Health/Check"));
    block.extend(hpack_literal(0, "content-type", "application/grpc"));
    block.extend(hpack_literal(0, "te", "trailers"));
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(h2_frame(4, 0, 0, &[])); // SETTINGS
    wire.extend(h2_frame(1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    wire.extend(h2_frame(0, 0x1, 1, &[0, 0, 0, 0, 0])); // DATA: empty HealthCheckRequest
    let mut sock = tokio::net::UnixStream::connect(&path)
        .await
        .expect("connect");
    sock.write_all(&wire).await.expect("write");
    // h2's codec decodes the answer (HPACK included).
    let mut codec = h2::Codec::from(sock);
    let (mut status, mut body, mut grpc_status) = (None, Vec::new(), None);
    let answer = async {
        while let Some(frame) = codec.next().await {
            match frame.expect("frame") {
                Frame::Settings(s) if !s.is_ack() => {
                    codec
                        .buffer(Frame::Settings(h2::frame::Settings::ack()))
                        .expect("ack");
                    std::future::poll_fn(|cx| codec.flush(cx))
                        .await
                        .expect("flush");
                }
                Frame::Headers(h) => {
                    let end = h.is_end_stream();
                    let (pseudo, fields) = h.into_parts();
                    status = status.or(pseudo.status);
                    if let Some(s) = fields.get("grpc-status") {
                        grpc_status = Some(s.to_str().expect("ascii").to_owned());
                    }
                    if end {
                        return;
                    }
                }
                Frame::Data(d) => body.extend_from_slice(d.payload()),
                Frame::Reset(r) => panic!("stream reset: {:?}", r.reason()),
                Frame::GoAway(g) => panic!("connection closed: {:?}", g.reason()),
                _ => {}
            }
        }
        panic!("connection ended before the answer");
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("an answer within 10 s");
    assert_eq!(status.map(|s| s.as_u16()), Some(200));
    assert_eq!(grpc_status.as_deref(), Some("0"));
    // HealthCheckResponse { status: SERVING }
    assert_eq!(body, [0, 0, 0, 0, 2, 0x08, 0x01]);
    let _ = std::fs::remove_dir_all(&dir);
}
