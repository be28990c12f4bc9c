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
        (11, 3, 0, 8),
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
    ];
    for ((line, needle), got) in expect.iter().zip(&errors) {
        assert!(
            got.starts_with(&format!("line {line}:")) && got.contains(needle),
            "{got} (wanted line {line}: {needle})"
        );
    }
    let all = db.store.recipients_page(None, RecipientId(0), 10).await.unwrap();
    let jane = &all[0].profile;
    assert_eq!(
        (jane.name.as_str(), jane.locale, jane.phone.as_ref().unwrap().as_str()),
        ("Jane Wanjiku", Locale::Sw, "+254712345678")
    );
    let kplc = &all[1].profile;
    assert_eq!(kplc.kind, Audience::Biller);
    assert_eq!(kplc.channels, [Channel::Email, Channel::Webhook]);
    assert_eq!(all[2].profile.name, "Short Row");

    // The same file again adds nothing and updates the three good rows.
    let again = import_csv(
        &db.store,
        GOOD_AND_BAD.as_bytes(),
        &rules(&config),
        utc(2015, 4, 2, 0, 0),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!((again.imported, again.updated, again.rejected), (0, 3, 8));
    assert_eq!(db.store.count_recipients().await.unwrap(), 3);
    db.finish().await;
}

#[test]
fn strict_validation_touches_nothing_and_lists_every_bad_row() {
    let config = Config::defaults(&Overrides::default()).unwrap();
    let report = validate_csv(GOOD_AND_BAD.as_bytes(), &rules(&config)).unwrap();
    assert_eq!((report.rows, report.rejected), (11, 8));
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
