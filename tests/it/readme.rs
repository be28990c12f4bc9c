//! The README's tour, run as written: every command of its `sh` block, top to bottom, with the
//! binary on the PATH, in a fresh folder with a `people.csv` and a `staff.csv`. A command whose
//! comment says "exit 2" must exit 2; every other must succeed.

use std::path::Path;
use std::process::Command;

/// The tour's commands: continuation lines joined, comments and blank lines dropped; each with
/// the exit code its comment promises.
fn tour() -> Vec<(String, i32)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme.split("## A tour").nth(1).expect("README has a tour");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the tour has an sh block");
    let mut commands = Vec::new();
    let mut current = String::new();
    let mut expect = 0;
    for line in block.lines() {
        let (code, comment) = match line.find(" #") {
            Some(i) => (&line[..i], &line[i..]),
            None if line.trim_start().starts_with('#') => ("", line),
            None => (line, ""),
        };
        if comment.contains("exit 2") {
            expect = 2;
        }
        let code = code.trim_end();
        if code.trim().is_empty() {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(code);
                commands.push((current.trim().to_owned(), expect));
                current.clear();
                expect = 0;
            }
        }
    }
    commands
}

fn people(dir: &Path) {
    let mut text = String::from("kind,name,phone,email,locale,zone,components,channels,opt_out\n");
    text.push_str("customer,Jane Wanjiku,0712345678,,sw,,,,\n");
    text.push_str("customer,John Otieno,0712345679,john@example.co.ke,en,,,,\n");
    for i in 0..30 {
        let locale = if i % 2 == 0 { "sw" } else { "en" };
        text.push_str(&format!(
            "customer,Customer {i},07{:08},,{locale},,,,\n",
            22_000_000 + i
        ));
    }
    text.push_str("customer,Bad Phone,12345,,en,,,,\n");
    text.push_str("biller,Kenya Power,,ops@kplc.example.co.ke,en,Africa/Nairobi,pay-bill,email;webhook,\n");
    text.push_str("biller,Nairobi Water,,ops@water.example.co.ke,en,Europe/Berlin,,email,\n");
    std::fs::write(dir.join("people.csv"), text).unwrap();
    std::fs::write(
        dir.join("staff.csv"),
        "kind,name,phone,email,locale,zone,components,channels,opt_out\n\
         biller,Ops desk,0799000111,ops-desk@example.co.ke,en,,,,\n",
    )
    .unwrap();
}

#[test]
fn the_tour_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    people(dir.path());
    let bin = Path::new(env!("CARGO_BIN_EXE_tangazo")).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut env: Vec<(String, String)> = Vec::new();
    let commands = tour();
    assert!(commands.len() > 25, "{} commands in the tour", commands.len());
    for (command, expect) in commands {
        if let Some(assignment) = command.strip_prefix("export ") {
            let (key, value) = assignment.split_once('=').unwrap();
            env.push((key.to_owned(), value.trim_matches('"').to_owned()));
            continue;
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&command)
            .current_dir(dir.path())
            .env("PATH", &path)
            .stdin(std::process::Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("TANGAZO_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let out = cmd.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(expect),
            "`{command}` exited {:?}:\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The story happened: the all-clear went out, and the cancelled window told those told.
    let sms = std::fs::read_to_string(dir.path().join("outbox/sms.jsonl")).unwrap();
    for notice in ["announced", "rescheduled", "started", "completed"] {
        assert!(sms.contains(&format!("\"notice\":\"{notice}\"")), "no {notice} SMS");
    }
}
