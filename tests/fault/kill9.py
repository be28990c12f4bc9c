#!/usr/bin/env python3
"""Fault injection: kill -9 the daemon at random moments during a large fan-out, then check
the ledger against the outbox.

    tests/fault/kill9.py --bin target/release/tangazo --store sqlite --kills 20
    tests/fault/kill9.py --bin target/release/tangazo --store postgres \\
        --postgres postgres://postgres@127.0.0.1:5432/test --kills 20

SQLite: one daemon, killed and restarted. PostgreSQL: two daemons on one database, each with
its own outbox folder, killed and restarted at random (a lapsed lease returns a dead daemon's
rows). The backend is paced (--rate) so the run outlasts the kills. Once the kills are done, a
daemon runs until nothing is pending or claimed, and the checker reads both sides and counts,
per delivery, how often it went out and whether each resend was flagged; it fails (exit 1) on
anything lost, left claimed, sent after its deadline, sent again unflagged, or more duplicates
than the batches that were in flight when the kills came.
"""
import argparse
import collections
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def sh(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


class Run:
    def __init__(self, opts):
        self.opts = opts
        self.dir = tempfile.mkdtemp(prefix="tangazo-kill9-")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TANGAZO_")}
        self.env["TANGAZO_LOG"] = "warn"
        self.daemons = 2 if opts.store == "postgres" else 1
        if opts.store == "postgres":
            admin = opts.postgres
            name = f"tangazo_kill9_{os.getpid()}"
            sh(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name}"])
            sh(["psql", admin, "-qc", f"CREATE DATABASE {name}"])
            self.cleanup_db = (admin, name)
            self.url = admin.rsplit("/", 1)[0] + "/" + name
        else:
            self.cleanup_db = None
            self.url = f"sqlite://{self.dir}/tangazo.db"
        self.env["TANGAZO_DATABASE_URL"] = self.url
        for d in range(self.daemons):
            with open(self.config(d), "w") as f:
                # No quiet hours: the drill runs at any hour and everyone's notice is due at once.
                f.write(
                    '[policy.customers]\nquiet_hours = "off"\n'
                    f'[senders.outbox]\ntype = "file"\ndir = "{self.outbox(d)}"\nrate = {opts.rate}\n'
                    f'[dispatch]\nbatch_size = {opts.batch}\nlease = "{opts.lease}"\ntick = "1s"\n'
                )

    def config(self, d):
        return os.path.join(self.dir, f"tangazo-{d}.toml")

    def outbox(self, d):
        return os.path.join(self.dir, f"outbox-{d}")

    def tangazo(self, d, *args):
        return sh([self.opts.bin, "--config", self.config(d), *args], env=self.env, cwd=self.dir)

    def start(self, d):
        log = open(os.path.join(self.dir, f"daemon-{d}.log"), "a")
        return subprocess.Popen(
            [self.opts.bin, "--config", self.config(d), "daemon", "--tick", "1"],
            env=self.env, cwd=self.dir, stdout=log, stderr=log,
        )

    def prepare(self):
        people = os.path.join(self.dir, "people.csv")
        with open(people, "w") as f:
            f.write("kind,name,phone,email,locale,zone,components,channels,opt_out\n")
            for i in range(self.opts.customers):
                f.write(f"customer,C {i},07{10_000_000 + i:08d},c{i}@example.co.ke,{'sw' if i % 2 else 'en'},,,,\n")
        self.tangazo(0, "recipients", "import", people)
        start = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3)
        self.window = self.tangazo(
            0, "window", "add", "--title", "Fault drill", "--components", "send-money",
            "--start", start.isoformat(timespec="seconds"),
            "--end", (start + datetime.timedelta(hours=6)).isoformat(timespec="seconds"),
        ).stdout.strip()

    def open_rows(self):
        summary = json.loads(self.tangazo(0, "--json", "deliveries", "summary", "--window", self.window).stdout)
        rows = summary["deliveries"]
        total = sum(r["count"] for r in rows)
        return total, sum(r["count"] for r in rows if r["state"] in ("pending", "claimed"))

    def drill(self):
        rng = random.Random(self.opts.seed)
        procs = [self.start(d) for d in range(self.daemons)]
        kills = 0
        while kills < self.opts.kills:
            time.sleep(rng.uniform(self.opts.min_up, self.opts.max_up))
            d = rng.randrange(self.daemons)
            procs[d].send_signal(signal.SIGKILL)
            procs[d].wait()
            kills += 1
            procs[d] = self.start(d)
        total, open_ = self.open_rows()
        print(f"{kills} kills done; {total} deliveries planned, {open_} still open; letting the daemons finish")
        deadline = time.time() + self.opts.finish_timeout
        while True:
            total, open_ = self.open_rows()
            if total >= self.expected() and open_ == 0:
                break
            if time.time() > deadline:
                for p in procs:
                    p.kill()
                sys.exit(f"FAIL: {open_} deliveries still open after {self.opts.finish_timeout} s")
            time.sleep(0.5)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        return kills

    def expected(self):
        # Every customer has a phone and an email: an SMS and an email each.
        return 2 * self.opts.customers

    def check(self, kills):
        ledger = json.loads(self.tangazo(0, "--json", "deliveries", "list", "--window", self.window).stdout)
        lines = []
        for d in range(self.daemons):
            for channel in ("sms", "email"):
                path = os.path.join(self.outbox(d), f"{channel}.jsonl")
                if os.path.exists(path):
                    with open(path) as f:
                        for n, line in enumerate(f, 1):
                            try:
                                lines.append(json.loads(line))
                            except json.JSONDecodeError:
                                sys.exit(f"FAIL: {path} line {n} is not JSON: {line[:80]!r}")
        out = collections.defaultdict(list)
        for l in lines:
            out[l["idempotency_key"]].append(l)
        problems = []
        by_state = collections.Counter(r["state"] for r in ledger)
        if len(ledger) != self.expected():
            problems.append(f"{len(ledger)} deliveries planned, expected {self.expected()}")
        lost = late = unflagged = duplicates = told_but_not_recorded = 0
        for r in ledger:
            key = f"w{self.window}.r{r['revision']}.{r['notice']}.{r['recipient_id']}.{r['channel']}"
            sent = out.pop(key, [])
            if r["state"] != "sent" or not sent:
                lost += 1
                continue
            if r["sent_at"] and r["sent_at"] >= r["deadline"]:
                late += 1
            duplicates += len(sent) - 1
            # One line may be the first send; every other is a resend and says it may be one (the
            # outboxes of two daemons are read one after the other, so order says nothing). The
            # ledger flags the row too.
            first_sends = sum(1 for l in sent if not l.get("possibly_duplicate"))
            if len(sent) > 1 and (first_sends > 1 or not r["possibly_duplicate"]):
                unflagged += 1
        told_but_not_recorded = sum(len(v) for v in out.values())
        capacity = kills * self.opts.batch
        print(
            f"ledger: {dict(by_state)}; outbox: {len(lines)} lines; kills: {kills}; "
            f"lost {lost}, late {late}, left claimed {by_state.get('claimed', 0)}, "
            f"duplicates {duplicates} (all flagged: {unflagged == 0}; at most {capacity} in flight at the kills), "
            f"lines with no ledger row {told_but_not_recorded}"
        )
        if lost:
            problems.append(f"{lost} deliveries lost")
        if by_state.get("claimed", 0):
            problems.append(f"{by_state['claimed']} left claimed")
        if late:
            problems.append(f"{late} sent after their deadline")
        if unflagged:
            problems.append(f"{unflagged} resends not flagged")
        if duplicates > capacity:
            problems.append(f"{duplicates} duplicates, more than the {capacity} that can be in flight at {kills} kills")
        if told_but_not_recorded:
            problems.append(f"{told_but_not_recorded} outbox lines have no delivery")
        return problems

    def close(self):
        if self.cleanup_db:
            admin, name = self.cleanup_db
            subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)
        if not self.opts.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True, help="the tangazo binary (a release build)")
    p.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test", help="an admin URL")
    p.add_argument("--customers", type=int, default=50_000, help="each gets an SMS and an email")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--rate", type=float, default=5000, help="messages per second in all (the daemons share it)")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--lease", default="3s")
    p.add_argument("--min-up", type=float, default=0.3, help="seconds a daemon lives at least")
    p.add_argument("--max-up", type=float, default=1.5)
    p.add_argument("--finish-timeout", type=float, default=300)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the run's folder for a look")
    opts = p.parse_args()
    opts.bin = os.path.abspath(opts.bin)
    if opts.seed is None:
        opts.seed = random.randrange(1 << 30)
    run = Run(opts)
    print(f"{opts.store}: {opts.customers} customers, {2 * opts.customers} deliveries, seed {opts.seed}, in {run.dir}")
    try:
        run.prepare()
        kills = run.drill()
        problems = run.check(kills)
    finally:
        run.close()
    if problems:
        print("FAIL: " + "; ".join(problems))
        sys.exit(1)
    print(f"ok: {opts.store} survived {kills} kills")


if __name__ == "__main__":
    main()
