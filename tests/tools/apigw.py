"""API Gateway REST for the deployed API: what moto stores but does not serve.

moto keeps a REST API's resources and methods but executes none of them, and its CloudFormation
silently skips `AWS::ApiGateway::Authorizer`, `UsagePlan`, `UsagePlanKey` and `Stage`, drops a
method's `AuthorizerId` and its integration's `ResponseTransferMode`, and a RestApi's
`ApiKeySourceType`. `install()` adds those to moto's CloudFormation, backed by moto's own API
Gateway backend, so `get-authorizers`, `get-usage-plans`, `get-stages` answer as on AWS.

`DataPlane` then serves the deployed APIs over HTTPS (a certificate for 127.0.0.1 from a test
CA written beside moto's log: botocore sends bearer keys to HTTPS endpoints only) at
`https://127.0.0.1:PORT/{restApiId}/{stage}/...`, the stage being the first path segment as in
`https://{restApiId}.execute-api.{region}.amazonaws.com/{stage}`. Each request goes the way API
Gateway documents for REST APIs:

1. The stage must exist (else 403 `Forbidden`); the path is matched against the API's resources,
   a literal segment before a `{param}`, and the method against the resource's methods (`ANY`
   too); no match is 403 `Missing Authentication Token`, as API Gateway answers an unknown route.
2. `AuthorizationType: CUSTOM`: the REQUEST authorizer's Lambda is invoked with the documented
   event (headers, path and query parameters, `methodArn`); its failure `Unauthorized` is 401,
   any other failure 500, and a policy that does not allow `execute-api:Invoke` on `methodArn`
   (or denies it) 403. Results are not cached (the rendered authorizer has TTL 0).
3. `ApiKeyRequired`: the key is the authorizer's `usageIdentifierKey` when the API's
   `ApiKeySourceType` is `AUTHORIZER`, else the `x-api-key` header; it must be an enabled key in a
   usage plan of this API and stage, else 403 `Forbidden`.
4. `AWS_PROXY` integrations invoke the function named in the integration URI with the REST proxy
   event (`requestContext.identity.apiKeyId` is the validated key's ID, `requestContext.authorizer`
   the authorizer's principal and context): `.../2015-03-31/functions/ARN/invocations` through
   Lambda's Invoke, answered whole from `{statusCode, headers, multiValueHeaders, body,
   isBase64Encoded}` (a function error or a malformed answer is 502 `Internal server error`; past
   the 29-second integration timeout, 504); `.../2021-11-15/functions/ARN/response-streaming-
   invocations` with `ResponseTransferMode: STREAM` through InvokeWithResponseStream, answered
   from the function's JSON prelude (status, headers) and, after its eight NUL bytes, the body
   relayed chunk by chunk as the function writes it (chunked transfer encoding; 5 minutes idle
   ends it). A caller that hangs up does not stop the function: it runs on to its end, as on
   Lambda.

Not played: request validators and models (moto's CloudFormation drops them), usage plan
throttles and quotas, stage throttling, authorizer result caching, and the deployment snapshot (the
stage serves the API's current methods, not those of its deployment).
"""
import base64
import datetime
import fnmatch
import ipaddress
import json
import os
import queue
import re
import socket
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

from moto.core.common_models import CloudFormationModel

ACCOUNT = "123456789012"
INTEGRATION_TIMEOUT_S = 29
STREAM_IDLE_S = 300
HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive"}
# Headers API Gateway sets itself: an integration's are passed as `x-amzn-Remapped-NAME`.
REMAPPED = {"date", "server", "x-amzn-requestid", "www-authenticate"}


def _response_headers(answer, request_id):
    """An integration answer's `headers` and `multiValueHeaders`, as API Gateway sends them on."""
    headers = dict(answer.get("headers") or {})
    for name, values in (answer.get("multiValueHeaders") or {}).items():
        headers[name] = ", ".join(values)
    sent = []
    for name, value in headers.items():
        if name.lower() in HOP_BY_HOP:
            continue
        sent.append((f"x-amzn-Remapped-{name}" if name.lower() in REMAPPED else name, value))
    return sent + [("x-amzn-RequestId", request_id)]


def _backend(account_id, region_name):
    from moto.apigateway.models import apigateway_backends

    return apigateway_backends[account_id][region_name]


def _deployment_id(value) -> str:
    # moto's Deployment has no physical ID: a `Ref` to one resolves to the object itself.
    return str(getattr(value, "id", value) or "")


def _ignore_missing(action):
    try:
        action()
    except Exception:  # already gone with its API: deleting is idempotent
        pass


