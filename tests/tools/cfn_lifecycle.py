"""CloudFormation's custom resource lifecycle, as AWS documents it, for moto's CloudFormation.

moto sends custom resources a Create only, on a background thread, and ignores their answers'
PhysicalResourceId and FAILED status. `install()` replaces that with CloudFormation's contract:

- Requests: Create, Update (ResourceProperties and OldResourceProperties, the PhysicalResourceId
  last returned) and Delete, each with a new RequestId, sent to the ServiceToken function as an
  asynchronous invocation: a function error (crash, timeout, error answer) is retried by Lambda
  twice more (after 1 s and 2 s here; Lambda waits about 1 and 2 minutes). CloudFormation takes
  the first answer PUT to the ResponseURL for that RequestId, and waits for it at most the
  resource's `ServiceTimeout` (default 3600 s): an answer after it, or none, fails the resource.
  An answer must name the RequestId, StackId and LogicalResourceId, carry a PhysicalResourceId,
  and stay within 4,096 bytes ("Response object is too long."), or the resource fails.
- Create of a stack: resources in dependency order. moto orders by `DependsOn` only and creates
  a resource that a `Ref` or `Fn::GetAtt` names on demand, ignoring that resource's own
  `DependsOn` (a stage's deployment would be created before the methods it waits for); here a
  resource created on demand gets its `DependsOn` created first, as CloudFormation orders it. A failed one stops the operation and rolls
  the stack back: a Delete to the failed resource (with the PhysicalResourceId of its FAILED
  answer, or its logical ID's default when it gave none), then Deletes of everything created,
  dependents first; the stack ends ROLLBACK_COMPLETE (ROLLBACK_FAILED if a Delete fails).
- Update of a stack: resources are added and updated in dependency order (`DependsOn`), where
  moto adds all before it updates any. Removed resources and replaced ones (an Update answered with a new
  PhysicalResourceId) are deleted only in the cleanup phase, after every resource succeeded. A
  failed Update or Create stops the operation and rolls back: every custom resource already
  updated (the failed one too) gets an Update with the old properties as ResourceProperties and
  the new as OldResourceProperties; replaced ones go back to their old PhysicalResourceId;
  resources removed by the update were never deleted; then the rollback's cleanup deletes what
  the failed update created (and the replacements). UPDATE_ROLLBACK_COMPLETE, or
  UPDATE_ROLLBACK_FAILED when a rollback Update fails. A failed Delete in an update's cleanup
  does not fail the update, as on AWS.
- Change sets (`aws cloudformation deploy`): executing one is the equivalent CreateStack or
  UpdateStack, with the lifecycle above, Outputs, Exports and imports (moto applies change sets
  to the resource map alone, without them).
- Delete of a stack: custom resources dependents first, before the function serving them goes; a
  failed Delete leaves the stack DELETE_FAILED with the reason.

Every request sent is kept in `REQUESTS` (served at `GET /_tokenfence/cfn-requests`) with the
number of invocations Lambda made for it (`Attempts`), for the tests to check the order and
content of what CloudFormation sent.
"""
import json
import threading
import time
import uuid

STACKS: dict = {}
REQUESTS: list[dict] = []
_answers: dict[str, dict] = {}
_answered = threading.Condition()
_order = iter(range(1, 1 << 62))

DEFAULT_SERVICE_TIMEOUT = 3600
RETRY_DELAYS = (1.0, 2.0)
MAX_RESPONSE_BYTES = 4096


class CustomResourceFailed(Exception):
    def __init__(self, resource, reason):
        super().__init__(f"{resource.logical_id}: {reason}")
        self.resource = resource
        self.reason = reason


class Operation:
    """What one stack operation did to its custom resources, for its cleanup or its rollback."""

    def __init__(self, kind):
        self.kind = kind  # create | update | rollback | delete
        self.failure = None  # (logical ID, reason) of the resource that failed
        self.failed_create = None  # a resource whose Create failed in this operation
        self.created = []  # resources created by this operation, in order
        self.updated = {}  # logical ID -> (resource, old properties, old physical ID)
        self.replaced = {}  # logical ID -> (old properties, old physical ID)
        self.removed = {}  # logical ID -> resource removed (deleted at cleanup)
        self.cleanup = []  # (resource, properties, physical ID) to delete at cleanup


