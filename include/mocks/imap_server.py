"""A Dovecot IMAP server for the bounce mailbox, as a local process with its own configuration: a free
loopback port, one Maildir, one login (a static password). The mock relay writes reports into the Maildir;
the pipeline reads them over IMAP as it would read a real bounce mailbox.

    python -m include.mocks.imap_server --root data/bounces --port 2143      (``make bounce-mailbox``)

Needs Debian's ``dovecot-imapd`` (``.ci/run`` installs it). Dovecot refuses to run its login processes as
root: under root it runs as ``nobody``, and the Maildir is made writable for both.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
instance_name = welcome-mailer-{port}
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 0
mail_location = maildir:{maildir}:LAYOUT=fs
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


def available() -> bool:
    return os.path.exists(DOVECOT)


@dataclass
class ImapServer:
    root: Path
    port: int
    login: str
    password: str
    process: subprocess.Popen

    @property
    def maildir(self) -> Path:
        return self.root / "Maildir"

    def connection(self) -> dict:
        """AIRFLOW_CONN_BOUNCE_MAILBOX (JSON form) for this server."""
        return {
            "conn_type": "imap",
            "host": "127.0.0.1",
            "port": self.port,
            "login": self.login,
            "password": self.password,
            "extra": {"use_ssl": False},
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start(root: Path, port: int, login: str = "bounces", password: str = "bounces-secret") -> ImapServer:
    """Start Dovecot in the foreground of a child process; returns once it accepts connections."""
    root = root.resolve()
    account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    group = grp.getgrgid(account.pw_gid).gr_name
    for sub in ("run", "state", "home", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for path in [root, *root.rglob("*")]:  # the relay (this user) and Dovecot (maybe nobody) share them
        if path.is_dir():
            path.chmod(0o777)
    config = root / "dovecot.conf"
    config.write_text(
        CONFIG.format(
            root=root,
            maildir=root / "Maildir",
            port=port,
            user=account.pw_name,
            group=group,
            uid=account.pw_uid,
            gid=account.pw_gid,
            password=password,
        )
    )
    kwargs = {"user": account.pw_uid, "group": account.pw_gid} if os.geteuid() == 0 else {}
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(config)], stdout=subprocess.DEVNULL, **kwargs)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
            raise RuntimeError(f"dovecot exited with code {process.returncode}: {log[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(100).startswith(b"* OK"):
                    return ImapServer(root, port, login, password, process)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"dovecot did not answer on port {port} within 20 s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m include.mocks.imap_server", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("MOCK_IMAP_ROOT", "data/bounces")))
    parser.add_argument("--port", type=int, default=int(os.environ.get("MOCK_IMAP_PORT", "2143")))
    parser.add_argument("--login", default=os.environ.get("MOCK_IMAP_LOGIN", "bounces"))
    parser.add_argument("--password", default=os.environ.get("MOCK_IMAP_PASSWORD", "bounces-secret"))
    args = parser.parse_args(argv)
    server = start(args.root, args.port, args.login, args.password)
    print(f"bounce mailbox: imap://{args.login}@127.0.0.1:{args.port}, Maildir {server.maildir}", flush=True)
    # Only a signal to Dovecot here: the main thread's wait() below reaps it (a wait() in the handler would
    # block on the lock the interrupted wait() holds).
    signal.signal(signal.SIGTERM, lambda *_: server.process.terminate())
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
