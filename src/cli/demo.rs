//! `tangazo demo`: the April 2015 M-PESA migration weekend, replayed on the embedded default.
//!
//! Everything goes through the real code paths: the CSV import, `window add`'s store call, the
//! scheduler's own tick over a simulated clock, the file outbox. Only the clock is simulated.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::{CliResult, bad_input, console};
use crate::app;
use crate::config::{Config, EXAMPLE, Overrides};
use crate::domain::{Localized, NewWindow, Schedule, Zone, parse_instant};
use crate::import::{RowRules, import_csv};
use crate::shutdown::CancellationToken;
use crate::storage::Store;

const MARKER: &str = ".tangazo-demo";

const FIRST: [&str; 16] = [
    "Wanjiku", "Otieno", "Achieng", "Kamau", "Njeri", "Mwangi", "Akinyi", "Kiprono", "Chebet", "Mutua", "Wambui",
    "Omondi", "Nyambura", "Kipchoge", "Atieno", "Barasa",
];
const LAST: [&str; 12] = [
    "Kariuki",
    "Odhiambo",
    "Njoroge",
    "Wekesa",
    "Kilonzo",
    "Mohamed",
    "Cheruiyot",
    "Ndungu",
    "Okoth",
    "Maina",
    "Langat",
    "Ali",
];

/// A small deterministic generator: the same demo every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn at(text: &str) -> CliResult<DateTime<Utc>> {
    parse_instant(text, Zone::NAIROBI).map_err(bad_input)
}

