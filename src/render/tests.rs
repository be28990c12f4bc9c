use super::*;
use crate::config::{Config, Overrides};
use crate::domain::Audience;
use crate::domain::{Encoding, Localized, Schedule};
use chrono::{TimeZone, Utc};

fn names() -> BTreeMap<ComponentId, ComponentNames> {
    Config::defaults(&Overrides::default()).unwrap().components
}

fn renderer() -> Renderer {
    Renderer::load(None, "M-PESA", &names()).unwrap()
}

#[test]
fn every_built_in_template_renders_in_both_locales() {
    let r = renderer();
    let report = r.check(&names());
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
    for kind in NoticeKind::ALL {
        let facts = NoticeFacts::sample(kind, &names());
        for locale in Locale::ALL {
            let Rendered::Sms {
                body,
                encoding,
                segments,
            } = r
                .render(&facts, Audience::Customer, Channel::Sms, locale, Zone::NAIROBI)
                .unwrap()
            else {
                panic!("sms")
            };
            assert!(body.starts_with("M-PESA:"), "{body}");
            assert_eq!(encoding, Encoding::Gsm7, "{kind} {locale}: {body}");
            assert!(segments <= 2, "{kind} {locale}: {segments} segments: {body}");
            assert!(!body.contains("{{"), "{body}");
            let Rendered::Email { subject, text, html } = r
                .render(&facts, Audience::Customer, Channel::Email, locale, Zone::NAIROBI)
                .unwrap()
            else {
                panic!("email")
            };
            assert!(!subject.is_empty() && !subject.contains('\n'), "{subject:?}");
            assert!(
                text.contains(&facts.title.get(locale).to_string())
                    || kind == NoticeKind::Completed
                    || !text.is_empty()
            );
            assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        }
    }
}

#[test]
fn swahili_is_swahili() {
    let r = renderer();
    let facts = NoticeFacts::sample(NoticeKind::Announced, &names());
    let Rendered::Sms { body, .. } = r
        .render(&facts, Audience::Customer, Channel::Sms, Locale::Sw, Zone::NAIROBI)
        .unwrap()
    else {
        panic!()
    };
    assert!(
        body.contains("Jumamosi 18 Aprili 00:00 hadi Jumapili 19 Aprili 23:59 EAT"),
        "{body}"
    );
    assert!(body.contains("Kutuma pesa"), "{body}");
    let Rendered::Sms { body, .. } = r
        .render(&facts, Audience::Customer, Channel::Sms, Locale::En, Zone::NAIROBI)
        .unwrap()
    else {
        panic!()
    };
    assert!(body.contains("Sat 18 Apr 00:00 to Sun 19 Apr 23:59 EAT"), "{body}");
}

#[test]
fn recipients_abroad_see_their_zone_and_the_window_zone() {
    let t = Utc.with_ymd_and_hms(2015, 4, 17, 21, 0, 0).unwrap();
    let berlin: Zone = "Europe/Berlin".parse().unwrap();
    assert_eq!(
        format_instant(t, berlin, Locale::En, true),
        "Fri 17 Apr 2015 23:00 CEST"
    );
    let r = renderer();
    let facts = NoticeFacts::sample(NoticeKind::Announced, &names());
    let Rendered::Email { text, .. } = r
        .render(&facts, Audience::Customer, Channel::Email, Locale::En, berlin)
        .unwrap()
    else {
        panic!()
    };
    assert!(text.contains("Fri 17 Apr 2015 23:00 CEST (Sat 00:00 EAT)"), "{text}");
}

