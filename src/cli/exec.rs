//! `replicate -exec CMD`: the application as walship's child. Started once every database's
//! replication runs (its read lock held), sent the SIGTERM/SIGINT walship gets, and its
//! exit ends replication; walship then exits with its code. Never touches a database, the
//! spool or the store.

use crate::error::{Error, Result};
use std::process::ExitStatus;

/// `CMD` split into words as a shell would (quotes, backslashes), without running a shell:
/// the signal walship forwards reaches the application itself.
pub fn words(cmd: &str) -> Result<Vec<String>> {
    let w = shlex::split(cmd).ok_or_else(|| {
        Error::Usage(format!(
            "exec {cmd:?}: unbalanced quotes or a trailing backslash"
        ))
    })?;
    if w.is_empty() {
        return Err(Error::Usage("exec: the command is empty".into()));
    }
    Ok(w)
}

/// The running application.
pub struct App {
    child: tokio::process::Child,
    name: String,
}

impl App {
    /// Start `words` with walship's environment and standard streams.
    pub fn start(words: &[String]) -> Result<App> {
        let child = tokio::process::Command::new(&words[0])
            .args(&words[1..])
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| Error::Usage(format!("exec: cannot start {:?}: {e}", words[0])))?;
        tracing::info!(
            target: "walship::replicate",
            pid = child.id(),
            "started the application: {}",
            words.join(" ")
        );
        Ok(App {
            child,
            name: words[0].clone(),
        })
    }

    /// Wait for the application to exit; a signal that arrives meanwhile is passed on to
    /// it, and then it is waited for.
    pub async fn wait(mut self, signal: impl std::future::Future<Output = i32>) -> ExitStatus {
        tokio::select! {
            st = self.child.wait() => return self.exited(st),
            sig = signal => {
                if let Some(pid) = self.child.id() {
                    tracing::info!(target: "walship::replicate", pid, sig, "passing the signal to the application");
                    // SAFETY: kill(2) on the child's pid, which we have not reaped yet.
                    unsafe { libc::kill(pid as i32, sig) };
                }
            }
        }
        let st = self.child.wait().await;
        self.exited(st)
    }

    fn exited(&self, st: std::io::Result<ExitStatus>) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        let st = st.unwrap_or_else(|e| {
            tracing::error!(target: "walship::replicate", "waiting for {}: {e}", self.name);
            ExitStatus::from_raw(1 << 8)
        });
        tracing::info!(target: "walship::replicate", "the application exited ({st}); shipping what is committed");
        st
    }
}

impl Drop for App {
    /// walship is stopping for its own reason (a lost lease): the application must not run
    /// on unreplicated.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            tracing::warn!(target: "walship::replicate", pid, "stopping the application (SIGTERM)");
            // SAFETY: kill(2) on the child's pid, which has not been reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
}

/// The exit code a shell would report for `st` (128 + the signal that ended it).
pub fn code(st: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => (128 + s) as u8,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            words(r#"node server.js --name "my app" 'x y'"#).unwrap(),
            ["node", "server.js", "--name", "my app", "x y"]
        );
        assert!(words("sh -c 'unterminated").is_err());
        assert!(words("   ").is_err());
    }
}
