"""moto server for tokenfence's tests: `python moto_launcher.py HOST PORT [--serial] [--bedrock URL] [--lambda-env K=V]...`.

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
- Lambda: moto runs functions in Docker, which these machines do not have. This launcher replaces
  that one method (`LambdaFunction._invoke_lambda`, the path of the Invoke API, custom resources
  and SQS event source mappings) with what Lambda does for a `provided.al2023` function: the
  function's deployed zip (as `aws cloudformation package` uploaded it) is unpacked, its
  `bootstrap` started with the function's configured environment plus the Lambda runtime
  variables, and given the event through a Lambda Runtime API served for that one invocation, with
  a real deadline (`Lambda-Runtime-Deadline-Ms`: now + the function's timeout). The process is
  stopped when it asks for its next event (Lambda freezes it there) or at the deadline. Its output
  goes to the function's CloudWatch Logs group in moto, as Lambda's does. `--lambda-env KEY=VALUE`
  adds variables to every function: what the sandbox's network provides (where Bedrock is).
  Streamed answers (`Lambda-Runtime-Function-Response-Mode: streaming`, chunked, with error
  trailers) are read chunk by chunk; Lambda's InvokeWithResponseStream, which moto lacks, is
  served in front of moto: each chunk is relayed as a `PayloadChunk` event when the function
  writes it, and `InvokeComplete` (with `ErrorCode` / `ErrorDetails` on failure) ends the stream.
- IAM: moto enforces none. Functions run with credentials of their own execution role, and every
  call they make with them, to moto or to Bedrock, is authorized against the role's policies by
  `iam_check.py` (its docstring says how); so are the state machines' Bedrock calls (execution
  role) and Lambda's polling of SQS event sources (the function's role, checked when the mapping
  is created, as Lambda does). Bedrock runtime calls reach the Bedrock stub given as
  `--bedrock URL` through that check. Not checked: API Gateway's integration credentials roles (the
  REST API's integrations invoke with Lambda permissions, which are not evaluated) and EventBridge
  Pipes, which moto does not execute.
- API Gateway REST: moto stores a REST API but serves none of it, and its CloudFormation skips
  authorizers, usage plans and their keys, and stages. `apigw.py` adds those types and serves the
  deployed APIs over HTTPS as API Gateway does (authorizer, API key through usage plans, Lambda
  proxy integrations whole or streamed); its docstring says what it plays and what it does not.
  `GET /_tokenfence/apigw` gives its URL and certificate.
- AWS::Bedrock::ApplicationInferenceProfile: moto has no Bedrock control plane, and its
  CloudFormation rejects a template that uses `Fn::GetAtt` on a type it does not know. The launcher
  adds the type to moto's CloudFormation: it issues an application inference profile ARN and ID
  for each resource and remembers the model it copies and the tags (nothing in moto can call it).
- AWS::ApiGateway::ApiKey: moto's CloudFormation skips it (a `Ref` to it resolves to nothing).
  The launcher creates the key in moto's API Gateway, so `Ref` gives the key's ID as on AWS and
  `GetApiKey --include-value` gives its value.
- Custom resources: moto sends them a Create only, on a background thread while it goes on
  creating their dependents, ignores their answers' PhysicalResourceId and FAILED status, and
  builds the ResponseURL on `http://host.docker.internal`. `cfn_lifecycle.py` plays
  CloudFormation's documented lifecycle instead (its docstring lists it): asynchronous invocations
  with Lambda's retries, the ServiceTimeout, Create / Update / Delete with the right properties
  and physical IDs, rollback of a failed create, the rollback Update of a failed update with old
  and new properties swapped, Deletes of replaced and removed resources in the cleanup phase, and
  Deletes dependents first. The ResponseURL is `http://127.0.0.1:PORT/...`.
- Step Functions: moto executes state machines only with its "parser" backend
  (`execute_state_machine`), which this launcher turns on; its CloudFormation creates state
  machines in the other backend, so the launcher creates them in the executing one. moto evaluates
  JSONata through a Java bridge it leaves unset; the launcher evaluates it with `jsonata-python`
  (pinned in requirements.txt). moto's `aws-sdk` tasks call boto3 with the integration's service
  name, which for Bedrock (`bedrockruntime`) boto3 spells `bedrock-runtime`, and send every call to
  moto, which has no Converse: the launcher maps the name and sends Bedrock runtime calls through
  its IAM check (signed with the execution role's credentials) to the stub (`--bedrock URL`).
  Step Functions passes SDK parameters and results in PascalCase whatever the API's casing; moto's
  aws-sdk task does not convert them, so the launcher does, with the operation's botocore shapes.
"""
import hashlib
import io
import json
import os
import queue
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from werkzeug.serving import run_simple

