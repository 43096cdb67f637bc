"""IAM for the functions the launcher runs: each call they make is authorized against their role.

moto enforces no IAM by default, and its optional enforcement matches actions, not resources. This
module stands in front of moto's app and plays IAM for calls signed with a function's credentials:

- `credentials_for(role_arn)` issues a function's credentials (an `ASIA…` access key that names
  its role), which the launcher gives the function instead of a shared test key.
- Each request signed with such a key is mapped to its IAM action(s) and resource ARN(s), as the
  Service Authorization Reference lists them (a DynamoDB `TransactWriteItems` is authorized per
  item: `dynamodb:PutItem`, `UpdateItem`, `DeleteItem`, `ConditionCheckItem`; a Budgets
  `CreateBudget` is `budgets:ModifyBudget` on `budget/NAME`; a Bedrock `converse` is
  `bedrock:InvokeModel` on the model, the inference profile and, for an application inference
  profile, the model it copies).
- The role's identity policies (inline and managed, as moto's CloudFormation created them, every
  `Fn::GetAtt` / `Fn::Sub` resolved) are evaluated as IAM does: an explicit Deny wins, else an
  Allow whose Action, Resource and Condition all match, else an implicit deny. Conditions support
  the operators the rendered templates use on `aws:ResourceTag/KEY`; an unknown operator or key
  never allows.
- A denied call is answered as AWS answers it (AccessDenied, the protocol's error shape) and is
  recorded. A call the map does not know is denied too: the double is never more lenient than AWS.
  `GET /_tokenfence/iam` lists every authorized or denied call, for the tests to assert on.
- Bedrock runtime calls (SigV4 service `bedrock`) are authorized, then forwarded to the Bedrock
  stub (`--bedrock URL`) and its answer streamed back as it arrives.
"""
import fnmatch
import hashlib
import io
import json
import re
import threading
import urllib.parse
import http.client

ROLE_KEYS: dict[str, tuple[str, str]] = {}  # access key -> (role ARN, session name)
CALLS: list[dict] = []
_lock = threading.Lock()
BEDROCK = {"upstream": None}
# Tags of resources moto cannot answer for (application inference profiles), by ARN.
RESOURCE_TAGS: dict[str, dict[str, str]] = {}
# What an application inference profile copies, by ARN.
PROFILE_SOURCES: dict[str, str] = {}

# One destination region besides the caller's, per geography: enough to catch a policy that
# grants the model in the caller's region only (profiles route across the geography).
GEO_DESTINATIONS = {
    "us": ["us-west-2", "us-east-1"], "eu": ["eu-west-1", "eu-central-1"], "apac": ["ap-southeast-2", "ap-northeast-1"],
    "us-gov": ["us-gov-west-1", "us-gov-east-1"], "jp": ["ap-northeast-3", "ap-northeast-1"],
    "au": ["ap-southeast-4", "ap-southeast-2"], "ca": ["ca-west-1", "ca-central-1"],
}
GEO_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")


def credentials_for(role_arn: str, session: str) -> dict[str, str]:
    """The credentials a function running as `role_arn` gets (what Lambda's role session gives)."""
    digest = hashlib.sha256(role_arn.encode()).hexdigest().upper()
    key = "ASIA" + digest[:16]
    with _lock:
        ROLE_KEYS[key] = (role_arn, session)
    return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": digest[16:56], "AWS_SESSION_TOKEN": "session-" + digest[:24]}


class Unmapped(Exception):
    pass


def _form(body: bytes) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(body.decode("utf-8", "replace"))


def _members(form: dict, name: str) -> list[str]:
    out, i = [], 1
    while f"{name}.member.{i}" in form:
        out.append(form[f"{name}.member.{i}"][0])
        i += 1
    return out


def _table(region, account, name):
    return name if name.startswith("arn:") else f"arn:aws:dynamodb:{region}:{account}:table/{name}"


def _dynamodb(op, body, region, account):
    req = json.loads(body or b"{}")
    if op in ("BatchGetItem", "BatchWriteItem"):
        return [(f"dynamodb:{op}", _table(region, account, t)) for t in req.get("RequestItems", {})]
    if op in ("TransactWriteItems", "TransactGetItems"):
        kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
        out = []
        for item in req.get("TransactItems", []):
            for kind, part in item.items():
                out.append((f"dynamodb:{kinds[kind]}", _table(region, account, part["TableName"])))
        return out
    if "TableName" not in req:
        raise Unmapped(f"dynamodb:{op} without a TableName")
    table = _table(region, account, req["TableName"])
    if op in ("Query", "Scan") and req.get("IndexName"):
        table = f"{table}/index/{req['IndexName']}"
    return [(f"dynamodb:{op}", table)]