fn prepare(dir: &Path) -> CliResult<PathBuf> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !dir.join(MARKER).exists() && !empty {
            return Err(bad_input(anyhow::anyhow!(
                "{} exists and was not made by `tangazo demo`; choose another --dir",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the previous demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by `tangazo demo`; removed and rebuilt by the next run\n",
    )?;
    Ok(std::path::absolute(dir)?)
}

fn write_recipients(path: &Path, customers: u32) -> CliResult {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "kind,name,phone,email,locale,zone,components,channels,opt_out")?;
    let mut rng = Rng(0x2015_0418);
    for i in 0..customers {
        let first = FIRST[rng.below(FIRST.len() as u64) as usize];
        let last = LAST[rng.below(LAST.len() as u64) as usize];
        let phone = format!("07{:08}", 10_000_000 + u64::from(i));
        let email = if rng.below(10) < 4 {
            format!("{}.{}{i}@example.co.ke", first.to_lowercase(), last.to_lowercase())
        } else {
            String::new()
        };
        let locale = if rng.below(100) < 55 { "sw" } else { "en" };
        let zone = if rng.below(100) == 0 { "Europe/London" } else { "" };
        let components = if rng.below(10) == 0 { "pay-bill;buy-goods" } else { "" };
        let opt_out = if rng.below(100) < 3 { "true" } else { "" };
        writeln!(
            out,
            "customer,{first} {last},{phone},{email},{locale},{zone},{components},,{opt_out}"
        )?;
    }
    writeln!(
        out,
        "biller,Kenya Power,0722000001,outages@kplc.example.co.ke,en,Africa/Nairobi,pay-bill;partner-api,sms;email;webhook,"
    )?;
    writeln!(
        out,
        "biller,Nairobi Securities Exchange,,ops@nse.example.co.ke,en,Africa/Nairobi,bank-transfer;partner-api,email;webhook,"
    )?;
    writeln!(
        out,
        "biller,Frankfurt Partner Exchange,,noc@fpx.example.de,en,Europe/Berlin,partner-api,email;webhook,"
    )?;
    out.flush()?;
    Ok(())
}

pub async fn run(dir: &Path, customers: u32, json_out: bool) -> CliResult {
    let started = std::time::Instant::now();
    let dir = prepare(dir)?;
    let db = dir.join("tangazo.db");
    let outbox = dir.join("outbox");
    let config_text = EXAMPLE
        .replace(
            "database_url = \"sqlite://tangazo.db\"",
            &format!("database_url = {:?}", format!("sqlite://{}", db.display())),
        )
        .replace("dir = \"outbox\"", &format!("dir = {:?}", outbox.display().to_string()));
    let config_path = dir.join("tangazo.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::load(&config_path, true, std::iter::empty(), &Overrides::default()).map_err(bad_input)?;
    let store = Store::connect(config.database_url.expose()).await?;

    // The operator's week, in EAT.
    let announce = at("2015-04-10 09:00")?;
    let start = at("2015-04-18 00:00")?;
    let end = at("2015-04-19 23:59")?;
    let outage = (at("2015-04-14 20:00")?, at("2015-04-17 02:00")?);
    let confirmed = at("2015-04-19 21:40")?;
    let finish = at("2015-04-21 00:00")?;

    let csv = dir.join("recipients.csv");
    write_recipients(&csv, customers)?;
    let rules = RowRules {
        default_zone: config.default_zone,
        components: &config.components,
    };
    let file = std::io::BufReader::new(std::fs::File::open(&csv)?);
    let import = import_csv(&store, file, &rules, announce, &mut |_| {}).await?;

    let new = NewWindow {
        title: Localized {
            en: "M-PESA systems migration to Kenya".into(),
            sw: Some("Uhamisho wa mifumo ya M-PESA kwenda Kenya".into()),
        },
        description: Localized {
            en: "M-PESA is moving its systems from Germany to a new data centre in Kenya.".into(),
            sw: Some("M-PESA inahamisha mifumo yake kutoka Ujerumani kwenda kituo kipya cha data nchini Kenya.".into()),
        },
        components: config.components.keys().cloned().collect(),
        schedule: Schedule::new(start, end).map_err(bad_input)?,
        zone: Zone::NAIROBI,
        auto_complete: false,
    }
    .validate(announce)
    .map_err(bad_input)?;
    let window = store.create_window(new, announce, "demo-operator").await?;

    let scheduler = app::scheduler(&config, &store, &console(), "demo").map_err(bad_input)?;
    // The demo runs to its end: nothing cancels it.
    let never = CancellationToken::new();
    let step = TimeDelta::minutes(15);
    let mut now = announce;
    let mut ticks = 0u32;
    let mut completed = false;
    let mut timeline: Vec<String> = Vec::new();
    while now <= finish {
        if !completed && now >= confirmed {
            let w = store.window(window.id).await?;
            let next = w.complete(now).map_err(bad_input)?;
            store.save_change(&w, &next, "demo-operator", now).await?;
            completed = true;
            timeline.push(format!("{}  operator confirms the work is complete", eat(now)));
        }
        let in_outage = now >= outage.0 && now < outage.1;
        if in_outage {
            if now < outage.0 + step {
                timeline.push(format!(
                    "{}  the daemon's host goes down until {}",
                    eat(now),
                    eat(outage.1)
                ));
            }
        } else {
            let report = scheduler
                .tick(&crate::clock::Clock::Fixed(now), &never)
                .await
                .context("demo tick")?;
            ticks += 1;
            for t in &report.transitions {
                timeline.push(format!("{}  {t}", eat(now)));
            }
            for p in report.planned.iter().chain(&report.recorded) {
                timeline.push(format!("{}  {p}", eat(now)));
            }
            for a in &report.alarms {
                timeline.push(format!("{}  ALARM {}", eat(now), a.message));
            }
        }
        now += step;
    }
    scheduler.step_down().await.context("giving up the lead")?;

    let by_locale = store.locale_summary(window.id).await?;
    let log = store.notice_log(Some(window.id)).await?;
    let (bodies, deliveries) = store.sizes().await?;
    store.close().await;

    if json_out {
        let rows: Vec<_> = by_locale
            .iter()
            .map(|(n, c, l, s, k)| json!({"notice": n, "channel": c, "locale": l, "state": s, "count": k}))
            .collect();
        let out = json!({
            "dir": dir, "outbox": outbox, "recipients": import.rows - import.rejected, "ticks": ticks,
            "deliveries": rows, "notices": log, "bodies": bodies, "delivery_rows": deliveries,
            "seconds": started.elapsed().as_secs_f64(),
        });
        outln!("{}", serde_json::to_string_pretty(&out).context("encoding JSON")?);
        return Ok(());
    }

    outln!("Tangazo demo: the M-PESA migration weekend, 18-19 April 2015");
    outln!(
        "{} customers and 3 billers imported; window {} from {} to {}, announced {}",
        customers,
        window.id,
        eat(start),
        eat(end),
        eat(announce)
    );
    outln!(
        "\ntimeline ({} ticks of the daemon's scheduler, one every 15 simulated minutes):",
        ticks
    );
    for line in &timeline {
        outln!("  {line}");
    }
    outln!("\ndeliveries by notice, channel and locale:");
    outln!(
        "  {:<16} {:<8} {:<3} {:>7} {:>7} {:>7} {:>10}",
        "notice",
        "channel",
        "lc",
        "sent",
        "failed",
        "expired",
        "superseded"
    );
    let mut table: BTreeMap<(usize, String, String, String), BTreeMap<String, i64>> = BTreeMap::new();
    let mut order: BTreeMap<String, usize> = BTreeMap::new();
    for (notice, channel, locale, state, n) in &by_locale {
        let k = order.len();
        let pos = *order.entry(notice.clone()).or_insert(k);
        *table
            .entry((pos, notice.clone(), channel.clone(), locale.clone()))
            .or_default()
            .entry(state.clone())
            .or_default() += n;
    }
    for ((_, notice, channel, locale), counts) in &table {
        let get = |s: &str| counts.get(s).copied().unwrap_or(0);
        outln!(
            "  {notice:<16} {channel:<8} {locale:<3} {:>7} {:>7} {:>7} {:>10}",
            get("sent"),
            get("failed"),
            get("expired"),
            get("superseded")
        );
    }
    outln!("\nnotices recorded once rather than sent:");
    for l in &log {
        let why = match l.outcome.as_str() {
            "skipped" => "its time had passed when the window was announced",
            "superseded" => "the daemon was down when it fell due; the later reminder went instead",
            _ => "its deadline passed first",
        };
        outln!("  {:<14} {:<8} {:<10} ({why})", l.notice, l.audience, l.outcome);
    }
    outln!(
        "\n{deliveries} deliveries in the ledger share {bodies} stored bodies (one per notice, channel, locale and zone)."
    );
    outln!("\nwhat a customer read (the announcement, from the outbox):");
    for (channel, locale, text) in samples(&outbox)? {
        outln!("  {channel} [{locale}]: {text}");
    }
    outln!("\noutbox:   {}/{{sms,email,webhook}}.jsonl", outbox.display());
    outln!("database: {}", db.display());
    outln!(
        "look around: cargo run --release -- --config {} deliveries summary",
        config_path.display()
    );
    outln!("            (or `tangazo --config … ` once installed with `cargo install --path .`)");
    outln!("finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn eat(t: DateTime<Utc>) -> String {
    crate::render::format_instant(t, Zone::NAIROBI, crate::domain::Locale::En, false)
}

/// The first announcement SMS in each language and the first announcement email's subject, as
/// they were written to the outbox: (channel, locale, text).
fn samples(outbox: &Path) -> CliResult<Vec<(&'static str, String, String)>> {
    use std::io::BufRead as _;
    let mut found = Vec::new();
    for (channel, file, field, wanted) in [
        ("SMS", "sms.jsonl", "body", 2),
        ("email subject", "email.jsonl", "subject", 1),
    ] {
        let path = outbox.join(file);
        let reader =
            std::io::BufReader::new(std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?);
        let mut seen: Vec<String> = Vec::new();
        for line in reader.lines() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("reading {}", path.display()))?;
            let locale = v["locale"].as_str().unwrap_or_default().to_owned();
            if v["notice"] == "announced" && !seen.contains(&locale) {
                found.push((
                    channel,
                    locale.clone(),
                    v[field].as_str().unwrap_or_default().to_owned(),
                ));
                seen.push(locale);
                if seen.len() == wanted {
                    break;
                }
            }
        }
    }
    Ok(found)
}
