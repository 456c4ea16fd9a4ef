//! Zone files: the master-file reader and the zone builder (which compiles LUA records) must
//! return errors, never panic.
#![no_main]

use std::sync::Arc;

use catalyst_dns::{
    failover::FailoverState,
    health::{HealthConfig, Registry},
    zone::{ChunkJoin, Zone, ZoneSource, parser},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // $INCLUDE is resolved against the working directory; keep the fuzzer off the file system.
    if text.to_ascii_uppercase().contains("$INCLUDE") {
        return;
    }
    let Ok(raws) = parser::parse_str(text, "fuzz.test.") else { return };
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