def _cloudwatch(body, region, account):
    form = _form(body)
    op = form.get("Action", [""])[0]
    alarm = lambda name: f"arn:aws:cloudwatch:{region}:{account}:alarm:{name}"
    if op == "PutMetricAlarm":
        out = [(f"cloudwatch:{op}", alarm(form["AlarmName"][0]))]
        if any(k.startswith("Tags.member.") for k in form):
            # "To create or update an alarm with tags you must have cloudwatch:TagResource."
            out.append(("cloudwatch:TagResource", alarm(form["AlarmName"][0])))
        return out
    if op == "DeleteAlarms":
        return [(f"cloudwatch:{op}", alarm(n)) for n in _members(form, "AlarmNames")]
    if op == "DescribeAlarms":
        names = _members(form, "AlarmNames")
        if names:
            return [(f"cloudwatch:{op}", alarm(n)) for n in names]
        prefix = form.get("AlarmNamePrefix", [""])[0]
        return [(f"cloudwatch:{op}", alarm(prefix + "*"))]
    if op == "PutMetricData":
        return [(f"cloudwatch:{op}", "*")]
    raise Unmapped(f"cloudwatch:{op}")


BUDGET_ACTIONS = {
    "CreateBudget": "ModifyBudget", "UpdateBudget": "ModifyBudget", "DeleteBudget": "ModifyBudget",
    "CreateNotification": "ModifyBudget", "UpdateNotification": "ModifyBudget", "DeleteNotification": "ModifyBudget",
    "CreateSubscriber": "ModifyBudget", "UpdateSubscriber": "ModifyBudget", "DeleteSubscriber": "ModifyBudget",
    "DescribeBudget": "ViewBudget", "DescribeNotificationsForBudget": "ViewBudget", "DescribeSubscribersForNotification": "ViewBudget",
}


def _budgets(op, body, account):
    req = json.loads(body or b"{}")
    if op not in BUDGET_ACTIONS:
        raise Unmapped(f"budgets:{op}")
    name = req.get("BudgetName") or req.get("Budget", {}).get("BudgetName") or req.get("NewBudget", {}).get("BudgetName")
    arn = f"arn:aws:budgets::{req.get('AccountId', account)}:budget/{name}"
    out = [(f"budgets:{BUDGET_ACTIONS[op]}", arn)]
    if op == "CreateBudget" and req.get("ResourceTags"):
        out.append(("budgets:TagResource", arn))
    return out


def _sqs(op, body, region, account):
    req = json.loads(body or b"{}")
    if "QueueUrl" in req:
        parts = urllib.parse.urlparse(req["QueueUrl"]).path.strip("/").split("/")
        owner, name = parts[-2], parts[-1]
    elif "QueueName" in req:
        owner, name = req.get("QueueOwnerAWSAccountId", account), req["QueueName"]
    else:
        raise Unmapped(f"sqs:{op} without a queue")
    action = "SendMessage" if op == "SendMessageBatch" else "DeleteMessage" if op == "DeleteMessageBatch" else op
    return [(f"sqs:{action}", f"arn:aws:sqs:{region}:{owner}:{name}")]


BEDROCK_OPERATIONS = {
    "converse": "InvokeModel",
    "invoke": "InvokeModel",
    "converse-stream": "InvokeModelWithResponseStream",
    "invoke-with-response-stream": "InvokeModelWithResponseStream",
    "count-tokens": "CountTokens",
}


def _bedrock(path, region, account):
    match = re.match(r"^/model/([^/]+)/([a-z-]+)$", path)
    if not match or match.group(2) not in BEDROCK_OPERATIONS:
        raise Unmapped(f"bedrock runtime path `{path}`")
    action = "bedrock:" + BEDROCK_OPERATIONS[match.group(2)]
    model = urllib.parse.unquote(match.group(1))
    out = []

    def system(model_id):
        # A system-defined inference profile routes each request to the model in one of its
        # destination regions: the caller needs the profile, and the model in every region the
        # request may land in (a global profile: the model with no region in its ARN).
        if model_id.startswith(GEO_PREFIXES):
            geo, base = model_id.split(".", 1)
            if geo == "global":
                lands = [""]
            else:
                lands = [region] + [r for r in GEO_DESTINATIONS.get(geo, []) if r != region][:1]
            profile = f"arn:aws:bedrock:{region}:{account}:inference-profile/{model_id}"
            return [profile] + [f"arn:aws:bedrock:{r}::foundation-model/{base}" for r in lands]
        return [f"arn:aws:bedrock:{region}::foundation-model/{model_id}"]

    if model.startswith("arn:"):
        out.append((action, model))
        if ":application-inference-profile/" in model:
            source = PROFILE_SOURCES.get(model)
            if source is None:
                raise Unmapped(f"application inference profile `{model}` is not known")
            copied = re.search(r":inference-profile/(.+)$", source)
            if copied:
                out.extend((action, arn) for arn in system(copied.group(1)))
            else:
                out.append((action, source))
        elif ":inference-profile/" in model:
            out.extend((action, arn) for arn in system(model.rpartition("/")[2])[1:])
    else:
        out.extend((action, arn) for arn in system(model))
    return out


