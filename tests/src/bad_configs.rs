//! The shared check behind each binary's `tests/bad-configs/`: every file is refused at start
//! with exit status 1 and an error that names the field (`# expect:` at the top of the file)
//! with the message (`# message:`).

use std::path::Path;
use std::process::Command;

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
        let out = Command::new(binary)
            .args(["run", "--config"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
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