#[test]
fn durations_in_words() {
    assert_eq!(duration_words(48 * 3600 - 60, Locale::En), "48 hours");
    assert_eq!(duration_words(48 * 3600 - 60, Locale::Sw), "saa 48");
    let hours = |h: f64| (h * 3600.0) as i64;
    for (secs, en, sw) in [
        (hours(1.0), "an hour", "saa moja"),
        (hours(1.5), "an hour and a half", "saa moja na nusu"),
        (hours(2.5), "2 and a half hours", "saa 2 na nusu"),
        (hours(1.25), "an hour and 15 minutes", "saa moja na dakika 15"),
        (hours(24.0), "24 hours", "saa 24"),
        (hours(72.0), "3 days", "siku 3"),
        (hours(168.0), "a week", "wiki moja"),
        (hours(183.0), "7 days and 15 hours", "siku 7 na saa 15"),
        (hours(336.0), "2 weeks", "wiki 2"),
        (1800, "30 minutes", "dakika 30"),
    ] {
        assert_eq!(duration_words(secs, Locale::En), en, "{secs} s");
        assert_eq!(duration_words(secs, Locale::Sw), sw, "{secs} s");
    }
}

#[test]
fn html_is_escaped_and_text_is_not() {
    let r = renderer();
    let mut facts = NoticeFacts::sample(NoticeKind::Announced, &names());
    facts.title = Localized {
        en: "Tom & Jerry <b>".into(),
        sw: None,
    };
    let Rendered::Email { subject, html, .. } = r
        .render(&facts, Audience::Customer, Channel::Email, Locale::En, Zone::NAIROBI)
        .unwrap()
    else {
        panic!()
    };
    assert!(subject.contains("Tom & Jerry <b>"), "{subject}");
    assert!(html.contains("Tom &amp; Jerry &lt;b&gt;"), "{html}");
}

#[test]
fn a_missing_variable_names_the_file_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in embedded::EMBEDDED {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, source).unwrap();
    }
    std::fs::write(dir.path().join("sw/started.sms.hbs"), "{{service}}: {{window.colour}}").unwrap();
    let r = Renderer::load(Some(dir.path()), "M-PESA", &names()).unwrap();
    let problems = r.check(&names()).problems;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let msg = problems[0].to_string();
    assert!(msg.contains("sw/started.sms.hbs"), "{msg}");
    assert!(msg.contains("window.colour"), "{msg}");

    std::fs::remove_file(dir.path().join("en/completed.email.html.hbs")).unwrap();
    let err = Renderer::load(Some(dir.path()), "M-PESA", &names()).unwrap_err();
    assert!(err.to_string().contains("en/completed.email.html.hbs"), "{err}");
}

#[test]
fn webhook_payload_is_versioned() {
    let facts = NoticeFacts::sample(NoticeKind::Reminder, &names());
    let p = webhook_payload(&facts, Locale::En).unwrap();
    assert_eq!(p["type"], "window.reminder");
    assert_eq!(p["data"]["notice"], "reminder:24h");
    assert_eq!(p["data"]["starts_at"], "2015-04-17T21:00:00Z");
    assert_eq!(p["data"]["starts_at_local"], "2015-04-18T00:00:00+03:00");
    assert_eq!(p["data"]["zone"], "Africa/Nairobi");
    assert_eq!(p["data"]["components"][0]["id"], "send-money");
}

#[test]
fn a_window_affecting_everything_says_so() {
    let r = renderer();
    let mut facts = NoticeFacts::sample(NoticeKind::Started, &names());
    facts.components = names().keys().cloned().collect();
    for (locale, phrase) in [
        (
            Locale::En,
            "Unavailable until Sun 19 Apr 23:59 EAT: all M-PESA services.",
        ),
        (Locale::Sw, "huduma zote za M-PESA"),
    ] {
        let Rendered::Sms { body, .. } = r
            .render(&facts, Audience::Customer, Channel::Sms, locale, Zone::NAIROBI)
            .unwrap()
        else {
            panic!()
        };
        assert!(body.contains(phrase), "{body}");
    }
}