def _as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _matches(pattern: str, value: str, case: bool) -> bool:
    if not case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _condition_holds(condition: dict, resource: str) -> bool:
    for operator, keys in condition.items():
        for key, wanted in keys.items():
            wanted = [str(w) for w in _as_list(wanted)]
            if key.lower().startswith("aws:resourcetag/"):
                tags = RESOURCE_TAGS.get(resource)
                actual = None if tags is None else tags.get(key.split("/", 1)[1])
            else:
                return False  # a key this double cannot evaluate never allows
            if operator == "StringEquals":
                ok = actual is not None and actual in wanted
            elif operator == "StringLike":
                ok = actual is not None and any(_matches(w, actual, True) for w in wanted)
            elif operator == "StringNotEquals":
                ok = actual is None or actual not in wanted
            else:
                return False
            if not ok:
                return False
    return True


def _statements(role) -> list[dict]:
    documents = list(role.policies.values())
    for policy in role.managed_policies.values():
        documents.append(policy.document if hasattr(policy, "document") else policy.default_version.document)
    out = []
    for document in documents:
        if isinstance(document, str):
            document = json.loads(urllib.parse.unquote(document) if document.startswith("%7B") else document)
        out.extend(_as_list(document.get("Statement")))
    return out


def _decide(statements, action, resource) -> bool:
    allowed = False
    for s in statements:
        if "Action" in s:
            hit = any(_matches(a, action, False) for a in _as_list(s["Action"]))
        else:
            hit = not any(_matches(a, action, False) for a in _as_list(s.get("NotAction")))
        if not hit:
            continue
        if "Resource" in s:
            hit = any(_matches(r, resource, True) for r in _as_list(s["Resource"]))
        else:
            hit = not any(_matches(r, resource, True) for r in _as_list(s.get("NotResource")))
        if not hit or not _condition_holds(s.get("Condition", {}), resource):
            continue
        if s.get("Effect") == "Deny":
            return False
        allowed = True
    return allowed


def authorize(role_arn: str, action: str, resource: str) -> bool:
    """Authorizes one call AWS makes with a role on its own (e.g. Lambda polling a queue with
    the function's role), and records it as the calls functions make are recorded."""
    allowed = _decide(_statements(_role(role_arn)), action, resource)
    with _lock:
        CALLS.append({"role": role_arn, "action": action, "resource": resource, "allowed": allowed})
    return allowed


def install_event_source_mapping_check():
    """Lambda polls an SQS queue with the function's execution role, and refuses to create the
    event source mapping when that role cannot (InvalidParameterValueException, "The provided
    execution role does not have permissions to call ReceiveMessage on SQS")."""
    from moto.awslambda.exceptions import InvalidParameterValueException
    from moto.awslambda.models import LambdaBackend

    original = LambdaBackend.create_event_source_mapping

    def create_event_source_mapping(self, spec):
        source = spec.get("EventSourceArn", "")
        if source.startswith("arn:aws:sqs:"):
            fn = self._lambdas.get_function_by_name_or_arn_with_qualifier(spec.get("FunctionName", ""))
            for action in ("ReceiveMessage", "DeleteMessage", "GetQueueAttributes"):
                if not authorize(fn.role, f"sqs:{action}", source):
                    raise InvalidParameterValueException(
                        f"The provided execution role does not have permissions to call {action} on SQS"
                    )
        return original(self, spec)

    LambdaBackend.create_event_source_mapping = create_event_source_mapping


def _role(role_arn):
    from moto.iam.models import iam_backends

    account = role_arn.split(":")[4]
    return iam_backends[account]["aws"].get_role_by_arn(role_arn)