from moto.budgets.models import BudgetsBackend
from moto.budgets.responses import BudgetsResponse
from moto.budgets.exceptions import NotFoundException
from moto.core.common_models import CloudFormationModel
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

import apigw
import cfn_lifecycle
import iam_check


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

class ApplicationInferenceProfile(CloudFormationModel):
    """`AWS::Bedrock::ApplicationInferenceProfile` for moto's CloudFormation (see the docstring)."""

    # moto files its models by the service named in the module path.
    __module__ = "moto.bedrock.tokenfence"

    def __init__(self, account_id: str, region: str, properties: dict):
        self.id = uuid.uuid4().hex[:12]
        self.arn = f"arn:aws:bedrock:{region}:{account_id}:application-inference-profile/{self.id}"
        self.remember(properties)

    def remember(self, properties: dict):
        self.properties = properties
        # What IAM evaluates a call through this profile against: its tags and its model.
        iam_check.RESOURCE_TAGS[self.arn] = {t["Key"]: t["Value"] for t in properties.get("Tags", [])}
        iam_check.PROFILE_SOURCES[self.arn] = properties.get("ModelSource", {}).get("CopyFrom", "")

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::Bedrock::ApplicationInferenceProfile"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "InferenceProfileName"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in ("InferenceProfileArn", "InferenceProfileId", "InferenceProfileIdentifier", "Status")

    @property
    def physical_resource_id(self) -> str:
        return self.arn

    def get_cfn_attribute(self, attribute_name: str):
        return {
            "InferenceProfileArn": self.arn,
            "InferenceProfileId": self.id,
            "InferenceProfileIdentifier": self.arn,
            "Status": "ACTIVE",
        }[attribute_name]

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        return cls(account_id, region_name, cloudformation_json.get("Properties", {}))

    @classmethod
    def update_from_cloudformation_json(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
        original_resource.remember(cloudformation_json.get("Properties", {}))
        return original_resource

    @classmethod
    def delete_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name):
        pass


class RestApiKey(CloudFormationModel):
    """`AWS::ApiGateway::ApiKey` for moto's CloudFormation, backed by moto's API Gateway."""

    __module__ = "moto.apigateway.tokenfence"

    def __init__(self, key):
        self.key = key

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::ApiGateway::ApiKey"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "APIKeyId"

    @property
    def physical_resource_id(self) -> str:
        return self.key.id

    def get_cfn_attribute(self, attribute_name: str):
        return self.key.id

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        from moto.apigateway.models import apigateway_backends

        props = cloudformation_json.get("Properties", {})
        payload = {
            "name": props.get("Name", resource_name),
            "description": props.get("Description"),
            "enabled": str(props.get("Enabled", False)).lower() == "true",
            "tags": {t["Key"]: t["Value"] for t in props.get("Tags", [])},
        }
        return cls(apigateway_backends[account_id][region_name].create_api_key(payload))

    @classmethod
    def delete_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name):
        from moto.apigateway.models import apigateway_backends

        try:
            apigateway_backends[account_id][region_name].delete_api_key(resource_name)
        except Exception:
            pass


