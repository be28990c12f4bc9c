//! CSV import: columns by header, BOM and CRLF, bad rows by line, strict mode, re-import.

use tangazo::config::{Config, Overrides};
use tangazo::domain::{Audience, Channel, Locale, RecipientId};
use tangazo::import::{ImportError, RowRules, import_csv, validate_csv};

use crate::helpers::{TestDb, utc};

const GOOD_AND_BAD: &str = "\u{feff}name,kind,phone,email,locale,zone,components,channels,opt_out,notes\r\n\
Jane Wanjiku,customer,0712345678,,sw,,,,,vip\r\n\
Kenya Power,biller,,outages@kplc.example.co.ke,en,Africa/Nairobi,pay-bill;partner-api,email;webhook,,\r\n\
Bad Phone,customer,12345,,en,,,,,\r\n\
No Address,customer,,,en,,,,,\r\n\
Bad Zone,customer,0712000001,,en,Mars/Base,,,,\r\n\
Bad Component,customer,0712000002,,en,,lottery,,,\r\n\
Webhook Customer,customer,0712000003,,en,,,webhook,,\r\n\
Bad Email,customer,,jane@@x,en,,,,,\r\n\
,customer,0712000004,,en,,,,,\r\n\
Bad Locale,customer,0712000005,,fr,,,,,\r\n\
Short Row,customer,0712000006\r\n";

fn rules(config: &Config) -> RowRules<'_> {
    RowRules {
        default_zone: config.default_zone,
        components: &config.components,
    }
}

#[tokio::test]
async fn bad_rows_are_reported_by_line_and_skipped() {
    let db = TestDb::sqlite().await;
    let config = Config::defaults(&Overrides::default()).unwrap();
    let report = import_csv(
        &db.store,
        GOOD_AND_BAD.as_bytes(),
        &rules(&config),
        utc(2015, 4, 1, 0, 0),
        &mut |_| {},
    )
    .await
    .unwrap();
    let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        (report.rows, report.imported, report.updated, report.rejected),
        (11, 2, 0, 9),
        "{errors:#?}"
    );
    let expect = [
        (4, "phone"),
        (5, "a phone or an email is required"),
        (6, "Mars/Base"),
        (7, "lottery"),
        (8, "webhook is for billers only"),
        (9, "email"),
        (10, "name is required"),
        (11, "locale 'fr'"),
        (12, "3 fields, but the header has 10"),
    ];
    for ((line, needle), got) in expect.iter().zip(&errors) {
        assert!(
            got.starts_with(&format!("line {line}:")) && got.contains(needle),
            "{got} (wanted line {line}: {needle})"
        );
    }
    let all = db
        .store
        .recipients_page(None, RecipientId(0), 10)
        .await
        .unwrap()
        .recipients;
    let jane = &all[0].profile;
    assert_eq!(
        (jane.name.as_str(), jane.locale, jane.phone.as_ref().unwrap().as_str()),
        ("Jane Wanjiku", Locale::Sw, "+254712345678")
    );
    let kplc = &all[1].profile;
    assert_eq!(kplc.kind, Audience::Biller);
    assert_eq!(kplc.channels, [Channel::Email, Channel::Webhook]);
    assert_eq!(all.len(), 2, "the short row is not imported");

    // The same file again adds nothing and finds the two good rows unchanged.
    let again = import_csv(
        &db.store,
        GOOD_AND_BAD.as_bytes(),
        &rules(&config),
        utc(2015, 4, 2, 0, 0),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        (again.imported, again.updated, again.unchanged, again.rejected),
        (0, 0, 2, 9)
    );
    assert_eq!(db.store.count_recipients().await.unwrap(), 2);
    db.finish().await;
}

/// A second row for the same recipient is reported against the first, in the same batch or
/// thousands of lines later; a changed row is an update; an opt-out in the store stays.
#[tokio::test]
async fn repeated_and_unchanged_rows_are_reported() {
    let db = TestDb::sqlite().await;
    let config = Config::defaults(&Overrides::default()).unwrap();
    let mut text = String::from("kind,name,phone\n");
    for i in 0..25_000 {
        text.push_str(&format!("customer,Person {i},07{:08}\n", 20_000_000 + i));
    }
    // Line 4 again at line 25,002 (another batch), and line 5 again right after it.
    text.push_str("customer,Person 2 again,0720000002\ncustomer,Person 3,0720000003\n");
    let now = utc(2015, 4, 1, 0, 0);
    let report = import_csv(&db.store, text.as_bytes(), &rules(&config), now, &mut |_| {})
        .await
        .unwrap();
    assert_eq!((report.imported, report.rejected), (25_000, 2), "{:?}", report.errors);
    let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "line 25002: the same recipient (phone, else email) as line 4: one row each; the first is kept",
            "line 25003: the same recipient (phone, else email) as line 5: one row each; the first is kept",
        ]
    );
    let page = db
        .store
        .recipients_page(None, RecipientId(2), 1)
        .await
        .unwrap()
        .recipients;
    assert_eq!(page[0].profile.name, "Person 2", "the first row is kept");
    // The same file with one name changed: one update, the rest unchanged, the repeats again.
    let changed = text.replacen("Person 7,", "Person Seven,", 1);
    let again = import_csv(&db.store, changed.as_bytes(), &rules(&config), now, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        (again.imported, again.updated, again.unchanged, again.rejected),
        (0, 1, 24_999, 2)
    );
    // Strict validation finds the repeats without the store.
    let strict = validate_csv(text.as_bytes(), &rules(&config)).unwrap();
    assert_eq!(strict.rejected, 2);
    db.finish().await;
}

