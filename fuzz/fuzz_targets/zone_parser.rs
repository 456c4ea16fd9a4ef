//! Zone files: the master-file reader and the zone builder (which compiles LUA records) return
//! errors, never panic; an error names the line it is on; and what the reader accepts round-trips:
//! the records written back as master-file text (explicit `$ORIGIN`, owner, TTL, class, type,
//! RDATA tokens as read) read back as the same records.
#![no_main]

use std::{fmt::Write as _, sync::Arc};

use catalyst_dns::{
    failover::FailoverState,
    health::{HealthConfig, Registry},
    zone::{
        ChunkJoin, Zone, ZoneError, ZoneSource,
        parser::{self, RawRecord, Token},
    },
};
use libfuzzer_sys::fuzz_target;

/// A name or type the writer can put on a line as one bare word.
fn bare(s: &str) -> bool {
    !s.starts_with('$')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '(' | ')' | ';' | '\\'))
}

fn write(records: &[RawRecord]) -> Option<String> {
    let mut text = String::new();
    let mut origin = None;
    for r in records {
        if !bare(&r.owner) || !bare(&r.rtype) || !bare(&r.origin) {
            return None;
        }
        if origin != Some(&r.origin) {
            writeln!(text, "$ORIGIN {}", r.origin).ok()?;
            origin = Some(&r.origin);
        }
        write!(text, "{} {} IN {}", r.owner, r.ttl, r.rtype).ok()?;
        for t in &r.rdata {
            match t {
                Token::Word(w) => write!(text, " {w}").ok()?,
                Token::Quoted(q) => write!(text, " \"{q}\"").ok()?,
            }
        }
        text.push('\n');
    }
    Some(text)
}

fn key(r: &RawRecord) -> (&str, u32, &str, &[Token], &str) {
    (&r.owner, r.ttl, &r.rtype, &r.rdata, &r.origin)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // $INCLUDE is resolved against the working directory; keep the fuzzer off the file system.
    if text.to_ascii_uppercase().contains("$INCLUDE") {
        return;
    }
    let lines = text.split('\n').count();
    let raws = match parser::parse_str(text, "fuzz.test.") {
        Ok(raws) => raws,
        Err(ZoneError::Syntax { line, .. } | ZoneError::Record { line, .. }) => {
            assert!((1..=lines).contains(&line), "error line {line} of {lines}");
            return;
        }
        Err(e) => panic!("the reader returned an error without a line: {e}"),
    };
    for r in &raws {
        assert!(
            (1..=lines).contains(&r.line),
            "record line {} of {lines}",
            r.line
        );
    }
    if let Some(written) = write(&raws) {
        let again = parser::parse_str(&written, "fuzz.test.")
            .unwrap_or_else(|e| panic!("written zone does not read back: {e}\n{written}"));
        assert_eq!(
            raws.iter().map(key).collect::<Vec<_>>(),
            again.iter().map(key).collect::<Vec<_>>(),
            "round trip through\n{written}"
        );
    }
    let version = Arc::default();
    let mut next_id = 0;
    let _ = Zone::from_raw(
        raws,
        ZoneSource {
            origin: "fuzz.test.",
            file: std::path::Path::new("<fuzz>"),
            join: ChunkJoin::Concat,
            health: Arc::new(Registry::new(HealthConfig::default(), Arc::clone(&version))),
            geo: None,
            failover: Arc::new(FailoverState::new(version)),
            next_id: &mut next_id,
            strict: false,
            exec_limit: 1000,
        },
    );
});