RUNTIME = "/2018-06-01/runtime"
LAMBDA_ENV: dict[str, str] = {}
CODE_DIR = tempfile.mkdtemp(prefix="tokenfence-lambda-")
_unpack_lock = threading.Lock()


def _code_dir(fn) -> str:
    """Unpacks the function's zip once per distinct code; returns the directory."""
    digest = hashlib.sha256(fn.code_bytes).hexdigest()
    target = os.path.join(CODE_DIR, digest)
    with _unpack_lock:
        if not os.path.isdir(target):
            staging = target + ".tmp"
            with zipfile.ZipFile(io.BytesIO(fn.code_bytes)) as archive:
                archive.extractall(staging)
            bootstrap = os.path.join(staging, "bootstrap")
            if os.path.exists(bootstrap):
                os.chmod(bootstrap, 0o755)
            os.rename(staging, target)
    return target


class _Invocation:
    """The Lambda Runtime API for one event."""

    def __init__(self, fn, event: str):
        self.fn = fn
        self.event = event.encode() if isinstance(event, str) else event
        self.request_id = str(uuid.uuid4())
        self.deadline_ms = int(time.time() * 1000) + int(fn.timeout) * 1000
        self.served = False
        self.result = None
        self.errored = False
        self.done = threading.Event()
        self.released = threading.Event()
        # Set by InvokeWithResponseStream: given each chunk of a streamed answer as it arrives.
        self.on_chunk = None
        self.streamed = False


def _handler_for(invocation: _Invocation):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def _reply(self, status: int, body: bytes, headers=()):
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path != f"{RUNTIME}/invocation/next":
                return self._reply(404, b"{}")
            if invocation.served:
                # The function asks for more work: Lambda freezes it here.
                invocation.done.set()
                invocation.released.wait()
                return
            invocation.served = True
            fn = invocation.fn
            self._reply(
                200,
                invocation.event,
                [
                    ("Lambda-Runtime-Aws-Request-Id", invocation.request_id),
                    ("Lambda-Runtime-Deadline-Ms", str(invocation.deadline_ms)),
                    ("Lambda-Runtime-Invoked-Function-Arn", fn.function_arn),
                    ("Lambda-Runtime-Trace-Id", f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};Sampled=0"),
                ],
            )

        def _read_chunked(self, on_chunk):
            # A streamed answer (`Lambda-Runtime-Function-Response-Mode: streaming`): chunks as
            # the function writes them, then trailers that may name a mid-stream error.
            body, trailers = bytearray(), {}
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                        name, _, value = line.decode("utf-8", "replace").partition(":")
                        trailers[name.strip().lower()] = value.strip()
                    return bytes(body), trailers
                chunk = self.rfile.read(size)
                self.rfile.readline()
                body += chunk
                if on_chunk is not None:
                    on_chunk(chunk)

        def do_POST(self):
            responding = self.path == f"{RUNTIME}/invocation/{invocation.request_id}/response"
            trailers = {}
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                body, trailers = self._read_chunked(invocation.on_chunk if responding else None)
                invocation.streamed = responding
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
            if responding:
                invocation.result = body.decode("utf-8", "replace")
                if "lambda-runtime-function-error-type" in trailers:
                    invocation.errored = True
                    invocation.result = json.dumps(
                        {
                            "errorType": trailers["lambda-runtime-function-error-type"],
                            "errorMessage": trailers.get("lambda-runtime-function-error-body", ""),
                        }
                    )
            elif self.path in (f"{RUNTIME}/invocation/{invocation.request_id}/error", f"{RUNTIME}/init/error"):
                invocation.result = body.decode("utf-8", "replace")
                invocation.errored = True
                if self.path.endswith("/init/error"):
                    invocation.done.set()
            else:
                return self._reply(404, b"{}")
            self._reply(202, b'{"status":"OK"}')

    return Handler