#[test]
fn check_warns_about_ucs2_and_fails_over_the_segment_limit() {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in embedded::EMBEDDED {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, source).unwrap();
    }
    std::fs::write(
        dir.path().join("en/started.sms.hbs"),
        "{{service}}: we\u{2019}ve started",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sw/completed.sms.hbs"),
        "{{service}}: ".to_string() + &"imekamilika ".repeat(30),
    )
    .unwrap();
    let r = Renderer::load(Some(dir.path()), "M-PESA", &names())
        .unwrap()
        .with_sms_limit(2);
    let report = r.check(&names());
    assert_eq!(report.warnings.len(), 1, "{:#?}", report.warnings);
    assert!(
        report.warnings[0].contains("en/started.sms.hbs") && report.warnings[0].contains("U+2019"),
        "{}",
        report.warnings[0]
    );
    assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
    let msg = report.problems[0].to_string();
    assert!(
        msg.contains("sw/completed.sms.hbs") && msg.contains("3 segments") && msg.contains("limit of 2"),
        "{msg}"
    );
}

#[test]
fn an_extension_names_the_old_end_and_only_changes_carry_previous() {
    let r = renderer();
    let mut facts = NoticeFacts::sample(NoticeKind::Rescheduled, &names());
    // Extended by six hours: same start, later end.
    facts.previous = Schedule::new(facts.schedule.starts_at(), facts.schedule.ends_at()).unwrap();
    facts.schedule = Schedule::new(
        facts.schedule.starts_at(),
        facts.schedule.ends_at() + chrono::TimeDelta::hours(6),
    )
    .unwrap();
    for (locale, was) in [
        (Locale::En, "was until Sun 19 Apr 23:59)"),
        (Locale::Sw, "awali hadi Jumapili 19 Aprili 23:59)"),
    ] {
        let Rendered::Sms { body, .. } = r
            .render(&facts, Audience::Customer, Channel::Sms, locale, Zone::NAIROBI)
            .unwrap()
        else {
            panic!("not an SMS")
        };
        assert!(body.contains(was), "{body}");
    }
    // A moved start still says where it was.
    let moved = NoticeFacts::sample(NoticeKind::Rescheduled, &names());
    let Rendered::Sms { body, .. } = r
        .render(&moved, Audience::Customer, Channel::Sms, Locale::En, Zone::NAIROBI)
        .unwrap()
    else {
        panic!("not an SMS")
    };
    assert!(body.contains("was from Sat 11 Apr 00:00)"), "{body}");
    // The webhook says what it was before only for a change.
    assert!(
        webhook_payload(&facts, Locale::En).unwrap()["data"]
            .get("previous")
            .is_some()
    );
    let announced = NoticeFacts::sample(NoticeKind::Announced, &names());
    assert!(
        webhook_payload(&announced, Locale::En).unwrap()["data"]
            .get("previous")
            .is_none()
    );
}

#[test]
fn relative_times_are_true_when_sent() {
    let r = renderer();
    let mut facts = NoticeFacts::sample(NoticeKind::Reminder, &names());
    let start = facts.schedule.starts_at();
    for (late_by, en, sw) in [
        (0, "starts in 24 hours", "baada ya saa 24"),
        (5, "starts in 19 hours", "baada ya saa 19"),
        (23, "starts in an hour", "baada ya saa moja"),
    ] {
        facts.sent_at = start - chrono::TimeDelta::hours(24 - late_by);
        for (locale, phrase) in [(Locale::En, en), (Locale::Sw, sw)] {
            let Rendered::Sms { body, .. } = r
                .render(&facts, Audience::Customer, Channel::Sms, locale, Zone::NAIROBI)
                .unwrap()
            else {
                panic!("not an SMS")
            };
            assert!(body.contains(phrase), "{body}");
        }
    }
    // To the hour from two hours on, to five minutes below that.
    assert_eq!(
        lead_time(start - chrono::TimeDelta::minutes(19 * 60 + 31), start).to_string(),
        "20h"
    );
    assert_eq!(
        lead_time(start - chrono::TimeDelta::minutes(83), start).to_string(),
        "1h25m"
    );
    assert_eq!(
        lead_time(start + chrono::TimeDelta::minutes(5), start).to_string(),
        "0s"
    );
}

