//! The README opens with two commands a newcomer runs on a fresh machine. They must work exactly
//! as written on a fresh clone, so this test takes them from the README itself:
//! - the first (run the provider with the example config) is run in a fresh `git clone` of this
//!   repository; both listeners must greet, and SIGTERM must stop it cleanly;
//! - the second (run the tests) must be the command `.ci/run` runs.
//!
//! - the walkthrough of "Trying it on one machine" then runs against that provider, command by
//!   command as written (the example configs must work together out of the box).
//!
//! The example config listens on fixed loopback ports (a newcomer wants to know where to
//! connect), and this machine is shared, so the first command runs in network and mount
//! namespaces of its own (`unshare -nm`, root or user namespaces), where those ports are always
//! free and /tmp is private.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The first `sh` block of the README after `heading` (from the start for "").
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let after = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README.md has no {heading:?}"));
    readme[after..]
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("README.md has no ```sh block after {heading:?}"))
        .to_string()
}

/// The README's opening commands: the lines of its first `sh` block, comments stripped.
fn readme_commands() -> Vec<String> {
    readme_block("")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn readme_opens_with_the_two_commands_and_ci_runs_the_second() {
    let cmds = readme_commands();
    assert_eq!(
        cmds.len(),
        2,
        "the README's first block should hold exactly two commands: {cmds:?}"
    );
    assert!(
        cmds[0].starts_with("cargo run") && cmds[0].contains("server"),
        "the first command runs the provider: {:?}",
        cmds[0]
    );
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == cmds[1]),
        ".ci/run must run the README's test command {:?} exactly as written",
        cmds[1]
    );
}

/// A command prefix that runs its arguments in new network and mount namespaces, with loopback
/// up and a private /tmp, or the reason why it cannot.
fn isolated_network() -> Result<Vec<String>, String> {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("`ip` is not installed (Debian package iproute2)")?;
    // A /tmp of its own too: the walkthrough writes to a fixed place there (/tmp/odmr-mail).
    let script = format!("mount -t tmpfs tmpfs /tmp && {ip} link set lo up && exec \"$0\" \"$@\"");
    // As root plain namespaces; otherwise inside a user namespace, if allowed.
    for flags in ["-nm", "-rnm"] {
        let ok = Command::new("unshare")
            .args([flags, "sh", "-c", &script, "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(["unshare", flags, "sh", "-c", &script].map(String::from).to_vec());
        }
    }
    Err("cannot make network and mount namespaces here (`unshare -nm` needs root or user namespaces)".into())
}

#[test]
fn readme_first_command_runs_the_provider_from_a_fresh_clone() {
    let root = repo_root();
    if !root.join(".git").exists() {
        common::skip("not a git checkout: nothing to clone");
        return;
    }
    let Some(git) = common::peer("git", "git") else {
        return;
    };
    let Some(python) = common::peer("python3", "python3") else {
        return;
    };
    // The walkthrough sends its message with swaks.
    if common::peer("swaks", "swaks").is_none() {
        return;
    }
    let netns = match isolated_network() {
        Ok(prefix) => prefix,
        Err(why) => {
            common::skip(&why);
            return;
        }
    };
    let command = readme_commands().remove(0);

    // A fresh clone of what is committed. Its place and its target directory stay the same from
    // run to run, so a second run rebuilds only what changed.
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("readme");
    let clone = work.join("clone");
    let _ = std::fs::remove_dir_all(&clone);
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new(&git)
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(&root)
        .arg(&clone)
        .output()
        .expect("git clone");
    assert!(
        out.status.success(),
        "git clone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = work.join("target");

    // Build first, outside the namespace (cargo may need the network for a crate it lacks), so
    // that the command itself only has to start the binary.
    let build = Command::new("cargo")
        .args(["build", "--release"])
        .current_dir(&clone)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo build");
    assert!(
        build.status.success(),
        "`cargo build --release` in a fresh clone failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    // Where the example config says the provider listens and what it calls itself.
    let example: toml::Table = std::fs::read_to_string(clone.join("odmr.example.toml"))
        .unwrap()
        .parse()
        .expect("odmr.example.toml is TOML");
    let hostname = example["hostname"].as_str().expect("hostname").to_string();
    let mut addrs = Vec::new();
    for section in ["smtp", "odmr"] {
        for a in example[section]["listen"].as_array().expect("listen") {
            addrs.push(a.as_str().unwrap().to_string());
        }
    }

    let out = Command::new(&netns[0])
        .args(&netns[1..])
        .arg(&python)
        .arg(common::peers_dir().join("readme_probe.py"))
        .arg(&clone)
        .arg(&command)
        .arg(&hostname)
        .args(&addrs)
        .env("CARGO_TARGET_DIR", &target)
        // Everything is built: the command must not need the network (there is none here).
        .env("CARGO_NET_OFFLINE", "true")
        .env("README_TRIAL", readme_block("## Trying it on one machine"))
        .output()
        .expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the README's first command {command:?} in a fresh clone:\n{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    for a in &addrs {
        assert!(
            stdout.contains(&format!("{a}: 220 {hostname}")),
            "{a} did not greet:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("trial: ok"),
        "the walkthrough did not run:\n{stdout}"
    );
    assert!(stdout.contains("stopped"), "no clean stop logged:\n{stdout}");
}