def _invoke_lambda(self, event=None, on_chunk=None):
    """Runs the function's bootstrap for one event; returns (payload, errored, logs).

    `on_chunk`, when given, receives each chunk of a streamed answer as the function writes it
    (InvokeWithResponseStream); the returned payload is then the whole stream."""
    self.logs_backend.ensure_log_group(self.logs_group_name)
    if event is None:
        event = {}
    payload = event if isinstance(event, str) else json.dumps(event)
    invocation = _Invocation(self, payload)
    invocation.on_chunk = on_chunk
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(invocation))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}",
        "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_size),
        "AWS_LAMBDA_FUNCTION_VERSION": str(self.version),
        "AWS_LAMBDA_LOG_GROUP_NAME": self.logs_group_name,
        "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d')}/[{self.version}]{uuid.uuid4().hex}",
        "AWS_EXECUTION_ENV": "AWS_Lambda_provided.al2023",
        "AWS_REGION": self.region,
        "AWS_DEFAULT_REGION": self.region,
        # The function's own role's credentials: iam_check authorizes what it calls with them.
        **iam_check.credentials_for(self.role, self.function_name),
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{os.environ['MOTO_PORT']}",
        "LAMBDA_TASK_ROOT": "/var/task",
    }
    env.update({k: str(v) for k, v in self.environment_vars.items()})
    env.update(LAMBDA_ENV)
    code = _code_dir(self)
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                [os.path.join(code, "bootstrap")], cwd=code, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        except OSError as error:
            server.shutdown()
            message = f"cannot start the function's bootstrap: {error}"
            self.save_logs(message)
            return json.dumps({"errorType": "Runtime.InvalidEntrypoint", "errorMessage": message}), True, message
        # Lambda stops a function a little after its deadline; a process that exits early is a crash.
        hard_stop = invocation.deadline_ms / 1000 + 1.0
        while not invocation.done.wait(0.01):
            if process.poll() is not None or time.time() > hard_stop:
                break
        finished = invocation.done.is_set()
        timed_out = not finished and process.poll() is None
        process.kill()
        exit_code = process.wait()
        invocation.released.set()
        server.shutdown()
        server.server_close()
        output.seek(0)
        logs = output.read().decode("utf-8", "replace")
    if invocation.result is None:
        invocation.errored = True
        invocation.result = json.dumps(
            {"errorType": "Sandbox.Timedout", "errorMessage": f"Task timed out after {self.timeout}.00 seconds"}
            if timed_out
            else {"errorType": "Runtime.ExitError", "errorMessage": f"RequestId: {invocation.request_id} Error: Runtime exited with {exit_code}"}
        )
    self.save_logs(logs or "(no output)")
    if on_chunk is not None and not invocation.streamed and not invocation.errored:
        # A whole answer reaches a streaming caller as one chunk, as on Lambda.
        on_chunk(invocation.result.encode("utf-8"))
    return invocation.result, invocation.errored, logs


def _event_frame(event_type: str, payload: bytes, content_type: str) -> bytes:
    """One `application/vnd.amazon.eventstream` message: prelude (total and headers length,
    CRC32), string headers (type 7), payload, CRC32 of all before."""
    headers = b""
    for name, value in ((":event-type", event_type), (":content-type", content_type), (":message-type", "event")):
        n, v = name.encode(), value.encode()
        headers += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


