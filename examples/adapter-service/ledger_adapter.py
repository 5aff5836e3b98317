#!/usr/bin/env python3
"""An adapter service for Tether, protocol v1 (docs/adapter-protocol.md).

It fronts an imaginary legacy ledger that is not a REST API; here the ledger
is an in-memory dict so the example runs anywhere. Standard library only.

    LEDGER_TOKEN=secret python3 ledger_adapter.py --port 8081

GET /_entries lists what the ledger holds (for demos and tests).
"""
import argparse
import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
ENTRIES = {}  # id -> {"externalName": ..., "properties": {...}}
KEYS = {}  # idempotency key -> id
TOKEN = os.environ.get("LEDGER_TOKEN", "")


def find_by_name(name):
    return next((i for i, e in ENTRIES.items() if e["externalName"] == name), None)


def present(entry_id):
    entry = ENTRIES[entry_id]
    return {"exists": True, "externalId": entry_id, "observed": dict(entry["properties"])}


def handle(operation, request):
    """Returns (status, answer) for one protocol call."""
    if request.get("protocolVersion") != "v1":
        return 400, {"error": {"code": "unsupported_version", "message": "this service speaks v1", "retryable": False}}
    with LOCK:
        entry_id = request.get("externalId")
        if operation == "observe":
            return 200, present(entry_id) if entry_id in ENTRIES else {"exists": False}
        if operation == "find":
            found = find_by_name(request.get("externalName"))
            return 200, present(found) if found else {"exists": False}
        if operation == "create":
            key = request.get("idempotencyKey")
            if key in KEYS and KEYS[key] in ENTRIES:
                return 200, present(KEYS[key])
            new_id = "entry-" + uuid.uuid4().hex[:8]
            ENTRIES[new_id] = {"externalName": request.get("externalName"), "properties": dict(request.get("properties") or {})}
            if key:
                KEYS[key] = new_id
            return 200, present(new_id)
        if operation == "update":
            if entry_id not in ENTRIES:
                return 404, {"error": {"code": "not_found", "message": f"no entry {entry_id}", "retryable": False}}
            ENTRIES[entry_id]["properties"].update(request.get("properties") or {})
            return 200, present(entry_id)
        if operation == "delete":
            return 200, {"result": "Deleted" if ENTRIES.pop(entry_id, None) else "AlreadyGone"}
        if operation == "action":
            return 200, {"succeeded": True, "outputs": {"echo": request.get("input")}, "body": None}
    return 404, {"error": {"code": "unknown_operation", "message": operation, "retryable": False}}


class Handler(BaseHTTPRequestHandler):
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/_entries":
            with LOCK:
                return self.answer(200, [{"id": i, **e} for i, e in ENTRIES.items()])
        return self.answer(404, {"error": {"code": "not_found", "message": self.path}})

    def do_POST(self):
        if TOKEN and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.answer(401, {"error": {"code": "unauthorized", "message": "bad token"}})
        prefix = "/v1/"
        if not self.path.startswith(prefix):
            return self.answer(404, {"error": {"code": "not_found", "message": self.path}})
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as err:
            return self.answer(400, {"error": {"code": "bad_json", "message": str(err), "retryable": False}})
        self.answer(*handle(self.path[len(prefix):], request))

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"ledger adapter listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