class Authorizer(CloudFormationModel):
    """`AWS::ApiGateway::Authorizer` in moto's API Gateway backend; updated in place."""

    __module__ = "moto.apigateway.tokenfence"

    def __init__(self, api_id, authorizer):
        self.api_id = api_id
        self.authorizer = authorizer

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::ApiGateway::Authorizer"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "AuthorizerId"

    @property
    def physical_resource_id(self) -> str:
        return self.authorizer.id

    def get_cfn_attribute(self, attribute_name: str):
        return self.authorizer.id

    @staticmethod
    def _apply(authorizer, props):
        authorizer.type = props.get("Type", "TOKEN")
        authorizer.authorizer_uri = props.get("AuthorizerUri")
        authorizer.authorizer_credentials = props.get("AuthorizerCredentials")
        authorizer.identity_source = props.get("IdentitySource")
        ttl = props.get("AuthorizerResultTtlInSeconds")
        authorizer.authorizer_result_ttl = int(ttl) if ttl is not None else 300

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        props = cloudformation_json["Properties"]
        api_id = props["RestApiId"]
        authorizer = _backend(account_id, region_name).create_authorizer(
            api_id, props.get("Name", resource_name), props.get("Type", "TOKEN")
        )
        cls._apply(authorizer, props)
        return cls(api_id, authorizer)

    @classmethod
    def update_from_cloudformation_json(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
        cls._apply(original_resource.authorizer, cloudformation_json["Properties"])
        return original_resource

    def delete(self, account_id, region_name):
        _ignore_missing(lambda: _backend(account_id, region_name).delete_authorizer(self.api_id, self.authorizer.id))


class Stage(CloudFormationModel):
    """`AWS::ApiGateway::Stage`; `Ref` is the stage name, as on AWS. An update points it at its
    new deployment in place."""

    __module__ = "moto.apigateway.tokenfence"

    def __init__(self, api_id, name):
        self.api_id = api_id
        self.name = name

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::ApiGateway::Stage"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "StageName"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return False

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        props = cloudformation_json["Properties"]
        api_id, name = props["RestApiId"], props.get("StageName", resource_name)
        _backend(account_id, region_name).create_stage(
            api_id,
            name,
            _deployment_id(props.get("DeploymentId")),
            variables=props.get("Variables") or {},
            description=props.get("Description", ""),
            tags={t["Key"]: t["Value"] for t in props.get("Tags", [])},
        )
        return cls(api_id, name)

    @classmethod
    def update_from_cloudformation_json(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
        props = cloudformation_json["Properties"]
        stage = _backend(account_id, region_name).get_stage(original_resource.api_id, original_resource.name)
        stage.deployment_id = _deployment_id(props.get("DeploymentId"))
        stage.variables = props.get("Variables") or {}
        return original_resource

    def delete(self, account_id, region_name):
        _ignore_missing(lambda: _backend(account_id, region_name).delete_stage(self.api_id, self.name))


class UsagePlan(CloudFormationModel):
    """`AWS::ApiGateway::UsagePlan`: its API stages, in moto's backend; updated in place."""

    __module__ = "moto.apigateway.tokenfence"

    def __init__(self, plan):
        self.plan = plan

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::ApiGateway::UsagePlan"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "UsagePlanName"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "Id"

    @property
    def physical_resource_id(self) -> str:
        return self.plan.id

    def get_cfn_attribute(self, attribute_name: str):
        return self.plan.id

    @staticmethod
    def _stages(props):
        return [{"apiId": s["ApiId"], "stage": s["Stage"]} for s in props.get("ApiStages", [])]

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        props = cloudformation_json["Properties"]
        plan = _backend(account_id, region_name).create_usage_plan(
            {
                "name": props.get("UsagePlanName", resource_name),
                "description": props.get("Description"),
                "apiStages": cls._stages(props),
                "tags": {t["Key"]: t["Value"] for t in props.get("Tags", [])},
            }
        )
        return cls(plan)

    @classmethod
    def update_from_cloudformation_json(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
        original_resource.plan.api_stages = cls._stages(cloudformation_json["Properties"])
        return original_resource

    def delete(self, account_id, region_name):
        backend = _backend(account_id, region_name)
        _ignore_missing(lambda: backend.usage_plan_keys.pop(self.plan.id, None))
        _ignore_missing(lambda: backend.delete_usage_plan(self.plan.id))


class UsagePlanKey(CloudFormationModel):
    """`AWS::ApiGateway::UsagePlanKey`: a key in a plan (every property replaces it)."""

    __module__ = "moto.apigateway.tokenfence"

    def __init__(self, plan_id, key_id):
        self.plan_id = plan_id
        self.key_id = key_id

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::ApiGateway::UsagePlanKey"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "UsagePlanKey"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return False

    @property
    def physical_resource_id(self) -> str:
        return self.key_id

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        props = cloudformation_json["Properties"]
        _backend(account_id, region_name).create_usage_plan_key(
            props["UsagePlanId"], {"keyId": props["KeyId"], "keyType": props.get("KeyType", "API_KEY")}
        )
        return cls(props["UsagePlanId"], props["KeyId"])

    @classmethod
    def update_from_cloudformation_json(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
        original_resource.delete(account_id, region_name)
        return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)

    def delete(self, account_id, region_name):
        _ignore_missing(lambda: _backend(account_id, region_name).delete_usage_plan_key(self.plan_id, self.key_id))


def install():
    """Adds the types above to moto's CloudFormation and keeps what its Method and RestApi drop."""
    from moto.apigateway.models import Method, RestAPI

    original_method = Method.create_from_cloudformation_json.__func__

    def put_method(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        method = original_method(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        props = cloudformation_json["Properties"]
        method.authorizer_id = props.get("AuthorizerId")
        method.request_parameters = props.get("RequestParameters")
        method.method_integration.response_transfer_mode = props["Integration"].get("ResponseTransferMode", "BUFFERED")
        return method

    def update_method(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
        # put_method replaces the resource's method of that verb, integration included.
        return put_method(cls, new_resource_name, cloudformation_json, account_id, region_name)

    Method.create_from_cloudformation_json = classmethod(put_method)
    Method.update_from_cloudformation_json = classmethod(update_method)

    original_api = RestAPI.create_from_cloudformation_json.__func__

    def create_api(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        api = original_api(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        api.api_key_source = cloudformation_json["Properties"].get("ApiKeySourceType", "HEADER")
        return api

    RestAPI.create_from_cloudformation_json = classmethod(create_api)


def _certificate(directory):
    """A test CA and a server certificate for 127.0.0.1 signed by it, made with `cryptography`:
    (CA certificate, server certificate, server key) paths. Clients trust the CA (rustls refuses
    a CA certificate served as the server's own)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def builder(subject, issuer, public_key):
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("tokenfence test CA")
    ca = (
        builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        builder(name("127.0.0.1"), ca_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = [os.path.join(directory, f"apigw-{part}.pem") for part in ("ca", "cert", "key")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


class _Refusal(Exception):
    """An answer API Gateway gives itself: status, `x-amzn-ErrorType`, body."""

    def __init__(self, status, error_type, body):
        super().__init__(error_type)
        self.status, self.error_type, self.body = status, error_type, body


FORBIDDEN = lambda: _Refusal(403, "ForbiddenException", {"message": "Forbidden"})  # noqa: E731


def _find_api(api_id):
    from moto.apigateway.models import apigateway_backends

    for region, backend in apigateway_backends[ACCOUNT].items():
        if api_id in backend.apis:
            return region, backend, backend.apis[api_id]
    raise FORBIDDEN()


def _match(api, path, verb):
    """(resource, method, path parameters) for a request path, API Gateway's way: segment by
    segment, a literal before a `{param}`; `{param+}` takes the rest."""
    segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
    children = {}
    root = None
    for resource in api.resources.values():
        if resource.parent_id is None:
            root = resource
        else:
            children.setdefault(resource.parent_id, []).append(resource)

    def walk(resource, rest, params):
        if not rest:
            return resource, params
        kids = children.get(resource.id, [])
        ordered = sorted(kids, key=lambda r: r.path_part.startswith("{"))
        for child in ordered:
            part = child.path_part
            if part.startswith("{") and part.endswith("+}"):
                return child, {**params, part[1:-2]: "/".join(rest)}
            if part.startswith("{"):
                found = walk(child, rest[1:], {**params, part[1:-1]: rest[0]})
            elif part == rest[0]:
                found = walk(child, rest[1:], params)
            else:
                continue
            if found:
                return found
        return None

    found = walk(root, segments, {}) if root else None
    if not found:
        raise _Refusal(403, "MissingAuthenticationTokenException", {"message": "Missing Authentication Token"})
    resource, params = found
    method = resource.resource_methods.get(verb) or resource.resource_methods.get("ANY")
    if method is None:
        raise _Refusal(403, "MissingAuthenticationTokenException", {"message": "Missing Authentication Token"})
    return resource, method, params


def _function(region, uri):
    """The Lambda function an integration or authorizer URI names, and whether it streams."""
    from moto.awslambda.models import lambda_backends

    match = re.search(r":lambda:path/(2015-03-31|2021-11-15)/functions/(.+)/(invocations|response-streaming-invocations)$", uri or "")
    if not match:
        raise _Refusal(500, "InternalServerErrorException", {"message": "Internal server error"})
    fn = lambda_backends[ACCOUNT][region].get_function(match.group(2))
    return fn, match.group(3) == "response-streaming-invocations"


def _allows(policy, method_arn):
    allowed = False
    for statement in (policy or {}).get("Statement", []):
        actions = statement.get("Action", [])
        resources = statement.get("Resource", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        if not any(fnmatch.fnmatchcase("execute-api:Invoke", a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(method_arn, r) for r in resources):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


class DataPlane:
    """The HTTPS server; `url` is its root, `ca` the certificate clients must trust."""

    def __init__(self, directory):
        self.ca, cert, key = _certificate(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request, client_address):
                # The TLS handshake runs on the connection's own thread, not the accept loop.
                try:
                    request = context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                super().finish_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), _Handler)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._serve()

    def do_POST(self):
        self._serve()

    def do_PUT(self):
        self._serve()

    def do_DELETE(self):
        self._serve()

    def _send(self, status, headers, body: bytes):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self):
        request_id = str(uuid.uuid4())
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            self._route(request_id, body)
        except _Refusal as refusal:
            self._send(
                refusal.status,
                [("Content-Type", "application/json"), ("x-amzn-ErrorType", refusal.error_type), ("x-amzn-RequestId", request_id)],
                json.dumps(refusal.body).encode(),
            )

    def _route(self, request_id, body):
        url = urlsplit(self.path)
        parts = url.path.lstrip("/").split("/", 2)
        if len(parts) < 2:
            raise FORBIDDEN()
        api_id, stage_name = parts[0], parts[1]
        path = "/" + (parts[2] if len(parts) > 2 else "")
        region, backend, api = _find_api(api_id)
        if stage_name not in api.stages:
            raise FORBIDDEN()
        stage = api.stages[stage_name]
        resource, method, path_params = _match(api, path, self.command)
        decoded_path = unquote(path)
        method_arn = f"arn:aws:execute-api:{region}:{ACCOUNT}:{api_id}/{stage_name}/{self.command}/{decoded_path.lstrip('/')}"
        headers, multi = {}, {}
        for name, value in self.headers.items():
            multi.setdefault(name, []).append(value)
            headers[name] = value
        query = parse_qsl(url.query, keep_blank_values=True)
        multi_query = {}
        for k, v in query:
            multi_query.setdefault(k, []).append(v)
        context = {
            "resourceId": resource.id,
            "resourcePath": resource.get_path(),
            "httpMethod": self.command,
            "extendedRequestId": base64.b64encode(uuid.uuid4().bytes[:10]).decode(),
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "path": f"/{stage_name}{decoded_path}",
            "accountId": ACCOUNT,
            "protocol": "HTTP/1.1",
            "stage": stage_name,
            "domainPrefix": api_id,
            "requestTimeEpoch": int(time.time() * 1000),
            "requestId": request_id,
            "identity": {"sourceIp": self.client_address[0], "userAgent": headers.get("User-Agent"), "apiKey": None, "apiKeyId": None},
            "domainName": f"{api_id}.execute-api.{region}.amazonaws.com",
            "apiId": api_id,
        }
        common = {
            "resource": resource.get_path(),
            "path": decoded_path,
            "httpMethod": self.command,
            "headers": headers,
            "multiValueHeaders": multi,
            "queryStringParameters": dict(query) or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": path_params or None,
            "stageVariables": stage.variables or None,
        }

        authorizer_context = None
        key_value = headers.get("x-api-key") or next((v for k, v in headers.items() if k.lower() == "x-api-key"), None)
        if (method.authorization_type or "NONE") == "CUSTOM":
            authorizer = api.authorizers.get(method.authorizer_id)
            if authorizer is None:
                raise _Refusal(500, "AuthorizerConfigurationException", {"message": None})
            fn, _ = _function(region, authorizer.authorizer_uri)
            event = {"type": "REQUEST", "methodArn": method_arn, **common,
                     "queryStringParameters": dict(query), "multiValueQueryStringParameters": multi_query,
                     "pathParameters": path_params, "stageVariables": stage.variables or {},
                     "requestContext": context}
            result, errored, _logs = fn._invoke_lambda(event=json.dumps(event))
            if errored:
                message = ""
                try:
                    message = json.loads(result).get("errorMessage", "")
                except (ValueError, AttributeError):
                    pass
                if message == "Unauthorized":
                    raise _Refusal(401, "UnauthorizedException", {"message": "Unauthorized"})
                raise _Refusal(500, "AuthorizerConfigurationException", {"message": None})
            try:
                answer = json.loads(result)
            except ValueError:
                raise _Refusal(500, "AuthorizerConfigurationException", {"message": None})
            if not _allows(answer.get("policyDocument"), method_arn):
                raise _Refusal(403, "AccessDeniedException", {"Message": "User is not authorized to access this resource with an explicit deny"})
            authorizer_context = {"principalId": answer.get("principalId"), **(answer.get("context") or {}), "integrationLatency": 0}
            if api.api_key_source == "AUTHORIZER":
                key_value = answer.get("usageIdentifierKey")

        if method.api_key_required:
            key = next((k for k in backend.keys.values() if key_value and k.value == key_value), None)
            if key is None or not key.enabled:
                raise FORBIDDEN()
            plans = backend.get_usage_plans(api_key_id=key.id)
            if not any(s.get("apiId") == api_id and s.get("stage") == stage_name for p in plans for s in p.api_stages):
                raise FORBIDDEN()
            context["identity"]["apiKey"] = key.value
            context["identity"]["apiKeyId"] = key.id
        if authorizer_context is not None:
            context["authorizer"] = authorizer_context

        integration = method.method_integration
        if integration is None or integration.integration_type != "AWS_PROXY":
            raise _Refusal(500, "InternalServerErrorException", {"message": "Internal server error"})
        fn, streams = _function(region, integration.uri)
        text = body.decode("utf-8", "surrogateescape")
        try:
            text.encode("utf-8")
            event = {**common, "requestContext": context, "body": text if body else None, "isBase64Encoded": False}
        except UnicodeEncodeError:
            event = {**common, "requestContext": context, "body": base64.b64encode(body).decode(), "isBase64Encoded": True}
        if streams and getattr(integration, "response_transfer_mode", "BUFFERED") == "STREAM":
            return self._stream(fn, event, request_id)
        self._whole(fn, event, request_id)

    def _whole(self, fn, event, request_id):
        outcome = {}
        done = threading.Event()

        def run():
            try:
                outcome["result"] = fn._invoke_lambda(event=json.dumps(event))
            finally:
                done.set()

        threading.Thread(target=run, daemon=True).start()
        if not done.wait(INTEGRATION_TIMEOUT_S):
            raise _Refusal(504, "InternalServerErrorException", {"message": "Endpoint request timed out"})
        result, errored, _logs = outcome.get("result", ("", True, ""))
        try:
            answer = json.loads(result)
            status = int(answer["statusCode"])
        except (ValueError, KeyError, TypeError):
            errored = True
        if errored:
            raise _Refusal(502, "InternalServerErrorException", {"message": "Internal server error"})
        raw = answer.get("body") or ""
        body = base64.b64decode(raw) if answer.get("isBase64Encoded") else raw.encode("utf-8")
        self._send(status, _response_headers(answer, request_id), body)

    def _stream(self, fn, event, request_id):
        chunks: queue.Queue = queue.Queue()
        outcome = {}

        def run():
            try:
                outcome["result"] = fn._invoke_lambda(event=json.dumps(event), on_chunk=chunks.put)
            finally:
                chunks.put(None)

        threading.Thread(target=run, daemon=True).start()
        head = b""
        while b"\0" * 8 not in head:
            try:
                chunk = chunks.get(timeout=STREAM_IDLE_S)
            except queue.Empty:
                raise _Refusal(504, "InternalServerErrorException", {"message": "Endpoint request timed out"})
            if chunk is None:
                raise _Refusal(502, "InternalServerErrorException", {"message": "Internal server error"})
            head += chunk
        prelude, _, rest = head.partition(b"\0" * 8)
        try:
            meta = json.loads(prelude)
            status = int(meta.get("statusCode", 200))
        except (ValueError, TypeError):
            raise _Refusal(502, "InternalServerErrorException", {"message": "Internal server error"})
        self.send_response(status)
        for name, value in _response_headers(meta, request_id):
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        gone = False

        def relay(data):
            nonlocal gone
            if gone or not data:
                return
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            except (OSError, ssl.SSLError):
                # The caller hung up; the function runs on to its end regardless.
                gone = True

        relay(rest)
        while True:
            try:
                chunk = chunks.get(timeout=STREAM_IDLE_S)
            except queue.Empty:
                break
            if chunk is None:
                break
            relay(chunk)
        _result, errored, _logs = outcome.get("result", ("", True, ""))
        if gone or errored:
            # A function that failed mid-stream: the caller's stream is cut, not ended.
            self.close_connection = True
            return
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (OSError, ssl.SSLError):
            self.close_connection = True
