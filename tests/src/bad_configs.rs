//! The shared check behind each binary's `tests/bad-configs/`: every file is refused at start
//! with exit status 1 and an error that names the field (`# expect:` at the top of the file)
//! with the message (`# message:`).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A bad config is refused at once; a binary still running after this accepted its file.
const REFUSAL: Duration = Duration::from_secs(10);

/// Runs `binary run --config FILE` in a network namespace of its own when root (a file that
/// turned out valid must not start a gateway on the host's network), killed after [`REFUSAL`].
fn run_config(binary: &str, file: &Path) -> Output {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { nix::libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new("unshare");
        c.args(["--net", "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    };
    let mut child = cmd
        .args(["run", "--config"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    let deadline = Instant::now() + REFUSAL;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().ok();
            let stderr = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            panic!(
                "{}: still running after {REFUSAL:?}, so it was accepted:\n{}",
                file.display(),
                stderr.unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{binary}: {e}"))
}

/// Runs `binary run --config FILE` on every `*.yaml` in `dir` (at least `min_files` of them);
/// `secret`, when given, must never appear in what the binary prints.
pub fn check_all(binary: &str, dir: &Path, min_files: usize, secret: Option<&str>) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= min_files,
        "only {} bad configs in {}",
        files.len(),
        dir.display()
    );
    for file in files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or_else(|| panic!("{name}: no `# {key}:` line"))
                .to_string()
        };
        let (field, message) = (header("expect"), header("message"));
        let out = run_config(binary, &file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{field}: ")))
            .unwrap_or_else(|| panic!("{name}: no error for {field}:\n{stderr}"));
        assert!(
            line.contains(&message),
            "{name}: {line:?} lacks {message:?}"
        );
        if let Some(secret) = secret {
            assert!(!stderr.contains(secret), "{name}: a secret was printed");
        }
    }
}
