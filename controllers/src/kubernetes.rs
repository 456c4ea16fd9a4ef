//! tmp
pub async fn run(
    _cfg: crate::config::Config,
    _m: std::sync::Arc<crate::metrics::Metrics>,
    _s: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    anyhow::bail!("tmp")
}
