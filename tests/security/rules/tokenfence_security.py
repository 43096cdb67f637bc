"""tokenfence's security baseline as cfn-lint rules (`cfn-lint --append-rules tests/security/rules`).

They run with every cfn-lint call the tests make: on every rendered example and on `templates/`.
`tests/security/fixtures/insecure.yaml` breaks each rule once; a test asserts each is reported.
"""

from cfnlint.rules import CloudFormationLintRule, RuleMatch

POLICY_TYPES = ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")


def _as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _policy_documents(resource_type, properties):
    """(path suffix, policy document) pairs of an IAM resource."""
    if resource_type == "AWS::IAM::Role":
        for i, policy in enumerate(_as_list(properties.get("Policies"))):
            if isinstance(policy, dict):
                yield ["Properties", "Policies", i, "PolicyDocument"], policy.get("PolicyDocument", {})
    else:
        yield ["Properties", "PolicyDocument"], properties.get("PolicyDocument", {})


def _statements(cfn):
    for name, resource in cfn.get_resources(POLICY_TYPES).items():
        properties = resource.get("Properties", {}) or {}
        for path, document in _policy_documents(resource["Type"], properties):
            if not isinstance(document, dict):
                continue
            for i, statement in enumerate(_as_list(document.get("Statement"))):
                if isinstance(statement, dict) and statement.get("Effect", "Allow") == "Allow":
                    yield ["Resources", name, *path, "Statement", i], statement


class NoWildcardActions(CloudFormationLintRule):
    id = "E9101"
    shortdesc = "IAM statements name their actions"
    description = "No IAM statement allows `*`, `service:*` on Bedrock, or any `*`-only action"
    source_url = "https://docs.aws.amazon.com/IAM/latest/UserGuide/best-practices.html#grant-least-privilege"
    tags = ["tokenfence", "security", "iam"]

    def match(self, cfn):
        matches = []
        for path, statement in _statements(cfn):
            for action in _as_list(statement.get("Action")):
                if isinstance(action, str) and (action == "*" or action.lower().startswith("bedrock:*") or action.endswith(":*")):
                    matches.append(RuleMatch(path + ["Action"], f"IAM statement allows `{action}`: name the actions"))
            if "NotAction" in statement:
                matches.append(RuleMatch(path + ["NotAction"], "IAM statement uses `NotAction` with Allow"))
        return matches


class NoWildcardBedrockResources(CloudFormationLintRule):
    id = "E9102"
    shortdesc = "Bedrock actions are scoped to model and profile ARNs"
    description = "A statement allowing bedrock: actions must not have `Resource: *`"
    source_url = "https://docs.aws.amazon.com/bedrock/latest/userguide/security_iam_id-based-policy-examples.html"
    tags = ["tokenfence", "security", "iam", "bedrock"]

    def match(self, cfn):
        matches = []
        for path, statement in _statements(cfn):
            actions = [a for a in _as_list(statement.get("Action")) if isinstance(a, str)]
            if any(a.lower().startswith("bedrock:") for a in actions):
                if any(r == "*" for r in _as_list(statement.get("Resource"))):
                    matches.append(RuleMatch(path + ["Resource"], "Bedrock actions on `Resource: *`: list the model and profile ARNs"))
        return matches


