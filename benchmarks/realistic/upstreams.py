"""The upstreams of the realistic benchmark matrix, run for real: nginx, gunicorn (gthread),
uvicorn, Node's `http` and `taxiway backend`, each answering the same small HTML page.

    python benchmarks/realistic/upstreams.py --capture     # rewrite responses/*.http
    (needs Debian's nginx and nodejs, gunicorn from taxiway's `app` extra, and `pip install uvicorn`)

`start(name, port, workdir)` starts one (the wrk runs use them live); `--capture` sends each
one request and stores its answer byte for byte in `responses/NAME.http`, which the in-process
count (`hotpath_inproc.py --response NAME`) replays. What each sends beyond the page is its own
default: nginx adds Server, Last-Modified, ETag, Accept-Ranges and `Connection: keep-alive`;
gunicorn sends the headers a Django 5.2 view gets from its default middleware (set by the app
below, as Django would) plus Server and `Connection: keep-alive`; Node adds `Connection:
keep-alive` and `Keep-Alive: timeout=5`.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = (b"<!doctype html><html><head><title>Flights</title></head><body>"
        + b"<p>LIS to AMS, 24 December: 3 flights.</p>" * 12 + b"</body></html>\n")
NAMES = ("taxiway", "nginx", "gunicorn", "uvicorn", "node")

_WSGI = '''
PAGE = %r
HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("X-Frame-Options", "DENY"),
           ("Vary", "Cookie"), ("Content-Length", str(len(PAGE))), ("X-Content-Type-Options", "nosniff"),
           ("Referrer-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "same-origin")]

def app(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", HEADERS)
    return [PAGE]
'''

_ASGI = '''
PAGE = %r

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(PAGE)).encode())]})
    await send({"type": "http.response.body", "body": PAGE})
'''

_NODE = '''
const http = require("http");
const page = Buffer.from(%r, "latin1");
http.createServer((req, res) => {
  req.resume();
  req.on("end", () => { res.setHeader("Content-Type", "text/html; charset=utf-8"); res.end(page); });
}).listen(%d, "127.0.0.1");
'''

_NGINX = '''
daemon off;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    keepalive_requests 1000000;
    types { text/html html; }
    server {
        listen 127.0.0.1:%(port)d;
        root %(dir)s/www;
        location / { try_files /index.html =404; }
    }
}
'''


def start(name: str, port: int, workdir: Path, cpus: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start upstream `name` on 127.0.0.1:`port` (files in `workdir`); returns the process."""
    pin = ["taskset", "-c", ",".join(cpus)] if cpus and shutil.which("taskset") else []
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "taxiway":
        argv = [sys.executable, "-m", "taxiway", "backend", "--port", str(port), "--name", "b1"]
    elif name == "nginx":
        for d in (workdir.parent, workdir):   # (its workers run as nobody: they must read the page)
            d.chmod(0o755)
        (workdir / "www").mkdir(exist_ok=True)
        (workdir / "www" / "index.html").write_bytes(PAGE)
        (workdir / "nginx.conf").write_text(_NGINX % {"dir": workdir, "port": port})
        argv = ["nginx", "-c", str(workdir / "nginx.conf"), "-p", str(workdir)]
    elif name == "gunicorn":
        (workdir / "wsgiapp.py").write_text(_WSGI % PAGE)
        argv = [sys.executable, "-m", "gunicorn", "--chdir", str(workdir), "-k", "gthread", "--threads", "4",
                "-w", "1", "-b", f"127.0.0.1:{port}", "--keep-alive", "75", "--log-level", "warning",
                "wsgiapp:app"]
    elif name == "uvicorn":
        (workdir / "asgiapp.py").write_text(_ASGI % PAGE)
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(workdir), "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning", "--no-access-log", "asgiapp:app"]
    elif name == "node":
        (workdir / "server.js").write_text(_NODE % (PAGE.decode("latin-1"), port))
        argv = ["node", str(workdir / "server.js")]
    else:
        raise SystemExit(f"unknown upstream {name!r} (one of {', '.join(NAMES)})")
    proc = subprocess.Popen(pin + argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{name} did not listen on port {port} within 20 s")


def fetch(port: int, request: bytes) -> bytes:
    """One request; the whole response (head and a Content-Length body), byte for byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += s.recv(65536)
        return head + b"\r\n\r\n" + body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capture", action="store_true", help="store each upstream's answer in responses/")
    p.add_argument("--only", default=",".join(NAMES))
    a = p.parse_args()
    if not a.capture:
        p.print_help()
        return 0
    out = HERE / "responses"
    out.mkdir(exist_ok=True)
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with tempfile.TemporaryDirectory(prefix="upstreams-") as d:
        for name in a.only.split(","):
            port = free_port()
            proc = start(name, port, Path(d) / name)
            try:
                answer = fetch(port, request)
            finally:
                proc.terminate()
                proc.wait(10)
            (out / f"{name}.http").write_bytes(answer)
            head = answer.split(b"\r\n\r\n")[0].decode("latin-1")
            print(f"{name}: {len(head.splitlines()) - 1} header fields, {len(answer)} bytes\n  "
                  + "\n  ".join(head.splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
