#!/usr/bin/env python3
"""Drive a Portcullis proxy with the official `openai` Python SDK and check what comes back.

Usage:  python tests/sdk/openai_sdk_check.py <scenario>

Scenarios: chat, stream, stream-no-usage, embeddings, models, errors, faults.
On success it prints ONE JSON line describing what it observed and exits 0; on a failed check
it prints `FAIL [<scenario>]: <why>` to stderr and exits 1 (2 for a usage error).

Environment:
  PORTCULLIS_BASE_URL        the proxy's OpenAI base URL, e.g. http://127.0.0.1:8080/v1 (required)
  PORTCULLIS_KEY             a valid API key (required)
  PORTCULLIS_MODEL           model for chat/stream/errors (required by those)
  PORTCULLIS_EMBEDDING_MODEL model for embeddings (default: PORTCULLIS_MODEL)
  PORTCULLIS_MAX_TOKENS      max_tokens for generations (default 24)
  PORTCULLIS_TIMEOUT         seconds per request (default 60)
  PORTCULLIS_EXPECT_REQUEST_ID  0 to not require x-request-id on error responses (default 1)
  models:  PORTCULLIS_EXPECT_MODELS  comma list that must equal the listed ids (optional)
           PORTCULLIS_HIDDEN_MODEL   comma list of ids that must NOT be listed nor retrievable
  errors:  PORTCULLIS_DENIED_MODEL   a configured model this key may not use (optional)
           PORTCULLIS_OTHER_KEY      a key that must be refused (e.g. revoked) (optional)
           PORTCULLIS_OTHER_KEY_CODE the `code` expected for it (default revoked_api_key)
  faults:  runs against the test kit's stub model server, whose faults a request selects by
           carrying `stub-fault:<name>` in its text (see portcullis_testkit::Fault)
"""

import sys

import openai
from openai import OpenAI

from sdk_check import PROMPT, CheckFailed, check, client_options, env, max_tokens, raised, run


def env_list(name):
    return [item.strip() for item in (env(name) or "").split(",") if item.strip()]


def client(api_key=None):
    return OpenAI(**client_options(api_key))


def usage_dict(usage):
    check(usage is not None, "the response carries no usage")
    observed = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": getattr(usage, "completion_tokens", None),
        "total_tokens": usage.total_tokens,
    }
    check(usage.prompt_tokens > 0, f"usage.prompt_tokens should be > 0: {observed}")
    return observed


# --- scenarios -------------------------------------------------------------------------------


def scenario_chat():
    model = env("PORTCULLIS_MODEL", required=True)
    reply = client().chat.completions.create(model=model, messages=PROMPT, max_tokens=max_tokens())
    check(len(reply.choices) >= 1, "no choices in the reply")
    content = reply.choices[0].message.content
    check(isinstance(content, str) and content.strip(), f"empty content: {content!r}")
    usage = usage_dict(reply.usage)
    check(usage["completion_tokens"] > 0, f"usage.completion_tokens should be > 0: {usage}")
    return {
        "model": reply.model,
        "content": content,
        "finish_reason": reply.choices[0].finish_reason,
        "usage": usage,
    }


def collect_stream(include_usage):
    model = env("PORTCULLIS_MODEL", required=True)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client().chat.completions.create(
        model=model, messages=PROMPT, max_tokens=max_tokens(), stream=True, **options
    )
    chunks, text, content_chunks, usage_at = 0, "", 0, []
    usage = None
    finish_reason = None
    for index, chunk in enumerate(stream):
        chunks += 1
        if chunk.usage is not None:
            usage_at.append(index)
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                content_chunks += 1
                text += choice.delta.content
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    return {
        "chunks": chunks,
        "content_chunks": content_chunks,
        "text": text,
        "finish_reason": finish_reason,
        "usage_chunk_indexes": usage_at,
        "usage": usage,
    }


def scenario_stream():
    seen = collect_stream(include_usage=True)
    check(seen["content_chunks"] >= 1, f"no chunk carried content: {seen}")
    check(seen["text"].strip(), "the streamed text is empty")
    check(seen["usage_chunk_indexes"], "no usage chunk although stream_options.include_usage was set")
    check(
        seen["usage_chunk_indexes"] == [seen["chunks"] - 1],
        f"the usage chunk must come once, last: at {seen['usage_chunk_indexes']} of {seen['chunks']}",
    )
    seen["usage"] = usage_dict(seen["usage"])
    check(seen["usage"]["completion_tokens"] > 0, f"usage.completion_tokens should be > 0: {seen['usage']}")
    return seen


