//! The one system call std does not offer: a child process that dies with us.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child get SIGKILL when the thread that spawns it ends (the environment
/// spawns from a thread that lives as long as the process), so a killed test
/// process leaves no card process behind.
pub fn die_with_parent(cmd: &mut Command) {
    // The pid of the spawning process, to notice a parent that died before prctl.
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit); it touches no lock and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}
