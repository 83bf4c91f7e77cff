//! The target's process as conform's nemesis sees it (Jepsen style): started
//! by conform and killed with SIGKILL mid-case, or killed and restarted by a
//! command the user gives, and waited for until `/v1/health` answers again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::client::Target;

/// How long a (re)started target has to answer `/v1/health`, wall ms.
pub const HEALTHY_WAIT_MS: u64 = 60_000;

/// How conform may kill and restart the target process.
#[derive(Debug, Clone, Default)]
pub struct ProcessControl {
    /// A shell command (`sh -c`) that runs the target in the foreground:
    /// conform starts it before the first case, kills its process group with
    /// SIGKILL to crash it, starts it again, and kills it at the end.
    pub start_cmd: Option<String>,
    /// A shell command that kills and restarts the target (it returns once the
    /// old process is gone); conform then waits for `/v1/health`. With
    /// `start_cmd` too, this replaces the kill and start.
    pub restart_cmd: Option<String>,
    /// Where a started target's stdout and stderr go.
    pub log: PathBuf,
}

impl ProcessControl {
    /// Whether conform can crash the target at all.
    pub fn can_restart(&self) -> bool {
        self.start_cmd.is_some() || self.restart_cmd.is_some()
    }
}

/// The target process under conform's control; dropping it kills a process
/// conform started, on every path out.
#[derive(Debug)]
pub struct Nemesis {
    control: ProcessControl,
    child: Option<Child>,
    /// Restarts done.
    pub restarts: u64,
}

impl Nemesis {
    /// Start the target when conform runs it, and wait until it is healthy.
    pub async fn start(control: ProcessControl, target: &Target) -> anyhow::Result<Self> {
        let mut nemesis = Nemesis {
            control,
            child: None,
            restarts: 0,
        };
        if nemesis.control.start_cmd.is_some() {
            nemesis.spawn()?;
            nemesis
                .await_healthy(target)
                .await
                .context("the target started by --start-cmd")?;
        }
        Ok(nemesis)
    }

    /// Crash the target (SIGKILL to a started one, or the restart command),
    /// bring it back and wait until it answers `/v1/health`.
    pub async fn restart(&mut self, target: &Target) -> anyhow::Result<()> {
        if let Some(cmd) = &self.control.restart_cmd {
            let status = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(Stdio::null())
                .status()
                .with_context(|| format!("running --restart-cmd `{cmd}`"))?;
            anyhow::ensure!(
                status.success(),
                "--restart-cmd `{cmd}` failed ({status}): the target was not restarted"
            );
        } else {
            anyhow::ensure!(
                self.control.start_cmd.is_some(),
                "conform has neither --start-cmd nor --restart-cmd: it cannot restart the target"
            );
            self.kill();
            self.spawn()?;
        }
        self.restarts += 1;
        self.await_healthy(target)
            .await
            .context("the target after its restart")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt as _;
        let cmd = self.control.start_cmd.as_deref().unwrap_or_default();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.control.log)
            .with_context(|| format!("opening the target's log {}", self.control.log.display()))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("the target's log")?)
            .stderr(log)
            // Its own process group: the kill reaches whatever `sh -c` started.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting --start-cmd `{cmd}`"))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL to the started target's process group, and reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn await_healthy(&mut self, target: &Target) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                anyhow::bail!(
                    "the target exited ({status}) before answering /v1/health; its output is in {}",
                    self.control.log.display()
                );
            }
            match target.health().await {
                Ok(health) if health.status == "ok" => return Ok(()),
                _ if started.elapsed() >= Duration::from_millis(HEALTHY_WAIT_MS) => {
                    anyhow::bail!(
                        "{} did not answer /v1/health within {} s",
                        target.base(),
                        HEALTHY_WAIT_MS / 1000
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        self.kill();
    }
}
