"""Real Bedrock clients, unchanged but for endpoint and key, against a tokenfence gateway.

Run by crates/invoke/tests/clients.rs with the test venv's Python (the clients are pinned in
tests/tools/requirements.txt and installed from PyPI). Usage:

    clients.py CLIENT ENDPOINT KEY TIGHT_KEY

CLIENT is one of boto3, anthropic, strands, langchain, agent. Each check raises on a wrong
answer; the script prints one JSON object of what it saw, which the Rust test checks against the
ledger and the Bedrock stub's bill.
"""

import json
import os
import sys

CLIENT, ENDPOINT, KEY, TIGHT_KEY = sys.argv[1:5]
SONNET = "anthropic.claude-sonnet-4-20250514-v1:0"
NOVA = "amazon.nova-lite-v1:0"
LLAMA = "meta.llama3-8b-instruct-v1:0"
WEATHER_TOOL = {
    "name": "weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}

# Every client reads the key as people configure it for Bedrock API keys; no AWS credentials.
os.environ["AWS_BEARER_TOKEN_BEDROCK"] = KEY
os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = ENDPOINT
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
    os.environ.pop(name, None)
seen = {}


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def boto3_client(key=None):
    import boto3
    from botocore.config import Config

    if key is not None:
        os.environ["AWS_BEARER_TOKEN_BEDROCK"] = key
    try:
        # One attempt: a retried call is a new request, and the test counts requests.
        return boto3.client(
            "bedrock-runtime", config=Config(retries={"total_max_attempts": 1})
        )
    finally:
        os.environ["AWS_BEARER_TOKEN_BEDROCK"] = KEY


def run_boto3():
    from botocore.exceptions import ClientError

    c = boto3_client()
    tool = {"toolSpec": {"name": "weather", "description": "The weather.",
                         "inputSchema": {"json": WEATHER_TOOL["input_schema"]}}}
    r = c.converse(
        modelId=SONNET,
        messages=[{"role": "user", "content": [{"text": "Hello from boto3"}]}],
        system=[{"text": "be brief"}],
        inferenceConfig={"maxTokens": 200},
        toolConfig={"tools": [tool]},
        requestMetadata={"team": "platform", "ticket": "T-1"},
    )
    check(r["output"]["message"]["content"][0]["text"].startswith("stub reply"), "converse text")
    check(r["usage"]["inputTokens"] > 0, "converse usage")
    headers = r["ResponseMetadata"]["HTTPHeaders"]
    check(headers.get("x-tokenfence-application") == "agents", f"tokenfence headers: {headers}")
    seen["converse"] = r["usage"]

    s = c.converse_stream(
        modelId=SONNET,
        messages=[{"role": "user", "content": [{"text": "Stream to boto3"}]}],
        inferenceConfig={"maxTokens": 150},
        requestMetadata={"team": "platform"},
    )
    text, usage, stop = "", None, None
    for event in s["stream"]:
        if "contentBlockDelta" in event:
            text += event["contentBlockDelta"]["delta"]["text"]
        if "messageStop" in event:
            stop = event["messageStop"]["stopReason"]
        if "metadata" in event:
            usage = event["metadata"]["usage"]
    check(text.startswith("stub reply") and stop and usage, f"converse_stream: {text!r} {stop} {usage}")
    seen["converse_stream"] = usage

    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 300, "tools": [WEATHER_TOOL],
            "messages": [{"role": "user", "content": "Invoke from boto3"}]}
    r = c.invoke_model(modelId=SONNET, body=json.dumps(body))
    answer = json.loads(r["body"].read())
    check(answer["type"] == "message" and answer["usage"]["input_tokens"] > 0, f"invoke_model: {answer}")
    seen["invoke_model"] = answer["usage"]

    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 2000,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Stream invoke"}]}]}
    r = c.invoke_model_with_response_stream(modelId=SONNET, body=json.dumps(body))
    kinds = []
    for event in r["body"]:
        kinds.append(json.loads(event["chunk"]["bytes"])["type"])
    check(kinds[0] == "message_start" and kinds[-1] == "message_stop", f"stream events: {kinds}")
    seen["invoke_stream_events"] = len(kinds)

    nova = {"schemaVersion": "messages-v1", "messages": [{"role": "user", "content": [{"text": "Nova"}]}],
            "inferenceConfig": {"max_new_tokens": 100}}
    answer = json.loads(c.invoke_model(modelId=NOVA, body=json.dumps(nova))["body"].read())
    check(answer["usage"]["inputTokens"] > 0, f"nova: {answer}")
    llama = {"prompt": "<|begin_of_text|>Llama", "max_gen_len": 100}
    answer = json.loads(c.invoke_model(modelId=LLAMA, body=json.dumps(llama))["body"].read())
    check(answer["generation_token_count"] > 0, f"llama: {answer}")

    r = c.count_tokens(modelId=SONNET, input={"converse": {
        "messages": [{"role": "user", "content": [{"text": "count me"}]}]}})
    check(r["inputTokens"] > 0, f"count_tokens: {r}")
    seen["count_tokens"] = r["inputTokens"]

    # Over budget, for a whole request and for a stream: an ordinary 429 before any event.
    tight = boto3_client(TIGHT_KEY)
    for call in ("converse", "converse_stream"):
        try:
            getattr(tight, call)(
                modelId=SONNET,
                messages=[{"role": "user", "content": [{"text": "too much"}]}],
                inferenceConfig={"maxTokens": 5000},
            )
            raise AssertionError(f"{call} over budget was not refused")
        except ClientError as e:
            check(e.response["Error"]["Code"] == "BudgetExceeded", f"{call}: {e.response}")
            check(e.response["ResponseMetadata"]["HTTPStatusCode"] == 429, f"{call}: {e.response}")
            seen[f"{call}_refused"] = e.response["Error"]["Message"]
    # A field the price book cannot price, under a USD limit: 400 naming it.
    try:
        boto3_client(os.environ["PRICED_KEY"]).converse(
            modelId=NOVA,
            messages=[{"role": "user", "content": [{"text": "flex"}]}],
            serviceTier={"type": "flex"},
        )
        raise AssertionError("an unpriced service tier was accepted under a USD limit")
    except ClientError as e:
        check(e.response["Error"]["Code"] == "ValidationException", f"tier: {e.response}")
        check("serviceTier" in e.response["Error"]["Message"], f"tier: {e.response}")


