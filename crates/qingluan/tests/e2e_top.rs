//! `qingluan top` end to end, driven like a user in a terminal: tmux (a server of the test's
//! own) runs a shell, the test types the command and keys with `send-keys` and reads the
//! screen with `capture-pane`. One container streams UDP to another, so sorting by transmit
//! and by receive give different first rows; `q` gives the shell back in its normal mode.
//! Without a terminal, `top` prints one line per refresh.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A private tmux server with one session running `sh`; killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start() -> Tmux {
        let socket = format!("qlt-top-{}", std::process::id());
        ok(
            "tmux",
            &[
                "-L",
                &socket,
                "new-session",
                "-d",
                "-s",
                "qlt",
                "-x",
                "200",
                "-y",
                "40",
                "sh",
            ],
        );
        Tmux { socket }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["-L", &self.socket, "send-keys", "-t", "qlt"];
        args.extend_from_slice(keys);
        ok("tmux", &args);
    }

    fn screen(&self) -> String {
        ok(
            "tmux",
            &["-L", &self.socket, "capture-pane", "-p", "-t", "qlt"],
        )
    }

    /// Waits until the screen satisfies `f`; panics with the screen after 15 s.
    fn wait(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let seen = wait_for(Duration::from_secs(15), || {
            last = self.screen();
            f(&last)
        });
        assert!(seen, "{what}; the screen:\n{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The row index of `name` among the screen's lines.
fn row_of(screen: &str, name: &str) -> Option<usize> {
    screen.lines().position(|l| l.starts_with(name))
}

#[test]
fn top_shows_sorts_and_quits_cleanly() {
    if !enabled("top_shows_sorts_and_quits_cleanly") {
        return;
    }
    let env = Env::new();
    env.create_network("qlt-top", &["--opt", "model=nat", "--ipam-opt", "pool=nat"]);
    start_sleepers("qlt-top", &["qlt-tp-a", "qlt-tp-b"]);
    let b = ip_of("qlt-tp-b", "qlt-top");
    let pid_a = pid_of("qlt-tp-a");
    // About 1 Mbit/s of UDP from a to b; b answers with (rate-limited) port unreachables.
    let _stream = Guard(
        Command::new("nsenter")
            .args([
                "-t",
                pid_a.trim(),
                "-n",
                "python3",
                "-c",
                "import socket, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nwhile True:\n    s.sendto(bytes(1200), (sys.argv[1], 9))\n    time.sleep(0.01)\n",
                &b,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("udp stream"),
    );

    let tmux = Tmux::start();
    tmux.keys(&[
        &format!(
            "{} --config {} top --interval 500ms",
            env!("CARGO_BIN_EXE_qingluan"),
            env.config().display()
        ),
        "Enter",
    ]);
    let screen = tmux.wait("top shows both containers, the sender first", |s| {
        s.contains("sort: tx")
            && matches!((row_of(s, "qlt-tp-a"), row_of(s, "qlt-tp-b")), (Some(a), Some(b)) if a < b)
    });
    assert!(screen.contains("CONTAINER"), "{screen}");
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with("qlt-tp-a") && (l.contains("Mbit/s") || l.contains("kbit/s"))),
        "the sender's rate: {screen}"
    );

    tmux.keys(&["r"]);
    tmux.wait("sorted by receive, the receiver comes first", |s| {
        s.contains("sort: rx")
            && matches!((row_of(s, "qlt-tp-a"), row_of(s, "qlt-tp-b")), (Some(a), Some(b)) if b < a)
    });
    tmux.keys(&["n"]);
    tmux.wait("filtered to the one network", |s| {
        s.contains("network: qlt-top")
    });

    tmux.keys(&["q"]);
    tmux.wait("q leaves the full screen", |s| !s.contains("CONTAINER"));
    // A shell line only runs if the terminal is back in its normal (cooked) mode.
    tmux.keys(&["echo restored-$((20+22))", "Enter"]);
    tmux.wait("the shell answers in a restored terminal", |s| {
        s.contains("restored-42")
    });

    // Without a terminal: one line per refresh.
    let out = env.qingluan(&["top", "--interval", "300ms", "-n", "2"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("qlt-tp-a tx=") && l.contains("qlt-tp-b tx=")),
        "{out}"
    );
    let bad = env.cli(&["top", "--interval", "fast"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid interval"),
        "{bad:?}"
    );
}