class _ResponseStreaming:
    """Lambda's InvokeWithResponseStream (`POST /2021-11-15/functions/NAME/response-streaming-invocations`),
    which moto lacks, in front of moto's app: the function runs as for Invoke, and each chunk it
    streams is relayed as a `PayloadChunk` event when it arrives; an `InvokeComplete` event ends
    the stream, with `ErrorCode` / `ErrorDetails` when the function failed."""

    PATH = re.compile(r"^/2021-11-15/functions/([^/]+)/response-streaming-invocations/?$")

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        match = self.PATH.match(environ.get("PATH_INFO", ""))
        if not match or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        from urllib.parse import parse_qs, unquote

        from moto.awslambda.models import lambda_backends
        from moto.core import DEFAULT_ACCOUNT_ID

        scope = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
        region = scope.group(1) if scope else "us-east-1"
        qualifier = parse_qs(environ.get("QUERY_STRING", "")).get("Qualifier", [None])[0]
        try:
            fn = lambda_backends[DEFAULT_ACCOUNT_ID][region].get_function(unquote(match.group(1)), qualifier)
        except Exception as error:  # moto's not-found errors differ by version
            body = json.dumps({"Type": "User", "Message": f"Function not found: {error}"}).encode()
            start_response(
                "404 Not Found",
                [("Content-Type", "application/json"), ("x-amzn-ErrorType", "ResourceNotFoundException")],
            )
            return [body]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        event = environ["wsgi.input"].read(length).decode("utf-8") if length else "{}"
        chunks: queue.Queue = queue.Queue()
        outcome = {}

        def run():
            try:
                outcome["result"] = fn._invoke_lambda(event=event, on_chunk=chunks.put)
            finally:
                chunks.put(None)

        threading.Thread(target=run, daemon=True).start()
        start_response(
            "200 OK",
            [("Content-Type", "application/vnd.amazon.eventstream"), ("X-Amz-Executed-Version", str(fn.version))],
        )

        def events():
            while (chunk := chunks.get()) is not None:
                yield _event_frame("PayloadChunk", chunk, "application/octet-stream")
            complete = {}
            result, errored, _logs = outcome.get("result", ("{}", True, ""))
            if errored:
                try:
                    error = json.loads(result)
                except ValueError:
                    error = {"errorType": "Runtime.Unknown", "errorMessage": result}
                complete = {"ErrorCode": error.get("errorType", ""), "ErrorDetails": error.get("errorMessage", "")}
            yield _event_frame("InvokeComplete", json.dumps(complete).encode(), "application/json")

        return events()


