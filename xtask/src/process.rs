//! Child processes that cannot outlive xtask.

use anyhow::{Context, Result};
use std::io::Read;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process that is stopped when the guard is dropped: SIGTERM, then SIGKILL after a grace
/// period.
pub(crate) struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub(crate) fn spawn(mut command: Command) -> Result<ChildGuard> {
        let child = command
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        Ok(ChildGuard { child: Some(child) })
    }

    /// The child's piped stdout and stderr, for a reader thread.
    pub(crate) fn take_output(&mut self) -> Vec<Box<dyn Read + Send>> {
        let mut out: Vec<Box<dyn Read + Send>> = Vec::new();
        if let Some(child) = self.child.as_mut() {
            if let Some(stdout) = child.stdout.take() {
                out.push(Box::new(stdout));
            }
            if let Some(stderr) = child.stderr.take() {
                out.push(Box::new(stderr));
            }
        }
        out
    }

    pub(crate) fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the child has exited.
    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Sends SIGTERM (a graceful stop) without waiting.
    pub(crate) fn terminate(&mut self) {
        self.signal("TERM");
    }

    /// Waits up to `grace` for the child to exit, then kills it. Returns its exit status.
    pub(crate) fn wait_or_kill(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }

    fn signal(&self, name: &str) {
        if let Some(pid) = self.id() {
            // Quiet: after a Ctrl-C in the terminal the node got the signal too and may be gone.
            let _ = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
            self.wait_or_kill(Duration::from_secs(5));
        }
    }
}
