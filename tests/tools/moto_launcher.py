"""moto server for tokenfence's tests: `python moto_launcher.py HOST PORT [--serial]`.

It is moto (pinned in requirements.txt) with the gaps that matter here handled as stated:

- UpdateBudget: moto answers 500 NotImplemented. The provider updates AWS Budgets in place (the
  right call on AWS: a budget keeps its history), so this launcher adds UpdateBudget to moto's
  budgets service: the budget's definition is replaced, its notifications are kept, as AWS does.
- --serial answers one request at a time. moto emulates TransactWriteItems by deep-copying the
  whole table, applying the items one by one and restoring the copy when one fails, and its server
  handles requests on concurrent threads without a lock around them: under concurrent requests a
  failing transaction erases writes other requests committed meanwhile (measured: the ledger's day
  and month counters diverged by ~1,300 tokens after 64 concurrent clients, in every run).
  DynamoDB's transactions are serializable; serving one request at a time gives moto the same
  guarantee. Tests in which moto invokes a Lambda that calls back into moto must not use --serial.
"""
import json
import os
import sys
import time

from werkzeug.serving import run_simple

from moto.budgets.models import BudgetsBackend
from moto.budgets.responses import BudgetsResponse
from moto.budgets.exceptions import NotFoundException
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app


def _update_budget(self, account_id, new_budget):
    budgets = self.budgets[account_id]
    name = new_budget["BudgetName"]
    if name not in budgets:
        raise NotFoundException(f"Unable to update budget: {name} - the budget doesn't exist.")
    existing = budgets[name]
    kept = {k: v for k, v in existing.budget.items() if k in ("TimePeriod",)}
    existing.budget = {**kept, **new_budget, "LastUpdatedTime": time.time()}


def _update_budget_response(self):
    self.backend.update_budget(account_id=self._get_param("AccountId"), new_budget=self._get_param("NewBudget"))
    return json.dumps({})


BudgetsBackend.update_budget = _update_budget
BudgetsResponse.update_budget = _update_budget_response

if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    serial = "--serial" in sys.argv[3:]
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=not serial, use_reloader=False)
