#!/usr/bin/env python3
"""Writes a recipients CSV of N generated rows for the import check.

Usage: gen_recipients.py N OUT.csv [BAD]

Every 10,000th row (BAD rows in all, default N // 10000) is made invalid in a rotating way
(bad phone, bad email, unknown locale, no address), so the import must report exactly BAD
rejected rows by line. Phones are unique Kenyan numbers, so N good rows become N recipients.
"""
import sys


def main() -> None:
    n = int(sys.argv[1])
    out = sys.argv[2]
    every = 10_000
    bad_kinds = [
        ("customer", "Bad Phone", "12345", "", "en"),
        ("customer", "Bad Email", "", "not-an-email", "en"),
        ("customer", "Bad Locale", "0799000001", "", "fr"),
        ("customer", "No Address", "", "", "sw"),
    ]
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write("kind,name,phone,email,locale,zone,components,channels,opt_out\n")
        for i in range(n):
            if i % every == every - 1:
                kind, name, phone, email, locale = bad_kinds[(i // every) % len(bad_kinds)]
                f.write(f"{kind},{name},{phone},{email},{locale},,,,\n")
                continue
            phone = f"07{10_000_000 + i:08d}"
            email = f"c{i}@example.co.ke" if i % 3 == 0 else ""
            locale = "sw" if i % 2 else "en"
            components = "pay-bill;buy-goods" if i % 17 == 0 else ""
            opt_out = "true" if i % 101 == 0 else ""
            f.write(f"customer,Customer {i},{phone},{email},{locale},,{components},,{opt_out}\n")


if __name__ == "__main__":
    main()
