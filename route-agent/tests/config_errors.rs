//! Every file in `bad-configs/` is refused at start: non-zero exit, and an error naming the
//! field (`# expect:`) with the message (`# message:`) written at the top of the file.

use std::path::Path;
use std::process::Command;

#[test]
fn every_bad_config_names_its_field() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "only {} bad configs", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or_else(|| panic!("{}: no `# {key}:` line", file.display()))
                .to_string()
        };
        let (field, message) = (header("expect"), header("message"));
        let out = Command::new(env!("CARGO_BIN_EXE_liqonet-route-agent"))
            .args(["run", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = file.file_name().unwrap().to_string_lossy();
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{field}: ")))
            .unwrap_or_else(|| panic!("{name}: no error for {field}:\n{stderr}"));
        assert!(
            line.contains(&message),
            "{name}: {line:?} lacks {message:?}"
        );
    }
}
