//! `greenpool inspect`: ask workers like `celery inspect`.

use crate::control::{compile, remote, RemoteArgs};

/// Arguments of `greenpool inspect`.
#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The command: ping, stats, active, reserved, scheduled, revoked,
    /// registered, query_task, active_queues, conf, clock, report.
    command: String,
    /// The command's arguments (query_task: ids; registered: attributes).
    args: Vec<String>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Runs `greenpool inspect`.
pub(crate) fn run(a: InspectArgs) -> anyhow::Result<()> {
    let arguments = compile(&a.command, &a.args)?;
    remote(&a.remote, &a.command, arguments)
}
