"""Lambda bootstrap sizes and init time: `python3 lambda_init.py LAMBDA_DIR` prints JSON.

Init time is what Lambda calls the init phase for a custom runtime: from starting the process to
its first `GET /2018-06-01/runtime/invocation/next` (ready for the first event), measured against
a Runtime API served here, as the test launcher serves it. 30 starts per function.
"""
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def init_once(bootstrap: str, env: dict) -> float:
    ready = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            ready.set()
            time.sleep(5)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**env, "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}"}
    start = time.perf_counter()
    process = subprocess.Popen([bootstrap], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not ready.wait(10):
        process.kill()
        raise SystemExit(f"{bootstrap} never asked for an event")
    elapsed = time.perf_counter() - start
    process.kill()
    process.wait()
    server.shutdown()
    return elapsed * 1000


def main():
    root = sys.argv[1]
    base = {
        "PATH": "/usr/bin:/bin",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/bench",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "TOKENFENCE_TABLE": "bench-ledger",
        "TOKENFENCE_NAME": "bench",
        "TOKENFENCE_MODELS": '{"nova-micro":"amazon.nova-micro-v1:0"}',
    }
    result = {}
    for function in ("provider", "invoke"):
        bootstrap = os.path.join(root, function, "bootstrap")
        samples = sorted(init_once(bootstrap, base) for _ in range(30))
        result[function] = {
            "bytes": os.path.getsize(bootstrap),
            "stripped": b"not stripped" not in subprocess.run(["file", bootstrap], capture_output=True).stdout
            if os.path.exists("/usr/bin/file") else None,
            "init_ms_p50": round(statistics.median(samples), 2),
            "init_ms_p90": round(samples[int(0.9 * (len(samples) - 1))], 2),
            "init_ms_max": round(samples[-1], 2),
        }
    print(json.dumps(result))


main()
