//! Every event the webhook backend can emit validates against the committed JSON Schema
//! (`templates/webhook-event-v1.schema.json`), checked by Python's `jsonschema` (a peer: `pip
//! install -r tests/peers/requirements.txt`).

use std::io::Write;
use std::process::{Command, Stdio};

use tangazo::config::{Config, Overrides};
use tangazo::domain::{Audience, Channel, Locale, NoticeKind, Rendered, Zone};
use tangazo::render::{NoticeFacts, Renderer};

/// Validates each JSON document (one per line) against the schema; returns the failures.
fn validate(events: &[serde_json::Value]) -> String {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/webhook-event-v1.schema.json");
    let script = "import json, sys, jsonschema\n\
                  schema = json.load(open(sys.argv[1]))\n\
                  v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())\n\
                  bad = [f'{i}: {e.message}' for i, line in enumerate(sys.stdin) for e in v.iter_errors(json.loads(line))]\n\
                  print('\\n'.join(bad))\n";
    let mut child = Command::new("python3")
        .args(["-c", script, schema])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    for e in events {
        writeln!(stdin, "{e}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the validator did not run (pip install -r tests/peers/requirements.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
#[ignore = "needs jsonschema: pip install -r tests/peers/requirements.txt; run with -- --include-ignored"]
fn every_window_event_validates_against_the_committed_schema() {
    let config = Config::defaults(&Overrides::default()).unwrap();
    let renderer = Renderer::load(None, "M-PESA", &config.components).unwrap();
    let mut events = Vec::new();
    for kind in NoticeKind::ALL {
        let mut facts = NoticeFacts::sample(kind, &config.components);
        for previous_differs in [true, false] {
            if !previous_differs {
                facts.previous = facts.schedule;
            }
            for locale in Locale::ALL {
                let Rendered::Webhook { mut payload } = renderer
                    .render(&facts, Audience::Biller, Channel::Webhook, locale, Zone::NAIROBI)
                    .unwrap()
                else {
                    panic!("not a webhook")
                };
                // The sender adds the timestamp of the attempt.
                payload["timestamp"] = "2015-04-10T06:00:00.000Z".into();
                events.push(payload);
            }
        }
    }
    assert_eq!(validate(&events), "", "every event is valid");
    // And the schema is not a rubber stamp: a broken event fails it.
    let mut broken = events[0].clone();
    broken["type"] = "window.exploded".into();
    broken["data"]["starts_at"] = "tomorrow".into();
    let failures = validate(&[broken]);
    assert!(
        failures.contains("window.exploded") && failures.contains("tomorrow"),
        "{failures}"
    );
}