def run_anthropic():
    import anthropic
    from anthropic import AnthropicBedrock

    c = AnthropicBedrock(api_key=KEY, base_url=ENDPOINT, aws_region="us-east-1", max_retries=0)
    m = c.messages.create(
        model=SONNET, max_tokens=300, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Hello from the Anthropic SDK"}],
    )
    check(m.content[0].text.startswith("stub reply") and m.usage.input_tokens > 0, f"create: {m}")
    seen["create"] = m.usage.input_tokens
    with c.messages.stream(
        model=SONNET, max_tokens=400,
        messages=[{"role": "user", "content": "Stream from the Anthropic SDK"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    check(text.startswith("stub reply") and final.usage.output_tokens > 0, f"stream: {text!r} {final}")
    seen["stream_output_tokens"] = final.usage.output_tokens
    tight = AnthropicBedrock(api_key=TIGHT_KEY, base_url=ENDPOINT, aws_region="us-east-1", max_retries=0)
    try:
        tight.messages.create(model=SONNET, max_tokens=5000,
                              messages=[{"role": "user", "content": "too much"}])
        raise AssertionError("over budget was not refused")
    except anthropic.RateLimitError as e:
        seen["refused"] = str(e)


def run_agent():
    """A coding-agent-shaped session, as Claude Code sends in Bedrock mode: Anthropic Messages
    bodies with tools and thinking, `max_tokens` 32000, streamed, bearer key. It runs until its
    budget stops it and must get a readable refusal."""
    import anthropic
    from anthropic import AnthropicBedrock

    c = AnthropicBedrock(api_key=os.environ["AGENT_KEY"], base_url=ENDPOINT,
                         aws_region="us-east-1", max_retries=0)
    history = [{"role": "user", "content": "Refactor the parser. [[stub:output=6000]]"}]
    turns = 0
    for _ in range(20):
        try:
            with c.messages.stream(
                model=SONNET, max_tokens=32000, tools=[WEATHER_TOOL] * 1,
                thinking={"type": "enabled", "budget_tokens": 16000},
                system=[{"type": "text", "text": "You are a coding agent.",
                         "cache_control": {"type": "ephemeral"}}],
                messages=history,
            ) as stream:
                final = stream.get_final_message()
            turns += 1
            history.append({"role": "assistant", "content": final.content[0].text})
            history.append({"role": "user", "content": "Go on. [[stub:output=6000]]"})
        except anthropic.RateLimitError as e:
            body = e.body if isinstance(e.body, dict) else {}
            check(body.get("error") == "BudgetExceeded", f"refusal body: {e.body}")
            check("would exceed" in body.get("message", ""), f"refusal message: {e.body}")
            seen["turns"] = turns
            seen["refusal"] = body["message"]
            return
    raise AssertionError("the agent was never stopped by its budget")


def run_strands():
    from botocore.config import Config
    from strands import Agent
    from strands.models import BedrockModel

    model = BedrockModel(model_id=SONNET, region_name="us-east-1", streaming=True, max_tokens=300,
                         boto_client_config=Config(retries={"total_max_attempts": 1}))
    agent = Agent(model=model, callback_handler=None)
    result = agent("Hello from a Strands agent")
    text = str(result)
    check("stub reply" in text, f"strands: {text!r}")
    seen["strands"] = text


def run_langchain():
    from langchain_aws import ChatBedrockConverse

    llm = ChatBedrockConverse(model=SONNET, region_name="us-east-1", endpoint_url=ENDPOINT,
                              max_tokens=200)
    chunks = list(llm.stream("Hello from LangChain"))
    text = "".join(c.text if isinstance(c.text, str) else c.text() for c in chunks)
    check(text.startswith("stub reply"), f"langchain: {text!r}")
    usage = next((c.usage_metadata for c in chunks if c.usage_metadata), None)
    check(usage and usage["input_tokens"] > 0, f"langchain usage: {usage}")
    seen["langchain"] = usage


{"boto3": run_boto3, "anthropic": run_anthropic, "agent": run_agent, "strands": run_strands,
 "langchain": run_langchain}[CLIENT]()
print(json.dumps(seen))
