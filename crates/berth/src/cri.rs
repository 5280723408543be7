//! `berth cri`: the CRI runtime alone, on a unix socket, for a kubelet, `crictl` or the
//! node agent on another process.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::Global;

#[derive(Debug, Args)]
pub struct CriArgs {
    /// Where to serve: unix:///PATH.
    #[arg(long, default_value = "unix:///run/berth/cri.sock")]
    pub listen: String,
    /// Where the CNI network configuration lists are; the first by name is the pod network.
    #[arg(long = "cni-conf-dir", default_value = berth_net::cni::DEFAULT_CONF_DIR)]
    pub cni_conf_dir: PathBuf,
}

pub fn cri(global: &Global, args: CriArgs) -> Result<i32> {
    let socket = berth_cri::socket_path(&args.listen).map_err(anyhow::Error::msg)?;
    let node = berth_cri::Node::open(berth_cri::Config {
        root: global.root.clone(),
        cni_conf_dir: args.cni_conf_dir,
        exe: PathBuf::from("/proc/self/exe"),
        insecure_registries: global.insecure_registries.clone(),
        registries_config: Some(global.registries_config.clone()),
        cni_conf_template: None,
    })
    .map_err(anyhow::Error::msg)
    .context("cannot open the CRI state")?;
    let runtime = crate::server::async_runtime()?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                use tokio::signal::unix::{signal, SignalKind};
                if let (Ok(mut term), Ok(mut interrupt)) =
                    (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
                {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                    shutdown.cancel();
                }
            }
        });
        eprintln!("berth cri: serving CRI v1 on unix://{}", socket.display());
        let done = shutdown.clone();
        berth_cri::serve(Arc::new(node), &socket, async move { done.cancelled().await })
            .await
            .map_err(anyhow::Error::msg)?;
        // Containers keep running under their supervisors; nothing to stop here.
        Ok(0)
    })
}