def _service_timeout(properties) -> float:
    try:
        return float(properties.get("ServiceTimeout", DEFAULT_SERVICE_TIMEOUT))
    except (TypeError, ValueError):
        return DEFAULT_SERVICE_TIMEOUT


def send(resource, kind, properties, physical_id, old_properties=None):
    """Sends one request as CloudFormation does and returns its (SUCCESS) answer, or raises
    CustomResourceFailed with the reason CloudFormation would show."""
    import os

    from moto.awslambda.utils import get_backend as get_lambda_backend

    request_id = str(uuid.uuid4())
    event = {
        "RequestType": kind,
        "ServiceToken": properties["ServiceToken"],
        "ResponseURL": f"http://127.0.0.1:{os.environ['MOTO_PORT']}/cloudformation_{resource.region_name}/cfnresponse?stack={resource.stack_id}",
        "StackId": resource.stack_id,
        "RequestId": request_id,
        "LogicalResourceId": resource.logical_id,
        "ResourceType": resource.resource_type,
        "ResourceProperties": properties,
    }
    if physical_id is not None:
        event["PhysicalResourceId"] = physical_id
    if old_properties is not None:
        event["OldResourceProperties"] = old_properties
    record = {k: v for k, v in event.items() if k not in ("ServiceToken", "ResponseURL")}
    record["Attempts"] = 0
    REQUESTS.append(record)
    fn = get_lambda_backend(resource.account_id, resource.region_name).get_function(properties["ServiceToken"])
    deadline = time.time() + _service_timeout(properties)
    payload = json.dumps(event)
    # An asynchronous invocation: Lambda runs it, and retries a function error twice.
    # Lambda does not know the function answered CloudFormation: an error is retried anyway.
    for attempt in range(1 + len(RETRY_DELAYS)):
        _result, errored, _logs = fn._invoke_lambda(event=payload)
        record["Attempts"] += 1
        if not errored:
            break
        if attempt < len(RETRY_DELAYS):
            time.sleep(RETRY_DELAYS[attempt])
    answer = _answer(request_id)
    if answer is None or answer["received"] > deadline:
        raise CustomResourceFailed(
            resource,
            f"CloudFormation did not receive a response to the {kind} request within the ServiceTimeout "
            f"({_service_timeout(properties):.0f} s)",
        )
    body = answer["body"]
    if answer["size"] > MAX_RESPONSE_BYTES:
        raise CustomResourceFailed(resource, "Response object is too long.")
    if body.get("StackId") != resource.stack_id or body.get("LogicalResourceId") != resource.logical_id:
        raise CustomResourceFailed(resource, "the response names another stack or resource")
    if not body.get("PhysicalResourceId"):
        raise CustomResourceFailed(resource, "Invalid PhysicalResourceId")
    if body.get("Status") != "SUCCESS":
        resource.failed_physical_id = body["PhysicalResourceId"]
        raise CustomResourceFailed(resource, body.get("Reason") or f"{kind} failed")
    return body


def _answer(request_id):
    with _answered:
        return _answers.get(request_id)


def record_answer(raw: bytes) -> dict:
    """Keeps the first answer for its RequestId (CloudFormation ignores later ones)."""
    body = json.loads(raw)
    with _answered:
        _answers.setdefault(body.get("RequestId", ""), {"body": body, "size": len(raw), "received": time.time()})
        _answered.notify_all()
    return body


