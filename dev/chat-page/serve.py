#!/usr/bin/env python3
"""The local chat page's own small server (started by scripts/stack.sh).

Serves index.html, style.css and chat.js from this directory, and
`/config.json`: the functions' base URL and a fresh access token minted by the
stack's CLI (`stack token`, the local RS256 key), for the fixed local user or for
`?user=<uuid>` (the browser test uses a new user per run). Listens on 127.0.0.1
only: anyone on this machine can get a token of the local stack, nothing else.
Logs the request line (method, path, status), never a token.
"""

import argparse
import json
import os
import subprocess
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {"/": "index.html", "/index.html": "index.html", "/style.css": "style.css", "/chat.js": "chat.js"}


class Handler(SimpleHTTPRequestHandler):
    functions_url = ""
    stack_cli = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=HERE, **kwargs)

    def end_headers(self):
        # Always the files on disk: edit, reload.
        self.send_header("cache-control", "no-store")
        super().end_headers()

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/config.json":
            return self.config(parse_qs(url.query))
        if url.path not in FILES:
            return self.send_error(404)
        self.path = "/" + FILES[url.path]
        return super().do_GET()

    def config(self, query):
        args = [self.stack_cli, "token", "--ttl", "43200"]
        user = query.get("user", [""])[0]
        if user:
            try:
                args += ["--user", str(uuid.UUID(user))]
            except ValueError:
                return self.send_error(422, "user is not a UUID")
        minted = subprocess.run(args, capture_output=True, text=True)
        if minted.returncode != 0:
            self.log_message("stack token failed (exit %d)", minted.returncode)
            return self.send_error(500, "could not mint a token")
        body = json.dumps({"functions_url": self.functions_url, "token": minted.stdout.strip()})
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--functions-url", required=True, help="e.g. http://127.0.0.1:9000/lambda-url")
    parser.add_argument("--stack-cli", required=True, help="the `stack` binary (dev/stack)")
    opts = parser.parse_args()
    Handler.functions_url = opts.functions_url.rstrip("/")
    Handler.stack_cli = opts.stack_cli
    server = ThreadingHTTPServer(("127.0.0.1", opts.port), Handler)
    print(f"chat page on http://127.0.0.1:{opts.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
