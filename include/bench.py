"""Benchmark: prints figures and appends them to bench/results.jsonl (`make bench`).

- end to end: 10k and 100k rows through `airflow dags test` on the embedded default (fresh ledger each),
  each beside the no-orchestration baseline (include/baseline.py) on the same file, as a ratio to it;
- parse + claim of 1M rows, in a child process so its peak RSS is its own (SQLite ledger; add
  ``--postgres URL`` for Postgres too);
- the mock ESP accepting 1,000-message batches;
- over SMTP: the 10k file end to end through the mock relay and its bounce mailbox (Dovecot), as a ratio
  to the same file over HTTP in the same run (target <= 1.5), and the transport's messages per second
  per connection;
- with ``--stack``: the same sizes through the local Celery stack (scheduler, Celery worker, Postgres),
  with each task's work time against its scheduling/queueing wait.

Targets on the 2-core reference machine: 10k <= 25 s, 100k <= 60 s end to end (stack: 10k <= 30 s,
100k <= 60 s); 1M parse + claim <= 30 s with peak RSS <= 1 GB; a 1,000-message batch in well under 100 ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from include.generate_contacts import write_file
from include.run_embedded import PROJECT_ROOT, airflow_env, ensure_metadata_db, free_port, newest_report, wait_healthy

BENCH_DIR = PROJECT_ROOT / "bench"
RESULTS = BENCH_DIR / "results.jsonl"
MEMORY_DIR = Path("/dev/shm")  # tmpfs on Linux: the SMTP mocks' files (see smtp_end_to_end)


def end_to_end(rows: int, workdir: Path, connections: dict[str, str] | None = None, name: str = "end_to_end") -> dict:
    """``connections``: AIRFLOW_CONN_* variables of the provider (default: the mock ESP make run starts)."""
    csv_path = write_file(BENCH_DIR / "files" / f"contacts_{rows}.csv", rows, seed=7)
    env = airflow_env()
    env.update(
        {
            "AIRFLOW_CONN_CONTACTS_DB": json.dumps(
                {"conn_type": "sqlite", "host": str(workdir / f"ledger_{name}_{rows}.db")}
            ),
            "WELCOME_MAILER_REPORTS_DIR": str(workdir / "reports"),
            "WELCOME_MAILER_DATA_ROOTS": str(csv_path.parent),
        }
    )
    env.pop("AIRFLOW_CONN_ESP_DEFAULT", None)
    env.update(connections or {})
    ensure_metadata_db(env)
    started = time.time()
    completed = subprocess.run(
        [sys.executable, "-m", "include.run_embedded", str(csv_path)],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.time() - started
    report_path = newest_report(workdir / "reports", started)
    report = json.loads(report_path.with_suffix(".json").read_text()) if report_path else {}
    return {
        "benchmark": f"{name}_{rows}",
        "ok": completed.returncode == 0,
        "seconds": round(seconds, 1),
        "phase_seconds": report.get("phase_seconds", {}),
        "peak_rss_mb": _children_peak_rss_mb(),
        "contacts": report.get("claimed"),
        "messages": report.get("messages_sent"),
    }


def smtp_end_to_end(rows: int, workdir: Path) -> dict:
    """The same file as end_to_end, over SMTP: the mock relay, its bounce mailbox on Dovecot (when
    installed; else the settle time alone), settle time 6 s (the relay's reports come within 5 s).

    The relay's log and Maildir are kept in memory (tmpfs, /dev/shm, when the machine has one): relay and
    mailbox stand for other machines, and on this one their files (one report per message) would compete
    for the disk with the ledger and everything else running (2-3 ms a file on a busy disk, 0.15 ms in
    memory), a cost no run against a real relay pays."""
    from include import imap_server

    relay_port, imap_port = free_port(), free_port()
    root = Path(tempfile.mkdtemp(prefix="welcome-bench-smtp-", dir=MEMORY_DIR if MEMORY_DIR.is_dir() else None))
    root.chmod(0o755)
    mailbox = imap_server.start(root, imap_port) if imap_server.available() else None
    maildir = mailbox.maildir if mailbox else root / "Maildir"
    relay = _start_relay(relay_port, maildir, root / f"relay_{rows}.jsonl")
    extra = {"from_email": "welcome@mailer.example", "disable_ssl": True, "disable_tls": True, "settle_seconds": 6}
    extra["max_connections"] = 2  # one relay process on the same 2 cores: more connections only contend
    esp = {"conn_type": "smtp", "host": "127.0.0.1", "port": relay_port, "extra": extra}
    connections = {"AIRFLOW_CONN_ESP_DEFAULT": json.dumps(esp)}
    if mailbox:
        connections["AIRFLOW_CONN_BOUNCE_MAILBOX"] = json.dumps(mailbox.connection())
    try:
        return end_to_end(rows, workdir, connections, name="smtp_end_to_end")
    finally:
        relay.terminate()
        relay.wait(timeout=10)
        if mailbox:
            mailbox.stop()
        shutil.rmtree(root, ignore_errors=True)


def _start_relay(port: int, maildir: Path, log: Path, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "include.mock_smtp", "--port", str(port), "--maildir", str(maildir)]
    relay = subprocess.Popen(
        [*command, "--log", str(log), *flags],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return relay
        except OSError:
            time.sleep(0.05)
    relay.kill()
    raise RuntimeError("the mock relay did not start")


def smtp_rate(workdir: Path, messages: int = 2000) -> list[dict]:
    """The SMTP transport against the mock relay (everything delivered): messages per second, with one
    connection and with the default eight."""
    from welcome_mailer.ledger import idempotency_key
    from welcome_mailer.transports import OutgoingMessage
    from welcome_mailer.transports.smtp import SmtpEmailProvider, SmtpSettings

    port = free_port()
    relay = _start_relay(port, workdir / "rate_maildir", workdir / "rate.jsonl", "--delivered-rate", "1",
                         "--bounced-rate", "0", "--blocked-rate", "0")  # fmt: skip
    results = []
    try:
        for connections in (1, 8):
            settings = SmtpSettings(
                "127.0.0.1", port, from_email="welcome@mailer.example", use_ssl=False, starttls=False,
                max_connections=connections,
            )  # fmt: skip
            batch = [
                OutgoingMessage(f"c{connections}.{n}@example.com", "Welcome!", f"Hi {n}, Welcome!",
                                idempotency_key(f"c{connections}.{n}@example.com", 1), f"Contact {n}")
                for n in range(messages)
            ]  # fmt: skip
            with SmtpEmailProvider(settings) as transport:
                started = time.perf_counter()
                for start in range(0, messages, 1000):
                    transport.send_batch(batch[start : start + 1000])
                seconds = time.perf_counter() - started
            results.append(
                {
                    "benchmark": f"smtp_rate_{connections}_connections",
                    "messages_per_second": round(messages / seconds),
                    "per_connection": round(messages / seconds / connections),
                }
            )
    finally:
        relay.terminate()
        relay.wait(timeout=10)
    return results


def baseline(rows: int) -> dict:
    """The same file through include/baseline.py (no Airflow) against a fresh mock ESP of its own."""
    csv_path = write_file(BENCH_DIR / "files" / f"contacts_{rows}.csv", rows, seed=7)
    with bench_esp() as (url, _):
        command = [sys.executable, "-m", "include.baseline", str(csv_path), "--esp-url", url]
        output = subprocess.run(
            [*command, "--api-key", "bench"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout
    return {"benchmark": f"baseline_{rows}", **json.loads(output.strip().splitlines()[-1])}


def with_ratios(results: list[dict]) -> list[dict]:
    """Each end-to-end figure as a ratio to the baseline of the same size, measured in the same run."""
    floors = {
        r["benchmark"].removeprefix("baseline_"): r["seconds"]
        for r in results
        if r["benchmark"].startswith("baseline_")
    }
    for result in results:
        rows = result["benchmark"].rsplit("_", 1)[-1]
        if "end_to_end_" in result["benchmark"] and rows in floors and floors[rows]:
            result["ratio_to_baseline"] = round(result["seconds"] / floors[rows], 2)
    return results


def parse_and_claim(rows: int, ledger_url: str) -> dict:
    """Run in a child process: its own peak RSS is the figure."""
    code = f"""
import json, resource, time
from pathlib import Path
from include.generate_contacts import write_file
from welcome_mailer.ledger import Ledger, connect
from welcome_mailer.ledger.migrate import upgrade
from welcome_mailer.pipeline import claim_contacts, parse_file
path = write_file(Path({str(BENCH_DIR / "files")!r}) / "contacts_{rows}.csv", {rows}, seed=7)
engine = connect({ledger_url!r})
upgrade(engine)
ledger = Ledger(engine)
ledger.renew_lease("bench")
t0 = time.time()
parsed = parse_file(ledger, "bench", path, Path({tempfile.gettempdir()!r}) / "bench_rejected.csv")
t1 = time.time()
claimed = claim_contacts(ledger, "bench", 1000, 1024)
t2 = time.time()
print(json.dumps({{"parse": round(t1 - t0, 2), "claim": round(t2 - t1, 2), "contacts": claimed["owned"],
                  "batches": len(claimed["batches"]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}}))
"""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    backend = ledger_url.split(":", 1)[0]
    return {
        "benchmark": f"parse_claim_{rows}_{backend}",
        "seconds": round(figures["parse"] + figures["claim"], 2),
        **figures,
    }


@contextmanager
def bench_esp():
    """A fresh mock ESP of the benchmark's own (key "bench"): yields its URL and process, stops it after."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "include.mock_esp", "--port", str(port), "--api-key", "bench"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=10)


def esp_batch_latency(batches: int = 1000) -> dict:
    """1,000-message batches into one mock ESP: latency when empty, and after ``batches`` thousand messages."""
    with bench_esp() as (url, process):
        client = httpx.Client(base_url=url, headers={"Authorization": "Bearer bench"})
        timings = []
        for batch in range(batches):
            messages = [
                {"to": f"user{batch}x{i}@example.com", "subject": "Welcome!", "text": "Hi, Welcome!",
                 "idempotency_key": f"{batch}-{i}"}
                for i in range(1000)
            ]  # fmt: skip
            started = time.perf_counter()
            client.post("/v1/messages/batch", json={"messages": messages}).raise_for_status()
            timings.append((time.perf_counter() - started) * 1000)
        first, last = sorted(timings[:50]), sorted(timings[-50:])
        return {
            "benchmark": "esp_batch_1000",
            "messages_held": batches * 1000,
            "median_ms_empty": round(first[25], 1),
            "median_ms_full": round(last[25], 1),
            "p95_ms_full": round(last[47], 1),
            "esp_rss_mb": _rss_mb(process.pid),
        }


def _rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def on_stack(sizes: list[int], workdir: Path) -> list[dict]:
    """End to end through the scheduler and Celery, on a stack of its own (own ports, databases, home)."""
    import uuid

    from include.stack import Stack, StackConfig

    tag = uuid.uuid4().hex[:8]
    files = BENCH_DIR / "files"
    stack = Stack(
        dataclasses.replace(
            StackConfig.from_env(),
            home=workdir / "stack",
            metadata_db=f"wm_bench_meta_{tag}",
            ledger_db=f"wm_bench_ledger_{tag}",
            redis="redis://127.0.0.1:6379/10",
            api_port=free_port(),
            esp_port=free_port(),
            admin_password=tag,
            data_roots=str(files),
        )
    )
    results = []
    try:
        stack.up()
        for rows in sizes:
            csv_path = write_file(files / f"contacts_{rows}.csv", rows, seed=7)
            started = time.time()
            run_id = stack.trigger("welcome_emails", {"csv_path": str(csv_path)})
            state = stack.wait_for_run("welcome_emails", run_id, timeout=1800)
            seconds = time.time() - started
            tasks = stack.api("GET", f"/api/v2/dags/welcome_emails/dagRuns/{run_id}/taskInstances?limit=1000").json()
            results.append(
                {
                    "benchmark": f"stack_end_to_end_{rows}",
                    "ok": state == "success",
                    "seconds": round(seconds, 1),
                    **overhead_by_task(tasks["task_instances"]),
                }
            )
    finally:
        stack.down()
        stack.drop_databases()
    return results


def overhead_by_task(task_instances: list[dict]) -> dict:
    """Per task: work (running) against overhead (scheduled -> queued -> running), summed over map indexes."""
    from datetime import datetime

    def at(value: str | None) -> float | None:
        return datetime.fromisoformat(value).timestamp() if value else None

    per_task: dict[str, dict[str, float]] = {}
    for ti in task_instances:
        start, end, scheduled = at(ti["start_date"]), at(ti["end_date"]), at(ti.get("scheduled_when"))
        if start is None or end is None:
            continue
        figures = per_task.setdefault(ti["task_id"], {"work_s": 0.0, "wait_s": 0.0, "count": 0})
        figures["work_s"] += end - start
        figures["wait_s"] += max(0.0, start - scheduled) if scheduled else 0.0
        figures["count"] += 1
    return {"tasks": {k: {n: round(v, 2) for n, v in f.items()} for k, f in per_task.items()}}


def machine_speed() -> dict:
    """A fixed pure-Python workload, so figures from different machines (or busy days) can be compared:
    Airflow's own start-up and most of our work scale with it."""
    started = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return {"benchmark": "machine_speed", "python_loop_10M_s": round(time.perf_counter() - started, 2)}


def _children_peak_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000], help="end-to-end file sizes")
    parser.add_argument("--big", type=int, default=1_000_000, help="rows for the parse + claim figure (0: skip)")
    parser.add_argument("--postgres", help="also measure parse + claim on this SQLAlchemy URL (an empty database)")
    parser.add_argument("--stack", action="store_true", help="also run the sizes through the local Celery stack")
    parser.add_argument("--smtp", type=int, default=10_000, help="rows end to end over SMTP, beside HTTP (0: skip)")
    args = parser.parse_args(argv)
    # A stopped benchmark still stops the stack it started (its `finally`), instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    results = [machine_speed(), esp_batch_latency()]
    with tempfile.TemporaryDirectory(prefix="welcome-bench-") as tmp:
        workdir = Path(tmp)
        if args.big:
            results.append(parse_and_claim(args.big, f"sqlite:///{workdir / 'big.db'}"))
            if args.postgres:
                results.append(parse_and_claim(args.big, args.postgres))
        for rows in args.sizes:
            results.append(baseline(rows))
            results.append(end_to_end(rows, workdir))
        if args.smtp:
            results.extend(smtp_rate(workdir))
            http = next((r for r in results if r["benchmark"] == f"end_to_end_{args.smtp}"), None)
            smtp = smtp_end_to_end(args.smtp, workdir)
            if http and http["ok"] and smtp["ok"]:
                smtp["ratio_to_http"] = round(smtp["seconds"] / http["seconds"], 2)  # target: <= 1.5
            results.append(smtp)
        if args.stack:
            results.extend(on_stack(args.sizes, workdir))
    results = with_ratios(results)
    BENCH_DIR.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        for result in results:
            handle.write(
                json.dumps({"at": stamp, "machine": f"{platform.node()} {os.cpu_count()} cores", **result}) + "\n"
            )
    for result in results:
        print(json.dumps(result))
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
