//! The daemon's logs as operators read them: plain text without ANSI colour codes when
//! stderr is not a terminal (the test's log file, journald), and with `log_format = "json"`
//! one JSON object per line; a bad format stops the start with a clear error.

mod common;

use common::*;

/// Creates and removes a network, so that the daemon logs something of its own.
fn some_work(env: &Env) {
    env.create_network("qlt-logs", &["--opt", "model=nat"]);
    docker(&["network", "rm", "qlt-logs"]);
}

#[test]
fn logs_are_plain_text_off_a_terminal_or_json_lines() {
    if !enabled("logs_are_plain_text_off_a_terminal_or_json_lines") {
        return;
    }
    let env = Env::new();
    some_work(&env);
    let log = env.log();
    assert!(log.contains("serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "no ANSI codes in a file: {log}");
    drop(env);

    let env = Env::with_daemon_config("log_format = \"json\"");
    some_work(&env);
    let log = env.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 3, "{log}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"serving\"")),
        "the start is logged: {log}"
    );
    // A refused call's warning names the network it was about.
    env.create_network_fails(
        "qlt-logs-bad",
        &["--opt", "model=nat", "--opt", "mtu=70000"],
    );
    let log = env.log();
    let refused: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "WARN" && v["fields"]["message"] == "refused")
        .collect();
    assert!(!refused.is_empty(), "no refused warning: {log}");
    assert!(
        refused.iter().any(|v| v["fields"]["network"]
            .as_str()
            .is_some_and(|n| n.len() == 12 && n.chars().all(|c| c.is_ascii_hexdigit()))),
        "the warning names the network: {refused:?}"
    );
    drop(env);

    let bad = run(
        env!("CARGO_BIN_EXE_qingluan"),
        &[
            "--config",
            "/nonexistent/qlt.toml",
            "daemon",
            "--log-format",
            "xml",
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("log format \"xml\" must be text or json"),
        "{err}"
    );
}