class EncryptedAtRest(CloudFormationLintRule):
    id = "E9103"
    shortdesc = "Tables, queues and topics are encrypted at rest"
    description = "DynamoDB SSESpecification.SSEEnabled, SQS KMS or SQS-managed SSE, SNS KmsMasterKeyId"
    source_url = "https://docs.aws.amazon.com/wellarchitected/latest/security-pillar/protecting-data-at-rest.html"
    tags = ["tokenfence", "security", "encryption"]

    def match(self, cfn):
        matches = []
        for name, resource in cfn.get_resources(["AWS::DynamoDB::Table"]).items():
            sse = (resource.get("Properties") or {}).get("SSESpecification") or {}
            if str(sse.get("SSEEnabled")).lower() != "true":
                matches.append(RuleMatch(["Resources", name, "Properties"], f"table `{name}` has no SSESpecification.SSEEnabled: true"))
        for name, resource in cfn.get_resources(["AWS::SQS::Queue"]).items():
            props = resource.get("Properties") or {}
            if "KmsMasterKeyId" not in props and str(props.get("SqsManagedSseEnabled")).lower() != "true":
                matches.append(RuleMatch(["Resources", name, "Properties"], f"queue `{name}` is not encrypted (KmsMasterKeyId or SqsManagedSseEnabled)"))
        for name, resource in cfn.get_resources(["AWS::SNS::Topic"]).items():
            if "KmsMasterKeyId" not in (resource.get("Properties") or {}):
                matches.append(RuleMatch(["Resources", name, "Properties"], f"topic `{name}` has no KmsMasterKeyId"))
        return matches


class ApiRequiresCredentials(CloudFormationLintRule):
    id = "E9104"
    shortdesc = "Every REST API method requires an API key or IAM"
    description = "AWS::ApiGateway::Method: ApiKeyRequired true or an authorizer (AWS_IAM, COGNITO_USER_POOLS, CUSTOM)"
    source_url = "https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-control-access-to-api.html"
    tags = ["tokenfence", "security", "apigateway"]

    def match(self, cfn):
        matches = []
        for name, resource in cfn.get_resources(["AWS::ApiGateway::Method"]).items():
            props = resource.get("Properties") or {}
            if props.get("HttpMethod") == "OPTIONS":
                continue
            keyed = str(props.get("ApiKeyRequired")).lower() == "true"
            authorized = props.get("AuthorizationType", "NONE") != "NONE"
            if not (keyed or authorized):
                matches.append(RuleMatch(["Resources", name, "Properties"], f"method `{name}` is open: require an API key or IAM"))
        return matches


class QueuesFeedingLambdaHaveDlq(CloudFormationLintRule):
    id = "E9105"
    shortdesc = "Queues consumed by Lambda have a dead-letter queue"
    description = "An SQS queue used by an event source mapping has a RedrivePolicy"
    source_url = "https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html"
    tags = ["tokenfence", "security", "sqs"]

    def match(self, cfn):
        matches = []
        queues = cfn.get_resources(["AWS::SQS::Queue"])
        for name, mapping in cfn.get_resources(["AWS::Lambda::EventSourceMapping"]).items():
            source = (mapping.get("Properties") or {}).get("EventSourceArn")
            queue = None
            if isinstance(source, dict):
                target = source.get("Fn::GetAtt") or source.get("Ref")
                queue = target[0] if isinstance(target, list) else (target.split(".")[0] if isinstance(target, str) else None)
            if queue in queues and "RedrivePolicy" not in (queues[queue].get("Properties") or {}):
                matches.append(RuleMatch(["Resources", queue, "Properties"], f"queue `{queue}` feeds `{name}` without a RedrivePolicy (DLQ)"))
        return matches


class LogsAreRetained(CloudFormationLintRule):
    id = "E9106"
    shortdesc = "Lambda logs have a retention period"
    description = "Every log group sets RetentionInDays, and every function logs to a declared group"
    source_url = "https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-loggroups.html"
    tags = ["tokenfence", "security", "logs"]

    def match(self, cfn):
        matches = []
        groups = cfn.get_resources(["AWS::Logs::LogGroup"])
        for name, group in groups.items():
            if "RetentionInDays" not in (group.get("Properties") or {}):
                matches.append(RuleMatch(["Resources", name, "Properties"], f"log group `{name}` keeps logs forever: set RetentionInDays"))
        for name, function in cfn.get_resources(["AWS::Lambda::Function"]).items():
            target = ((function.get("Properties") or {}).get("LoggingConfig") or {}).get("LogGroup")
            if not (isinstance(target, dict) and target.get("Ref") in groups):
                matches.append(RuleMatch(["Resources", name, "Properties"], f"function `{name}` logs to an undeclared group (no retention): set LoggingConfig.LogGroup"))
        return matches
