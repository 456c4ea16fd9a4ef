//! The full path over TCP: hickory-server owns the listeners and connections; this handler
//! resolves through the same catalog as the UDP path.

use std::{iter, net::IpAddr, sync::Arc};

use hickory_server::{
    net::runtime::Time,
    proto::op::{Header, HeaderCounts, Metadata, ResponseCode},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tracing::debug;

use super::message::{ParseFailure, parse_query, response_edns};
use crate::catalog::Catalog;

/// hickory-server request handler backed by the catalog.
pub struct CatalogHandler {
    catalog: Arc<Catalog>,
    local: IpAddr,
}

impl CatalogHandler {
    /// Handler for connections accepted on `local`.
    pub fn new(catalog: Arc<Catalog>, local: IpAddr) -> Self {
        Self { catalog, local }
    }
}

fn failed(md: &Metadata, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(md);
    metadata.response_code = rcode;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for CatalogHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let md = request.metadata;
        let q = match parse_query(request.as_slice()) {
            Ok(q) => q,
            Err(e) => {
                self.catalog.metrics.malformed.inc();
                let rcode = match e {
                    ParseFailure::Reply { rcode, .. } => rcode,
                    ParseFailure::Drop => ResponseCode::FormErr,
                };
                let builder = MessageResponseBuilder::new(&request.queries, None);
                let resp = builder.error_msg(&md, rcode);
                return response_handle
                    .send_response(resp)
                    .await
                    .unwrap_or_else(|_| failed(&md, rcode));
            }
        };
        let client = self.catalog.client(&q, request.src(), self.local, true);
        let r = self.catalog.resolve(&q, &client);
        self.catalog.metrics.query(r.rcode, q.query.query_type());
        let edns = response_edns(&q, r.ecs_scope);
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let mut metadata = Metadata::response_from_request(&md);
        metadata.authoritative = r.authoritative;
        metadata.response_code = r.rcode;
        let resp = builder.build(
            metadata,
            r.answers.iter(),
            r.authority.iter(),
            iter::empty(),
            r.additional.iter(),
        );
        match response_handle.send_response(resp).await {
            Ok(info) => info,
            Err(e) => {
                debug!(error = %e, "TCP response failed");
                failed(&md, ResponseCode::ServFail)
            }
        }
    }
}