def scenario_stream_no_usage():
    seen = collect_stream(include_usage=False)
    check(seen["content_chunks"] >= 1, f"no chunk carried content: {seen}")
    check(
        not seen["usage_chunk_indexes"],
        f"a usage chunk arrived although the client did not ask for one (at {seen['usage_chunk_indexes']})",
    )
    seen.pop("usage")
    return seen


def check_vectors(response, count):
    check(len(response.data) == count, f"expected {count} embeddings, got {len(response.data)}")
    dims = set()
    for position, item in enumerate(response.data):
        check(item.index == position, f"embedding {position} has index {item.index}")
        vector = item.embedding
        check(isinstance(vector, list) and vector, f"embedding {position} is empty or not a list")
        check(all(isinstance(x, float) for x in vector), f"embedding {position} has non-float values")
        dims.add(len(vector))
    check(len(dims) == 1, f"embeddings of different lengths: {sorted(dims)}")
    return dims.pop()


def scenario_embeddings():
    model = env("PORTCULLIS_EMBEDDING_MODEL") or env("PORTCULLIS_MODEL", required=True)
    api = client()
    # The SDK asks for base64 by default and decodes it; the second call asks for plain floats.
    one = api.embeddings.create(model=model, input="The quick brown fox.")
    one_dim = check_vectors(one, 1)
    one_usage = usage_dict(one.usage)
    two = api.embeddings.create(model=model, input=["first text", "second text"], encoding_format="float")
    two_dim = check_vectors(two, 2)
    two_usage = usage_dict(two.usage)
    check(one_dim == two_dim, f"dimensions differ between calls: {one_dim} vs {two_dim}")
    return {"model": one.model, "dimensions": one_dim, "usage_one": one_usage, "usage_two": two_usage}


def scenario_models():
    api = client()
    ids = sorted(model.id for model in api.models.list())
    expected = env_list("PORTCULLIS_EXPECT_MODELS")
    if expected:
        check(set(ids) == set(expected), f"listed models {ids} != expected {sorted(expected)}")
    hidden = env_list("PORTCULLIS_HIDDEN_MODEL")
    for name in hidden:
        check(name not in ids, f"hidden model {name!r} is listed: {ids}")
        expect_error(
            lambda: api.models.retrieve(name), openai.NotFoundError, 404, "model_not_found", f"retrieve {name}"
        )
    for name in ids:
        check(api.models.retrieve(name).id == name, f"retrieving {name!r} answered another id")
    return {"models": ids, "hidden": hidden}


# --- errors ----------------------------------------------------------------------------------

ERROR_CLASS_FOR_STATUS = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    429: openai.RateLimitError,
}

STATUS_FOR_CODE = {
    "invalid_api_key": 401,
    "expired_api_key": 401,
    "revoked_api_key": 401,
    "invalid_token": 401,
    "model_not_allowed": 403,
    "ip_not_allowed": 403,
    "scope_missing": 403,
    "model_not_found": 404,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
}


def expect_error(call, error_class, status, code, what):
    """Runs `call`, which must raise `error_class` with `status` and `code` (None: any code)."""
    error = raised(call, openai, error_class, status, what)
    body = error.body
    check(isinstance(body, dict), f"{what}: the error body is not an OpenAI error object: {body!r}")
    missing = [field for field in ("message", "type", "code", "param") if field not in body]
    check(not missing, f"{what}: the error object lacks {missing}: {body}")
    check(isinstance(body["message"], str) and body["message"], f"{what}: empty error message: {body}")
    if code is not None:
        check(error.code == code, f"{what}: expected code {code!r}, got {error.code!r} ({body})")
    if env("PORTCULLIS_EXPECT_REQUEST_ID", "1") != "0":
        request_id = error.response.headers.get("x-request-id")
        check(request_id, f"{what}: the error response has no x-request-id header")
    return {"class": type(error).__name__, "status": error.status_code, "type": body["type"], "code": error.code}