class _TestApi:
    """`GET /_tokenfence/cfn-requests`: every request CloudFormation sent to a custom resource;
    `GET /_tokenfence/apigw`: the root URL of the deployed REST APIs (`apigw.py`) and the
    certificate to trust for it."""

    def __init__(self, app, data_plane):
        self.app = app
        self.data_plane = data_plane

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO")
        if path == "/_tokenfence/cfn-requests":
            body = json.dumps({"requests": cfn_lifecycle.REQUESTS}).encode()
        elif path == "/_tokenfence/apigw":
            body = json.dumps({"url": self.data_plane.url, "ca": self.data_plane.ca}).encode()
        else:
            return self.app(environ, start_response)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _install_step_functions():
    """Executing state machines, with JSONata and Bedrock runtime calls (see the docstring)."""
    from moto.core.config import default_user_config
    default_user_config["stepfunctions"] = {"execute_state_machine": True}

    import jsonata
    import moto.stepfunctions.parser.asl.jsonata.jsonata as jsonata_module
    import moto.stepfunctions.parser.asl.component.common.string.string_expression as string_expression
    import moto.stepfunctions.parser.asl.jsonata.validations as validations

    def eval_jsonata(expression):
        try:
            return jsonata.Jsonata(expression).evaluate(None)
        except Exception as ex:  # moto turns this into States.QueryEvaluationError
            raise jsonata_module.JSONataException("UNKNOWN", str(ex))

    for module in (jsonata_module, string_expression, validations):
        module.eval_jsonata_expression = eval_jsonata

    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service import StateTaskService
    StateTaskService._SERVICE_NAME_SFN_TO_BOTO_OVERRIDES["bedrockruntime"] = "bedrock-runtime"
    import moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk as aws_sdk
    original_client = aws_sdk.boto_client_for

    execution_role = threading.local()

    def boto_client_for(region, service, state_credentials=None):
        if service == "bedrock-runtime" and iam_check.BEDROCK["upstream"]:
            import boto3
            from botocore.config import Config
            # Signed with the execution role's credentials and sent through this launcher,
            # which authorizes the call against that role and forwards it to the stub.
            credentials = iam_check.credentials_for(execution_role.arn, "states-execution")
            return boto3.client(
                service, region_name=region, endpoint_url=f"http://127.0.0.1:{os.environ['MOTO_PORT']}",
                aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=credentials["AWS_SESSION_TOKEN"],
                config=Config(retries={"max_attempts": 0, "total_max_attempts": 1}, read_timeout=130),
            )
        return original_client(region=region, service=service, state_credentials=state_credentials)

    aws_sdk.boto_client_for = boto_client_for

    # Step Functions names SDK parameters and results in PascalCase (`ModelId`, `Usage.InputTokens`)
    # whatever the API's own casing; moto's aws-sdk task passes them to boto3 as they are and
    # returns boto3's casing. Convert both ways with the operation's shapes, as Step Functions does.
    import botocore.session
    original_eval = aws_sdk.StateTaskServiceAwsSdk._eval_service_task
    session = botocore.session.get_session()

    def eval_service_task(self, env, resource_runtime_part, normalised_parameters, state_credentials):
        execution_role.arn = env.states.context_object.context_object_data["Execution"]["RoleArn"]
        action = self.resource.api_action
        operation = session.get_service_model(self._get_boto_service_name()).operation_model(action[0].upper() + action[1:])
        self._to_boto_request(normalised_parameters, operation.input_shape)
        original_eval(self, env, resource_runtime_part, normalised_parameters, state_credentials)
        if operation.output_shape is not None and isinstance(env.stack[-1], dict):
            self._from_boto_response(env.stack[-1], operation.output_shape)

    aws_sdk.StateTaskServiceAwsSdk._eval_service_task = eval_service_task

    # CloudFormation creates state machines in the backend that does not execute them.
    from moto.stepfunctions.models import StateMachine
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends
    from moto.stepfunctions.utils import cfn_to_api_tags

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        properties = cloudformation_json["Properties"]
        backend = stepfunctions_parser_backends[account_id][region_name]
        return backend.create_state_machine(
            properties.get("StateMachineName", resource_name),
            properties.get("DefinitionString", ""),
            properties.get("RoleArn", ""),
            tags=cfn_to_api_tags(properties.get("Tags", [])),
        )

    @classmethod
    def delete_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name):
        stepfunctions_parser_backends[account_id][region_name].delete_state_machine(resource_name)

    StateMachine.create_from_cloudformation_json = create_from_cloudformation_json
    StateMachine.delete_from_cloudformation_json = delete_from_cloudformation_json

if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    serial = "--serial" in sys.argv[3:]
    args = sys.argv[3:]
    for i, arg in enumerate(args):
        if arg == "--lambda-env":
            key, _, value = args[i + 1].partition("=")
            LAMBDA_ENV[key] = value
        if arg == "--bedrock":
            iam_check.BEDROCK["upstream"] = args[i + 1]
    os.environ["MOTO_PORT"] = str(port)
    import moto.settings
    from moto.awslambda.models import LambdaFunction

    moto.settings.moto_server_host = lambda: "http://127.0.0.1"
    cfn_lifecycle.install()
    LambdaFunction._invoke_lambda = _invoke_lambda
    iam_check.install_event_source_mapping_check()
    _install_step_functions()
    apigw.install()
    data_plane = apigw.DataPlane(tempfile.gettempdir())
    app = _TestApi(iam_check.IamCheck(_ResponseStreaming(DomainDispatcherApplication(create_backend_app))), data_plane)
    run_simple(host, port, app, threaded=not serial, use_reloader=False)