def _denied(service, principal, action, resource, reason):
    message = f"User: {principal} is not authorized to perform: {action} on resource: {resource} {reason}"
    if service == "monitoring":
        body = (
            '<ErrorResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/"><Error><Type>Sender</Type>'
            f"<Code>AccessDenied</Code><Message>{message}</Message></Error><RequestId>denied</RequestId></ErrorResponse>"
        ).encode()
        return "403 Forbidden", [("Content-Type", "text/xml")], body
    status = "400 Bad Request" if service == "dynamodb" else "403 Forbidden"
    headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-ErrorType", "AccessDeniedException")]
    if service == "sqs":
        headers.append(("x-amzn-query-error", "AccessDenied;Sender"))
    body = {"__type": "com.amazonaws.coral.service#AccessDeniedException", "message": message}
    if service == "bedrock":
        body = {"message": message}
        headers[0] = ("Content-Type", "application/json")
    return status, headers, json.dumps(body).encode()


def _apigateway(method, path, region):
    """API Gateway's management API: `apigateway:<HTTP method>` on the resource's path ARN. Only
    reading an API key is mapped (the REST API's authorizer does it for seats); anything else is
    denied."""
    key = re.fullmatch(r"/apikeys/([^/]+)", path)
    if method == "GET" and key:
        return [("apigateway:GET", f"arn:aws:apigateway:{region}::/apikeys/{key.group(1)}")]
    raise Unmapped(f"apigateway {method} {path}")


class IamCheck:
    """WSGI middleware: authorizes calls signed with a function's credentials (see the docstring)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_tokenfence/iam":
            with _lock:
                body = json.dumps({"calls": CALLS}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        scope = re.search(r"Credential=([^/]+)/[^/]+/([^/]+)/([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
        if not scope:
            return self.app(environ, start_response)
        key, region, service = scope.groups()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        with _lock:
            who = ROLE_KEYS.get(key)
        if who is None:
            if service == "bedrock":
                return self._forward(environ, body, start_response)
            return self.app(environ, start_response)
        role_arn, session = who
        account = role_arn.split(":")[4]
        principal = f"arn:aws:sts::{account}:assumed-role/{role_arn.rsplit('/', 1)[1]}/{session}"
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        op = target.rsplit(".", 1)[-1]
        try:
            if service == "dynamodb":
                wanted = _dynamodb(op, body, region, account)
            elif service == "monitoring":
                wanted = _cloudwatch(body, region, account)
            elif service == "budgets":
                wanted = _budgets(op, body, account)
            elif service == "sqs":
                wanted = _sqs(op, body, region, account)
            elif service == "apigateway":
                wanted = _apigateway(environ.get("REQUEST_METHOD", ""), path, region)
            elif service == "sts" and b"GetCallerIdentity" in body + target.encode():
                wanted = []  # needs no permission
            elif service == "bedrock":
                # The raw path: a model ARN is one segment only while its `/` is still encoded.
                wanted = _bedrock((environ.get("RAW_URI") or environ.get("REQUEST_URI") or path).split("?")[0], region, account)
            else:
                raise Unmapped(f"service `{service}` operation `{op or path}`")
            statements = _statements(_role(role_arn))
        except Unmapped as unmapped:
            wanted, statements = [(f"{service}:?", str(unmapped))], []
        except Exception as error:  # a request this map cannot read is denied, loudly
            wanted, statements = [(f"{service}:{op or '?'}", f"unreadable request: {error}")], []
        for action, resource in wanted:
            allowed = _decide(statements, action, resource)
            with _lock:
                CALLS.append({"role": role_arn, "action": action, "resource": resource, "allowed": allowed})
            if not allowed:
                status, headers, denial = _denied(
                    service, principal, action, resource, "because no identity-based policy allows the " + action + " action"
                )
                start_response(status, headers + [("Content-Length", str(len(denial)))])
                return [denial]
        if service == "bedrock":
            return self._forward(environ, body, start_response)
        return self.app(environ, start_response)

    def _forward(self, environ, body, start_response):
        upstream = BEDROCK["upstream"]
        if upstream is None:
            message = b'{"message":"the launcher was started without --bedrock"}'
            start_response("500 Internal Server Error", [("Content-Type", "application/json")])
            return [message]
        target = urllib.parse.urlparse(upstream)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
        path = environ.get("RAW_URI") or urllib.parse.quote(environ.get("PATH_INFO", ""))
        if environ.get("QUERY_STRING") and "?" not in path:
            path += "?" + environ["QUERY_STRING"]
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_") and k not in ("HTTP_HOST", "HTTP_CONTENT_LENGTH")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers["Content-Length"] = str(len(body))
        connection.request(environ["REQUEST_METHOD"], path, body=body, headers=headers)
        response = connection.getresponse()
        hop = {"transfer-encoding", "connection", "keep-alive", "content-length"}
        start_response(f"{response.status} {response.reason}", [(k, v) for k, v in response.getheaders() if k.lower() not in hop])

        def relay():
            try:
                while chunk := response.read1(65536):
                    yield chunk
            finally:
                connection.close()

        return relay()