fn sms(r: &Renderer, facts: &NoticeFacts, audience: Audience, locale: Locale, zone: Zone) -> (String, usize) {
    match r.render(facts, audience, Channel::Sms, locale, zone).unwrap() {
        Rendered::Sms { body, segments, .. } => (body, segments),
        other => panic!("not an SMS: {other:?}"),
    }
}

/// The shipped customer SMS cost one segment in English and at most two in Swahili for a
/// window of three components (the three with the longest names) in the recipient's own zone,
/// whatever the lead time a reminder goes out with.
#[test]
fn shipped_customer_sms_are_one_segment_in_english_and_two_in_swahili() {
    let r = renderer();
    let names = names();
    for locale in Locale::ALL {
        let mut by_length: Vec<&ComponentId> = names.keys().collect();
        by_length.sort_by_key(|c| std::cmp::Reverse(names[*c].get(locale).chars().count()));
        let longest: Vec<ComponentId> = by_length.into_iter().take(3).cloned().collect();
        let max = match locale {
            Locale::En => 1,
            Locale::Sw => 2,
        };
        for kind in NoticeKind::ALL {
            let mut facts = NoticeFacts::sample(kind, &names);
            facts.components = longest.clone();
            let start = facts.schedule.starts_at();
            // Every lead time from a week down to the start, to five minutes.
            for minutes in (0..=7 * 24 * 60).step_by(5) {
                facts.sent_at = start - chrono::TimeDelta::minutes(minutes);
                let (body, segments) = sms(&r, &facts, Audience::Customer, locale, Zone::NAIROBI);
                assert!(
                    segments <= max,
                    "{kind} {locale}, {minutes} min ahead: {segments} segments, {} characters: {body}",
                    body.chars().count()
                );
                if kind != NoticeKind::Reminder {
                    break;
                }
            }
        }
    }
}

/// Billers and partners get a partner's notice: ids, revision, components by id and name, UTC
/// and local times, what to do; none of the customers' wording.
#[test]
fn a_billers_notice_has_none_of_the_customer_wording() {
    let r = renderer();
    let customer_words = [
        "Dear customer",
        "Ndugu mteja",
        "transact",
        "miamala",
        "apologise",
        "radhi",
        "patience",
        "uvumilivu",
    ];
    for kind in NoticeKind::ALL {
        let facts = NoticeFacts::sample(kind, &names());
        for locale in Locale::ALL {
            let (body, _) = sms(&r, &facts, Audience::Biller, locale, Zone::NAIROBI);
            let Rendered::Email { subject, text, html } = r
                .render(&facts, Audience::Biller, Channel::Email, locale, Zone::NAIROBI)
                .unwrap()
            else {
                panic!("not an email")
            };
            for part in [&body, &subject, &text, &html] {
                for word in customer_words {
                    assert!(!part.contains(word), "{kind} {locale}: '{word}' in {part}");
                }
            }
            assert!(
                body.contains("r2") && body.contains("send-money, withdraw, pay-bill"),
                "{body}"
            );
            assert!(
                body.contains("2015-04-17 21:00 UTC") && body.contains("00:00"),
                "{body}"
            );
            for needle in [
                "2015-04-17 21:00 UTC",
                "2015-04-19 20:59 UTC",
                "EAT",
                "send-money: ",
                "pay-bill: ",
            ] {
                assert!(text.contains(needle), "{kind} {locale}: no '{needle}' in {text}");
            }
            let todo = match locale {
                Locale::En => "What to do: ",
                Locale::Sw => "Mnachopaswa kufanya: ",
            };
            assert!(text.contains(todo), "{text}");
            assert!(
                text.contains(&format!(
                    "1, {} 2",
                    if locale == Locale::En { "revision" } else { "toleo" }
                )),
                "{text}"
            );
            assert!(html.contains("<code>send-money</code>"), "{html}");
        }
    }
}