#[test]
fn strict_validation_touches_nothing_and_lists_every_bad_row() {
    let config = Config::defaults(&Overrides::default()).unwrap();
    let report = validate_csv(GOOD_AND_BAD.as_bytes(), &rules(&config)).unwrap();
    assert_eq!((report.rows, report.rejected), (11, 9));
}

#[test]
fn a_header_without_required_columns_is_refused() {
    let config = Config::defaults(&Overrides::default()).unwrap();
    let err = validate_csv("name,phone\nJane,0712345678\n".as_bytes(), &rules(&config))
        .err()
        .unwrap();
    assert!(matches!(err, ImportError::Header(ref m) if m.contains("kind")), "{err}");
    let err = validate_csv("kind,name,locale\ncustomer,Jane,en\n".as_bytes(), &rules(&config))
        .err()
        .unwrap();
    assert!(err.to_string().contains("neither a phone nor an email"), "{err}");
}

#[test]
fn invalid_utf8_is_a_bad_row_not_a_crash() {
    let config = Config::defaults(&Overrides::default()).unwrap();
    let mut bytes = b"kind,name,phone\ncustomer,Jane,0712345678\ncustomer,".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b",0712345679\ncustomer,Joe,0712345670\n");
    let report = validate_csv(bytes.as_slice(), &rules(&config)).unwrap();
    assert_eq!((report.rows, report.rejected), (3, 1));
    assert!(
        report.errors[0].to_string().starts_with("line 3: not valid UTF-8"),
        "{:?}",
        report.errors
    );
}

#[test]
fn a_stray_quote_costs_its_line_only() {
    let config = Config::defaults(&Overrides::default()).unwrap();
    let mut text = String::from("kind,name,phone\n");
    for i in 0..1000 {
        let name = if i == 3 {
            "\"Unclosed, quote".to_owned()
        } else {
            format!("Person {i}")
        };
        text.push_str(&format!("customer,{name},07{:08}\n", 20_000_000 + i));
    }
    let report = validate_csv(text.as_bytes(), &rules(&config)).unwrap();
    assert_eq!((report.rows, report.rejected), (1000, 1), "{:?}", report.errors);
    assert_eq!(report.errors[0].line, 5);
    assert!(report.errors[0].reason.contains("quote"), "{:?}", report.errors);
}

#[test]
fn a_file_that_is_not_text_is_refused_whole() {
    let config = Config::defaults(&Overrides::default()).unwrap();
    // The start of a zip (an .xlsx saved as .csv).
    let zip = b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00kind,name,phone\n";
    let err = validate_csv(&zip[..], &rules(&config)).err().unwrap();
    assert!(matches!(err, ImportError::NotText(_)), "{err}");
    // A header in Latin-1.
    let err = validate_csv(&b"kind,n\xe4me,phone\n"[..], &rules(&config))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
}

#[test]
fn bad_values_are_quoted_short_and_text_is_held_to_its_limits() {
    let config = Config::defaults(&Overrides::default()).unwrap();
    let huge = "x".repeat(100_000);
    let text = format!(
        "kind,name,phone,email\ncustomer,{huge},0712345678,\ncustomer,Ann,0712345679,{huge}@x\ncustomer,Pay \u{202e}lib,0712345670,\ncustomer,Bell\u{7},0712345671,\n"
    );
    let report = validate_csv(text.as_bytes(), &rules(&config)).unwrap();
    let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(report.rejected, 4, "{errors:?}");
    assert!(errors.iter().all(|e| e.len() < 300), "{errors:?}");
    assert!(
        errors[0].contains("line 2: name is 100000 characters long"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("line 3: email") && errors[1].contains("100002 characters"),
        "{errors:?}"
    );
    assert!(errors[2].contains("bidirectional"), "{errors:?}");
    assert!(errors[3].contains("control character"), "{errors:?}");
}
