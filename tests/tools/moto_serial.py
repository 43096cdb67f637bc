"""moto server answering one request at a time: `python moto_serial.py HOST PORT`.

Why: moto (5.2.5) emulates TransactWriteItems by deep-copying the whole table, applying the items
one by one and, when one fails, restoring the copy; and its server handles requests on concurrent
threads without a lock around them. Under concurrent requests a failing transaction therefore
restores a snapshot taken before other requests committed and erases their writes (measured: the
ledger's month counter and day counter diverged by 1,324 tokens after 64 concurrent clients).
DynamoDB's transactions are serializable; serving one request at a time gives moto the same
guarantee. The end-to-end tests use the threaded `moto_server`, because a Lambda invoked by moto
calls back into it.
"""
import os
import sys

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
run_simple(host, port, DomainDispatcherApplication(create_backend_app), threaded=False, use_reloader=False)