/// A folder of templates without biller ones serves billers the customers' templates.
#[test]
fn biller_templates_fall_back_to_the_customers() {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in embedded::EMBEDDED {
        if name.contains("/biller/") {
            continue;
        }
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, source).unwrap();
    }
    let r = Renderer::load(Some(dir.path()), "M-PESA", &names()).unwrap();
    let facts = NoticeFacts::sample(NoticeKind::Announced, &names());
    assert_eq!(
        sms(&r, &facts, Audience::Biller, Locale::En, Zone::NAIROBI),
        sms(&r, &facts, Audience::Customer, Locale::En, Zone::NAIROBI)
    );
    assert!(r.check(&names()).problems.is_empty());
}

/// The check renders the worst case: a template set that passes for a typical window but would
/// overflow for a window of every component with long names, or that puts free text in an SMS,
/// fails it, naming the file.
#[test]
fn a_window_that_would_overflow_fails_the_check() {
    let mut long_names = names();
    for (i, n) in long_names.values_mut().enumerate() {
        n.en = format!("Component number {i} with a long name");
    }
    let r = Renderer::load(None, "M-PESA", &long_names).unwrap().with_sms_limit(2);
    let report = r.check(&long_names);
    assert!(
        report
            .problems
            .iter()
            .all(|p| matches!(p, RenderError::TooLongAtWorst { .. })),
        "{:#?}",
        report.problems
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().contains("en/announced.sms.hbs")),
        "{:#?}",
        report.problems
    );
    let row = report
        .segments
        .iter()
        .find(|s| s.audience == Audience::Customer && s.locale == Locale::En && s.notice == NoticeKind::Announced)
        .unwrap();
    assert!(row.typical <= 2 && row.worst > 2, "{row:?}");

    let dir = tempfile::tempdir().unwrap();
    for (name, source) in embedded::EMBEDDED {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, source).unwrap();
    }
    std::fs::write(
        dir.path().join("en/started.sms.hbs"),
        "{{service}}: {{window.title}} has started",
    )
    .unwrap();
    let r = Renderer::load(Some(dir.path()), "M-PESA", &names())
        .unwrap()
        .with_sms_limit(2);
    let problems = r.check(&names()).problems;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].to_string().contains("en/started.sms.hbs"),
        "{}",
        problems[0]
    );
    // The built-in set passes its own check.
    assert!(renderer().with_sms_limit(2).check(&names()).problems.is_empty());
}

/// The worst case is an upper bound: no real window renders longer than the check's worst case.
#[test]
fn the_worst_case_is_never_shorter_than_a_real_notice() {
    let r = renderer();
    let report = r.check(&names());
    let worst = |audience, locale, kind| {
        report
            .segments
            .iter()
            .find(|s| s.audience == audience && s.locale == locale && s.notice == kind)
            .map(|s| s.worst_body.chars().count())
            .unwrap()
    };
    let zones: Vec<Zone> = [
        "Africa/Nairobi",
        "Europe/Berlin",
        "America/Caracas",
        "Asia/Kathmandu",
        "Pacific/Chatham",
    ]
    .iter()
    .map(|z| z.parse().unwrap())
    .collect();
    let all: Vec<ComponentId> = names().keys().cloned().collect();
    for kind in NoticeKind::ALL {
        for components in [all.clone(), all[1..].to_vec()] {
            let mut facts = NoticeFacts::sample(kind, &names());
            facts.components = components;
            for zone in &zones {
                for audience in Audience::ALL {
                    for locale in Locale::ALL {
                        let (body, _) = sms(&r, &facts, audience, locale, *zone);
                        assert!(
                            body.chars().count() <= worst(audience, locale, kind),
                            "{audience} {locale} {kind} in {zone}: {body}"
                        );
                    }
                }
            }
        }
    }
}
