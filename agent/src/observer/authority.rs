//! Percent-encoded `:authority` on the UNIX socket.
//!
//! gRPC C-core clients (grpcio in Python, Ruby, C++) dialling `unix:///var/run/cilium/hubble.sock`
//! send the socket path, percent-encoded, as `:authority` (`%2Fvar%2Frun%2Fcilium%2Fhubble.sock`).
//! h2 parses `:authority` as an `tonic::codegen::http::uri::Authority`, which admits `%` only in a userinfo, and
//! resets the stream as malformed before hyper or tonic see the request. Rewriting the bytes of
//! the HEADERS frame in place is not possible (HPACK: Huffman coding and a dynamic table shared
//! by every header block of the connection), so each UNIX-socket connection goes through a
//! small proxy: the client's frames are decoded with h2's own frame codec (HPACK, CONTINUATION,
//! padding), an `:authority` that is not a valid URI authority becomes `localhost` (what
//! gRPC-Go sends on UNIX sockets), and the frames are re-encoded towards the server with a
//! fresh HPACK context; the server's frames are copied back unchanged. PRIORITY frames are
//! dropped (h2 ignores them and its encoder cannot write them).

use std::{future::poll_fn, io};

use futures_util::StreamExt as _;
use h2::{
    Codec,
    frame::{Frame, Pseudo},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream},
    net::UnixStream,
};

/// The client connection preface (`PRI * HTTP/2.0…`), passed through before the first frame.
const PREFACE_LEN: usize = 24;

/// Bytes buffered between the proxy and the server, each direction.
const PIPE: usize = 256 * 1024;

/// The server's end of a proxied UNIX-socket connection (the proxy runs until either side
/// closes).
pub(super) fn accept(client: UnixStream) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        if let Err(error) = proxy(client, theirs).await {
            tracing::debug!(%error, "observer UNIX-socket connection ended");
        }
    });
    ours
}

/// Replaces an `:authority` h2 would reject by `localhost`.
pub(super) fn fix_authority(p: &mut Pseudo) {
    if p.authority
        .as_ref()
        .is_some_and(|a| a.parse::<tonic::codegen::http::uri::Authority>().is_err())
    {
        p.authority = Pseudo::request(
            tonic::codegen::http::Method::POST,
            tonic::codegen::http::Uri::from_static("http://localhost"),
            None,
        )
        .authority;
    }
}

async fn proxy(client: UnixStream, server: DuplexStream) -> io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (sr, mut sw) = tokio::io::split(server);
    let down = async move {
        let mut sr = tokio::io::BufReader::with_capacity(PIPE / 4, sr);
        tokio::io::copy_buf(&mut sr, &mut cw).await?;
        cw.shutdown().await
    };
    let up = async move {
        let mut preface = [0u8; PREFACE_LEN];
        cr.read_exact(&mut preface).await?;
        sw.write_all(&preface).await?;
        let mut from = Codec::from(tokio::io::join(cr, tokio::io::sink()));
        let mut to = Codec::from(tokio::io::join(tokio::io::empty(), sw));
        while let Some(frame) = from.next().await {
            let frame = match frame.map_err(|e| io::Error::other(format!("{e:?}")))? {
                Frame::Priority(_) => continue,
                Frame::Headers(mut h) => {
                    fix_authority(h.pseudo_mut());
                    Frame::Headers(h)
                }
                f => f,
            };
            poll_fn(|cx| to.poll_ready(cx)).await?;
            to.buffer(frame)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            poll_fn(|cx| to.flush(cx)).await?;
        }
        poll_fn(|cx| to.shutdown(cx)).await
    };
    tokio::try_join!(up, down).map(|_| ())
}
