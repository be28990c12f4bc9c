"""Reads an iCalendar feed and an Atom feed with independent parsers (icalendar, feedparser)
and prints what they found as JSON, so the Rust test can compare it with what it expects.

usage: check_feeds.py CALENDAR.ics FEED.atom
"""
import json
import sys

import feedparser
import icalendar


def main(ics_path, atom_path):
    with open(ics_path, "rb") as f:
        cal = icalendar.Calendar.from_ical(f.read())
    events = []
    for ev in cal.walk("VEVENT"):
        events.append({
            "uid": str(ev.get("UID")),
            "sequence": int(ev.get("SEQUENCE")),
            "status": str(ev.get("STATUS")),
            "summary": str(ev.get("SUMMARY")),
            "description": str(ev.get("DESCRIPTION")),
            "start": ev.decoded("DTSTART").isoformat(),
            "end": ev.decoded("DTEND").isoformat(),
        })
    with open(atom_path, "rb") as f:
        feed = feedparser.parse(f.read())
    if feed.bozo:
        raise SystemExit(f"the Atom feed is not well formed: {feed.bozo_exception}")
    entries = [{
        "id": e.id,
        "title": e.title,
        "updated": e.updated,
        "category": e.tags[0].term if e.get("tags") else None,
    } for e in feed.entries]
    print(json.dumps({
        "calendar": {"prodid": str(cal.get("PRODID")), "events": events},
        "feed": {"title": feed.feed.title, "version": feed.version, "entries": entries},
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
