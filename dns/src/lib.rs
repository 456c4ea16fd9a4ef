//! catalyst-dns (work in progress).
#![forbid(unsafe_code)]