def scenario_errors():
    model = env("PORTCULLIS_MODEL", required=True)
    key = env("PORTCULLIS_KEY", required=True)
    good = client()
    observed = {}

    def chat(api, **kwargs):
        params = {"model": model, "messages": PROMPT, "max_tokens": 4}
        params.update(kwargs)
        return lambda: api.chat.completions.create(**params)

    # 401: malformed key, and a real key with one character changed (fails its checksum).
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    for label, wrong in [("wrong_key", "pcl_this-is-not-a-key"), ("tampered_key", tampered)]:
        observed[label] = expect_error(
            chat(client(api_key=wrong)), openai.AuthenticationError, 401, "invalid_api_key", label
        )
        check(observed[label]["type"] == "authentication_error", f"{label}: type {observed[label]['type']}")

    other = env("PORTCULLIS_OTHER_KEY")
    if other:
        code = env("PORTCULLIS_OTHER_KEY_CODE", "revoked_api_key")
        status = STATUS_FOR_CODE.get(code, 401)
        observed["other_key"] = expect_error(
            chat(client(api_key=other)), ERROR_CLASS_FOR_STATUS[status], status, code, "other key"
        )

    denied = env("PORTCULLIS_DENIED_MODEL")
    if denied:
        observed["denied_model"] = expect_error(
            chat(good, model=denied), openai.PermissionDeniedError, 403, "model_not_allowed", f"model {denied}"
        )
        check(observed["denied_model"]["type"] == "permission_error", f"denied model: {observed['denied_model']}")

    observed["unknown_model"] = expect_error(
        chat(good, model="no-such-model-e3b0c442"), openai.NotFoundError, 404, "model_not_found", "unknown model"
    )

    # 400: `messages` that is not a list, and no `model` at all.
    observed["messages_not_a_list"] = expect_error(
        chat(good, extra_body={"messages": "this should be a list"}),
        openai.BadRequestError,
        400,
        None,
        "messages not a list",
    )
    observed["missing_model"] = expect_error(
        chat(good, model=openai.NOT_GIVEN), openai.BadRequestError, 400, None, "missing model"
    )
    for label in ("messages_not_a_list", "missing_model"):
        check(observed[label]["type"] == "invalid_request_error", f"{label}: type {observed[label]['type']}")
    return observed


# --- a model server that misbehaves ------------------------------------------------------------


def fault_prompt(name):
    return [{"role": "user", "content": f"hello stub-fault:{name}"}]


def expect_stream_error(name, code):
    """A stream the model server breaks must raise an `openai.APIError` carrying `code` while it is
    read: not end as if complete, and not fail as a connection error (which SDKs retry)."""
    model = env("PORTCULLIS_MODEL", required=True)
    stream = client().chat.completions.create(model=model, messages=fault_prompt(name), stream=True)
    text = ""
    try:
        for chunk in stream:
            for choice in chunk.choices:
                check(choice.finish_reason is None, f"{name}: a finish_reason {choice.finish_reason!r} was sent")
                text += (choice.delta.content or "") if choice.delta else ""
    except openai.APIConnectionError as error:
        raise CheckFailed(f"{name}: the stream was cut ({error}), not ended with an error the SDK raises")
    except openai.APIError as error:
        body = error.body if isinstance(error.body, dict) else {}
        check(body.get("code") == code, f"{name}: expected code {code!r}, got {error.body!r}")
        check(text, f"{name}: the first event should have been relayed before the error")
        return {"class": type(error).__name__, "code": body.get("code"), "text": text}
    raise CheckFailed(f"{name}: the stream ended as if complete: {text!r}")


def scenario_faults():
    model = env("PORTCULLIS_MODEL", required=True)
    api = client()
    observed = {}

    def chat(name):
        return lambda: api.chat.completions.create(model=model, messages=fault_prompt(name))

    # The model server's own failures and non-answers are the gateway's 502s: InternalServerError,
    # never AuthenticationError for a key that is fine, never a string in place of a completion.
    for name, status, code in [
        ("unauthorized", 502, "upstream_error"),
        ("leaky_failure", 500, "upstream_error"),
        ("html", 502, "upstream_invalid_response"),
        ("wrong_shape", 502, "upstream_invalid_response"),
    ]:
        observed[name] = expect_error(chat(name), openai.InternalServerError, status, code, name)
        check(observed[name]["type"] == "upstream_error", f"{name}: type {observed[name]['type']}")
    for name, code in [
        ("reset_mid_stream", "upstream_failed_mid_stream"),
        ("invalid_event", "upstream_invalid_event"),
        ("unterminated_event", "upstream_event_too_large"),
    ]:
        observed[name] = expect_stream_error(name, code)
    # `[DONE]` and then silence: the stream still ends, complete.
    stream = api.chat.completions.create(model=model, messages=fault_prompt("hold_after_done"), stream=True)
    finish = [choice.finish_reason for chunk in stream for choice in chunk.choices if choice.finish_reason]
    check(finish == ["stop"], f"hold_after_done: the stream did not end complete: {finish}")
    observed["hold_after_done"] = {"finish_reason": finish[0]}
    return observed


SCENARIOS = {
    "chat": scenario_chat,
    "stream": scenario_stream,
    "stream-no-usage": scenario_stream_no_usage,
    "embeddings": scenario_embeddings,
    "models": scenario_models,
    "errors": scenario_errors,
    "faults": scenario_faults,
}


if __name__ == "__main__":
    sys.exit(run(sys.argv, SCENARIOS, openai))