def install():
    from moto.cloudformation import cloudformation_backends
    from moto.cloudformation.custom_model import CustomModel
    from moto.cloudformation.models import Stack
    from moto.cloudformation.parsing import ResourceMap
    from moto.cloudformation.responses import CloudFormationResponse

    original_getitem = ResourceMap.__getitem__

    def getitem(self, key):
        if key not in self._parsed_resources:
            depends = (self._resource_json_map.get(key) or {}).get("DependsOn") or []
            for dependency in [depends] if isinstance(depends, str) else depends:
                if dependency in self._resource_json_map:
                    original_getitem(self, dependency)
        return original_getitem(self, key)

    ResourceMap.__getitem__ = getitem

    def operation(stack_id):
        stack = STACKS.get(stack_id)
        return getattr(stack, "operation", None) or Operation("create")

    def create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        stack_id, logical_id = kwargs["StackId"], kwargs["LogicalId"]
        stack = cloudformation_backends[account_id][region_name].get_stack(stack_id)
        op = operation(stack_id)
        if op.kind == "rollback" and logical_id in op.removed:
            # Removed by the failed update, so never deleted: it is still there.
            resource = op.removed.pop(logical_id)
            op.cleanup = [c for c in op.cleanup if c[0] is not resource]
            stack.add_custom_resource(resource)
            return resource
        resource = CustomModel(region_name, str(uuid.uuid4()), logical_id, resource_name)
        resource.account_id = account_id
        resource.stack_id = stack_id
        resource.resource_type = kwargs["ResourceType"]
        resource.properties = cloudformation_json["Properties"]
        resource.physical_id = None
        resource.order = next(_order)
        stack.add_custom_resource(resource)
        try:
            answer = send(resource, "Create", resource.properties, None)
        except CustomResourceFailed as failed:
            op.failure = op.failure or (logical_id, failed.reason)
            op.failed_create = resource
            raise
        resource.physical_id = answer["PhysicalResourceId"]
        resource.set_data(answer.get("Data") or {})
        op.created.append(resource)
        return resource

    def update(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
        original = original_resource
        new_properties = cloudformation_json["Properties"]
        op = operation(original.stack_id)
        if op.failure is not None or new_properties == original.properties:
            return original
        old_properties, old_physical = original.properties, original.physical_id
        if op.kind == "rollback" and original.logical_id in op.replaced:
            # The failed update replaced it: go back to the old resource, delete the new one.
            op.cleanup.append((original, original.properties, original.physical_id))
            original.properties, original.physical_id = op.replaced.pop(original.logical_id)
            return original
        if op.kind == "update":
            op.updated[original.logical_id] = (original, old_properties, old_physical)
        original.properties = new_properties  # a failed Update is rolled back too
        try:
            answer = send(original, "Update", new_properties, old_physical, old_properties)
        except CustomResourceFailed as failed:
            op.failure = (original.logical_id, failed.reason)
            return original
        original.set_data(answer.get("Data") or {})
        if answer["PhysicalResourceId"] != old_physical:
            # A replacement: the old resource is deleted in the cleanup phase.
            original.physical_id = answer["PhysicalResourceId"]
            if op.kind == "update":
                op.replaced[original.logical_id] = (old_properties, old_physical)
                op.cleanup.append((original, old_properties, old_physical))
        return original

    def delete(self, account_id, region_name):
        if getattr(self, "deleted", False):
            return
        op = operation(self.stack_id)
        if op.kind in ("update", "rollback"):
            op.removed[self.logical_id] = self
            op.cleanup.append((self, self.properties, self.physical_id))
            return
        send(self, "Delete", self.properties, self.physical_id)
        self.deleted = True

    CustomModel.create_from_cloudformation_json = classmethod(create)
    CustomModel.update_from_cloudformation_json = classmethod(update)
    CustomModel.delete = delete

    def update_map(self, template, parameters=None):
        # moto adds every new resource before it modifies any; CloudFormation walks the
        # dependency graph, so a new alarm that depends on a changed budget comes after the
        # budget's Update. Removed resources first, as moto does: custom resources among them
        # only get their Delete in the cleanup phase.
        from moto.cloudformation.parsing import MAX_UPDATE_ATTEMPTS, parse_and_update_resource

        actions = self.build_resource_diff(template, parameters)
        for logical_name in actions["Remove"]:
            if logical_name in self._parsed_resources:
                self._delete_resource(self._parsed_resources[logical_name], self._resource_json_map[logical_name])
        self._template = template
        if parameters:
            self.input_parameters = parameters
        self.load_mapping()
        self.load_parameters()
        self.load_conditions()
        self._resource_json_map = template["Resources"]
        added, modified = set(actions["Add"]), set(actions["Modify"])
        waiting = []

        def modify_waiting():
            # Modify what is waiting; one whose references are not ready yet stays waiting and
            # is retried, as moto does. Returns the last such error.
            last = None
            for name in list(waiting):
                try:
                    self._parsed_resources[name] = parse_and_update_resource(
                        name, self._resource_json_map[name], self, account_id=self._account_id, region_name=self._region_name
                    )
                except CustomResourceFailed:
                    raise
                except Exception as error:
                    last = error
                    continue
                waiting.remove(name)
            return last

        for logical_name in self._ResourceMap__get_resources_in_dependency_order():
            if logical_name in added:
                _ = self[logical_name]
            elif logical_name in modified:
                # Modify as soon as it comes up.
                waiting.append(logical_name)
                modify_waiting()
        last = None
        for _ in range(MAX_UPDATE_ATTEMPTS):
            if not waiting:
                break
            last = modify_waiting()
        if waiting:
            raise last

    ResourceMap.update = update_map

    original_map_delete = ResourceMap.delete

    def delete_map(self):
        # Dependents first: the function serving the custom resources is a dependency of all.
        customs = [r for r in self._parsed_resources.values() if isinstance(r, CustomModel)]
        for resource in sorted(customs, key=lambda r: -r.order):
            resource.delete(self._account_id, self._region_name)
        original_map_delete(self)

    ResourceMap.delete = delete_map

    def process_cfn_response(self):
        record_answer(self.body.encode() if isinstance(self.body, str) else self.body)
        return 200, {"status": 200}, json.dumps("{}")

    CloudFormationResponse.process_cfn_response = process_cfn_response

    from moto.cloudformation.models import Event

    def event(stack, status, reason=None, logical_id=None):
        if logical_id is None:
            stack._add_stack_event(status, resource_status_reason=reason)
            return
        resource = stack.custom_resources.get(logical_id)
        stack.events.append(
            Event(
                stack_id=stack.stack_id,
                stack_name=stack.name,
                logical_resource_id=logical_id,
                physical_resource_id=getattr(resource, "physical_id", None) or "",
                resource_type=getattr(resource, "resource_type", "AWS::CloudFormation::CustomResource"),
                resource_status=status,
                resource_status_reason=reason,
                resource_properties=None,
            )
        )

    original_create, original_update, original_delete = Stack.create_resources, Stack.update, Stack.delete

    def run_cleanup(stack, op):
        for resource, properties, physical in op.cleanup:
            try:
                send(resource, "Delete", properties, physical)
            except CustomResourceFailed as failed:
                event(stack, "DELETE_FAILED", failed.reason, resource.logical_id)
                continue
            if op.removed.get(resource.logical_id) is resource or op.failed_create is resource:
                resource.deleted = True

    def create_resources(self):
        STACKS[self.stack_id] = self
        self.operation = op = Operation("create")
        try:
            original_create(self)
        except CustomResourceFailed as failed:
            self.status = "ROLLBACK_IN_PROGRESS"
            event(self, "CREATE_FAILED", failed.reason, failed.resource.logical_id)
            event(self, "ROLLBACK_IN_PROGRESS", f"The following resource(s) failed to create: [{failed.resource.logical_id}]. Rollback requested by user.")
            op.kind = "delete"
            try:
                resource = op.failed_create
                physical = getattr(resource, "failed_physical_id", None) or resource.physical_id or resource.logical_id
                send(resource, "Delete", resource.properties, physical)
                self.resource_map.delete()
            except CustomResourceFailed as failed_delete:
                self.status = "ROLLBACK_FAILED"
                event(self, "ROLLBACK_FAILED", failed_delete.reason)
                return
            self.status = "ROLLBACK_COMPLETE"
            self.status_reason = failed.reason
            event(self, "ROLLBACK_COMPLETE")
            return
        finally:
            self.operation = None

    def update(self, template, role_arn=None, parameters=None, tags=None):
        STACKS[self.stack_id] = self
        old_template, old_parameters = self.template, dict(self.parameters or {})
        self.operation = op = Operation("update")
        try:
            try:
                original_update(self, template, role_arn, parameters, tags)
            except CustomResourceFailed:
                pass
            if op.failure is None:
                self.status = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"
                op.kind = "delete"
                run_cleanup(self, op)
                self.status = "UPDATE_COMPLETE"
                return
            logical_id, reason = op.failure
            event(self, "UPDATE_FAILED", reason, logical_id)
            self.status = "UPDATE_ROLLBACK_IN_PROGRESS"
            event(self, "UPDATE_ROLLBACK_IN_PROGRESS", f"The following resource(s) failed to update: [{logical_id}].")
            rollback = Operation("rollback")
            rollback.removed = op.removed
            rollback.replaced = op.replaced
            self.operation = rollback
            if op.failed_create is not None:
                # Its Create failed: the rollback's cleanup deletes it like the others it created.
                resource = op.failed_create
                rollback.failed_create = resource
                rollback.cleanup.append((resource, resource.properties, getattr(resource, "failed_physical_id", None) or resource.logical_id))
            self.template = old_template
            self._parse_template()
            self.resource_map.update(self.template_dict, old_parameters)
            self.output_map = self._create_output_map()
            if rollback.failure is not None:
                self.status = "UPDATE_ROLLBACK_FAILED"
                event(self, "UPDATE_ROLLBACK_FAILED", rollback.failure[1], rollback.failure[0])
                return
            self.status = "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS"
            rollback.kind = "delete"
            # What the failed update created is gone from the template: delete it for good.
            rollback.removed = {r.logical_id: r for r, _, _ in rollback.cleanup}
            run_cleanup(self, rollback)
            self.status = "UPDATE_ROLLBACK_COMPLETE"
            self.status_reason = reason
            event(self, "UPDATE_ROLLBACK_COMPLETE")
        finally:
            self.operation = None

    def delete_stack(self):
        STACKS[self.stack_id] = self
        self.operation = Operation("delete")
        try:
            original_delete(self)
        except CustomResourceFailed as failed:
            self.status = "DELETE_FAILED"
            self.status_reason = failed.reason
            event(self, "DELETE_FAILED", failed.reason, failed.resource.logical_id)
            raise
        finally:
            self.operation = None

    Stack.create_resources, Stack.update, Stack.delete = create_resources, update, delete_stack

    from moto.cloudformation.models import CloudFormationBackend

    original_backend_delete = CloudFormationBackend.delete_stack

    def backend_delete_stack(self, name_or_stack_id):
        stack = self.stacks.get(name_or_stack_id) or next((s for s in self.stacks.values() if s.name == name_or_stack_id), None)
        try:
            original_backend_delete(self, name_or_stack_id)
        except CustomResourceFailed:
            # DELETE_FAILED: the stack stays, with its exports, for the user to retry.
            self.stacks[stack.stack_id] = stack

    CloudFormationBackend.delete_stack = backend_delete_stack

    def execute_change_set(self, change_set_name, stack_name=None):
        # `aws cloudformation deploy` is CreateChangeSet + ExecuteChangeSet. moto applies a change
        # set to the resource map directly: no imports for a new stack, no Outputs or Exports,
        # no custom resource lifecycle. Execute it as the equivalent CreateStack / UpdateStack.
        change_set = self.describe_change_set(change_set_name)
        stack = self.stacks[change_set.stack_id]
        if change_set.change_set_type == "CREATE":
            stack.template = change_set.template
            stack.cross_stack_resources = self.exports
            stack._parse_template()
            stack.description = stack.template_dict.get("Description")
            stack.resource_map = stack._create_resource_map()
            stack.output_map = stack._create_output_map()
            self._validate_export_uniqueness(stack)
            for export in stack.exports:
                self.exports[export.name] = export
            stack._add_stack_event("CREATE_IN_PROGRESS", resource_status_reason="User Initiated")
            stack.create_resources()
        else:
            stack.update(change_set.template, stack.role_arn, parameters=change_set.parameters or None)
            for export in stack.exports:
                self.exports[export.name] = export
        change_set.execution_status = "EXECUTE_COMPLETE"

    CloudFormationBackend.execute_change_set = execute_change_set

    # The AWS CLI's `deploy` uploads the template and passes its path-style URL on the S3
    # endpoint (`http://127.0.0.1:PORT/BUCKET/KEY`); moto reads path-style URLs only on
    # `localhost`.
    original_from_s3 = CloudFormationResponse._get_stack_from_s3_url

    def get_stack_from_s3_url(self, template_url):
        return original_from_s3(self, template_url.replace("//127.0.0.1:", "//localhost:", 1))

    CloudFormationResponse._get_stack_from_s3_url = get_stack_from_s3_url
