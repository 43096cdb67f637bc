"""`python lambda_stream.py FUNCTION EVENT_FILE OUT_FILE`: Lambda's InvokeWithResponseStream with
boto3, as a caller of a streaming function uses it (endpoint and credentials from the standard
AWS_* variables). Writes the payload chunks, concatenated, to OUT_FILE and prints the
`InvokeComplete` event and the number of chunks as JSON."""
import json
import sys

import boto3


def main() -> None:
    function, event_file, out_file = sys.argv[1:4]
    client = boto3.client("lambda")
    with open(event_file, "rb") as f:
        answer = client.invoke_with_response_stream(FunctionName=function, Payload=f.read())
    chunks, complete = 0, None
    with open(out_file, "wb") as out:
        for event in answer["EventStream"]:
            if "PayloadChunk" in event:
                chunks += 1
                out.write(event["PayloadChunk"]["Payload"])
            elif "InvokeComplete" in event:
                complete = event["InvokeComplete"]
    print(json.dumps({"StatusCode": answer["StatusCode"], "Chunks": chunks, "InvokeComplete": complete}))


if __name__ == "__main__":
    main()
