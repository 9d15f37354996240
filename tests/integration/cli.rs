//! The command line as a shell user meets it: completions that bash loads,
//! the man page `man` renders, and `--json` where scripts read the answer.

use std::process::Command;

use portmon_tests::portmon_bin;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn bash_loads_the_completions() {
    let script = format!(
        "source <('{}' completions bash) && complete -p portmon",
        portmon_bin().display()
    );
    let registered = run("bash", &["-c", &script]);
    assert!(
        registered.contains("-F _portmon") && registered.trim_end().ends_with(" portmon"),
        "{registered}"
    );
    for shell in ["zsh", "fish"] {
        let script = run(portmon_bin().to_str().unwrap(), &["completions", shell]);
        assert!(script.contains("portmon"), "{shell}: {script}");
    }
}

#[test]
fn man_renders_the_page_with_every_command() {
    let page = std::env::temp_dir().join(format!("portmon-{}.1", std::process::id()));
    std::fs::write(&page, run(portmon_bin().to_str().unwrap(), &["manpage"])).expect("write the page");
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("run man (man-db: cargo xtask setup installs it)");
    let _ = std::fs::remove_file(&page);
    let text = String::from_utf8_lossy(&out.stdout);
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "man -l: {warnings}");
    assert!(warnings.trim().is_empty(), "groff warnings: {warnings}");
    assert!(text.contains("portmon(1)") && text.contains("NAME"), "{text}");
    for command in ["portmon ports", "portmon check", "portmon registry update"] {
        assert!(text.contains(command), "{command} missing:\n{text}");
    }
    assert!(text.contains("--listening"), "{text}");
}

#[test]
fn registry_show_answers_in_json() {
    let services = "/etc/services";
    let out = run(
        portmon_bin().to_str().unwrap(),
        &["registry", "show", "--registry", services, "--json"],
    );
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(shown["path"], services, "{shown}");
    assert_eq!(shown["format"], "services", "{shown}");
    assert!(shown["entries"].as_u64().is_some_and(|n| n > 0), "{shown}");
}
