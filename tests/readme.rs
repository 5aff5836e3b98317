//! The README's tutorials do what they say: every `sh` block under a
//! "Tutorial" heading is run, in order, against `tether sandbox` — the
//! README itself is the input, so the two cannot drift apart. The blocks'
//! claims are commands (`kubectl wait`, a loop until the target shows the
//! correction), so a block that runs to the end has done what it says.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `sh` blocks of the tutorials, with the heading each is under.
fn tutorial_blocks(readme: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut in_tutorial = false;
    let mut block: Option<String> = None;
    for line in readme.lines() {
        if let Some(text) = block.as_mut() {
            if line.trim_start().starts_with("```") {
                if in_tutorial {
                    blocks.push((heading.clone(), std::mem::take(text)));
                }
                block = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        if let Some(title) = line.strip_prefix("### ") {
            heading = title.to_owned();
            in_tutorial = title.starts_with("Tutorial");
        } else if line.starts_with("## ") {
            in_tutorial = false;
        } else if line.trim_start() == "```sh" {
            block = Some(String::new());
        }
    }
    blocks
}

/// A running `tether sandbox`, killed when dropped; its stderr lines.
struct Sandbox {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Sandbox {
    fn start(repo: &Path) -> Self {
        // setpriv --pdeathsig: the sandbox (and with it the control plane)
        // goes with this test, however it ends.
        let mut child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(env!("CARGO_BIN_EXE_tether"))
            .arg("sandbox")
            .arg("--repo")
            .arg(repo)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether sandbox starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `text`; returns it.
    fn wait_for(&mut self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("the sandbox never said {text:?}:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Everything it said since the last call.
    fn drain(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_tutorial_command_in_the_readme_does_what_it_says() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    let blocks = tutorial_blocks(&readme);
    let headings: std::collections::BTreeSet<&str> = blocks.iter().map(|(h, _)| h.as_str()).collect();
    assert!(
        headings.len() >= 4 && blocks.len() >= 8,
        "the tutorials were not found: {headings:?}"
    );

    let mut sandbox = Sandbox::start(&repo);
    let kubeconfig = sandbox.wait_for("export KUBECONFIG=", Duration::from_secs(900));
    let kubeconfig = kubeconfig
        .split_once("export KUBECONFIG=")
        .map(|(_, path)| path.trim().to_owned())
        .expect("the sandbox prints its kubeconfig");
    let kubectl = sandbox.wait_for("kubectl: ", Duration::from_secs(60));
    let kubectl = kubectl
        .split_once("kubectl: ")
        .map(|(_, path)| path.trim().to_owned())
        .expect("the sandbox prints its kubectl");
    sandbox.wait_for("every ExternalResource is Ready", Duration::from_secs(300));

    // What the README asks the reader to paste from the sandbox's output
    // is set here; the rest runs as written.
    let prelude = format!(
        "set -euo pipefail\nexport KUBECONFIG={kubeconfig}\nkubectl() {{ {kubectl} \"$@\"; }}\ncd {}\n",
        repo.display()
    );
    for (i, (heading, block)) in blocks.iter().enumerate() {
        let body: String = block
            .lines()
            .filter(|l| !l.starts_with("export KUBECONFIG=") && !l.starts_with("alias kubectl="))
            .map(|l| l.replace("target/debug/tether", env!("CARGO_BIN_EXE_tether")))
            .collect::<Vec<_>>()
            .join("\n");
        let out = Command::new("timeout")
            .args(["300", "bash", "-c"])
            .arg(format!("{prelude}{body}\n"))
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "block {} of \"{heading}\" failed ({}):\n{body}\n--- stdout\n{}\n--- stderr\n{}\n--- sandbox\n{}",
            i + 1,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            sandbox.drain()
        );
    }
}

#[test]
fn the_tutorial_blocks_are_found_under_their_headings() {
    let readme = "## Start\n```sh\nnot a tutorial\n```\n### Tutorial: one\ntext\n```sh\na\nb\n```\n\
                  ### Other\n```sh\nno\n```\n### Tutorial: two\n```sh\nc\n```\n## Install\n```sh\nno\n```\n";
    assert_eq!(
        tutorial_blocks(readme),
        vec![
            ("Tutorial: one".to_owned(), "a\nb\n".to_owned()),
            ("Tutorial: two".to_owned(), "c\n".to_owned())
        ]
    );
}
