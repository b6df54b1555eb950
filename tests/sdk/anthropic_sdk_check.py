#!/usr/bin/env python3
"""Drive a Portcullis proxy with the official `anthropic` Python SDK and check what comes back.

Usage:  python tests/sdk/anthropic_sdk_check.py <scenario>

Scenarios: message, stream, count_tokens, errors, stream-cut.
On success it prints ONE JSON line describing what it observed and exits 0; on a failed check
it prints `FAIL [<scenario>]: <why>` to stderr and exits 1 (2 for a usage error).

Environment:
  PORTCULLIS_BASE_URL        the proxy's origin, e.g. http://127.0.0.1:8080 (the SDK adds /v1)
  PORTCULLIS_KEY             a valid API key, sent as `x-api-key` (required)
  PORTCULLIS_MODEL           the model to call (required)
  PORTCULLIS_MAX_TOKENS      max_tokens for generations (default 24)
  PORTCULLIS_TIMEOUT         seconds per request (default 60)
  errors:  PORTCULLIS_UNSCOPED_KEY  a key without the `messages` scope
           PORTCULLIS_LIMITED_KEY   a key allowed one request a minute, not used yet
  stream-cut: runs against the test kit's stub model server, whose faults a request selects by
           carrying `stub-fault:<name>` in its text (see portcullis_testkit::Fault)
"""

import sys

import anthropic
from anthropic import Anthropic

from sdk_check import PROMPT, CheckFailed, check, client_options, env, max_tokens, raised, run


def client(api_key=None):
    return Anthropic(**client_options(api_key))


def usage_dict(usage):
    check(usage is not None, "the message carries no usage")
    cache_read = usage.cache_read_input_tokens or 0
    cache_creation = usage.cache_creation_input_tokens or 0
    check(usage.output_tokens >= 1, f"no output tokens reported: {usage}")
    check(usage.output_tokens <= max_tokens(), f"more output tokens than max_tokens: {usage}")
    return {
        "input_tokens": usage.input_tokens,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_creation,
        "output_tokens": usage.output_tokens,
        # The whole prompt, as Portcullis bills it.
        "prompt_tokens": usage.input_tokens + cache_read + cache_creation,
    }


def text_of(message):
    check(message.type == "message" and message.role == "assistant", f"not an assistant message: {message}")
    texts = [block.text for block in message.content if block.type == "text"]
    check(texts and "".join(texts), f"the message has no text: {message.content}")
    return "".join(texts)


def scenario_message():
    model = env("PORTCULLIS_MODEL", required=True)
    message = client().messages.create(model=model, max_tokens=max_tokens(), messages=PROMPT)
    return {"text": text_of(message), "usage": usage_dict(message.usage), "stop_reason": message.stop_reason}


def scenario_stream():
    model = env("PORTCULLIS_MODEL", required=True)
    events = []
    with client().messages.stream(model=model, max_tokens=max_tokens(), messages=PROMPT) as stream:
        for event in stream:
            events.append(event.type)
        final = stream.get_final_message()
    for expected in ("message_start", "content_block_start", "content_block_delta", "message_delta", "message_stop"):
        check(expected in events, f"the stream had no {expected} event: {events}")
    check(events[0] == "message_start", f"the stream did not begin with message_start: {events}")
    return {"text": text_of(final), "usage": usage_dict(final.usage), "deltas": events.count("content_block_delta")}


def scenario_count_tokens():
    model = env("PORTCULLIS_MODEL", required=True)
    counted = client().messages.count_tokens(model=model, messages=PROMPT)
    check(counted.input_tokens > 0, f"no tokens counted: {counted}")
    return {"input_tokens": counted.input_tokens}


def expect_error(call, error_class, status, kind, what):
    """Runs `call`, which must raise `error_class` with `status` and Anthropic's error `kind`."""
    error = raised(call, anthropic, error_class, status, what)
    body = error.body
    check(
        isinstance(body, dict) and body.get("type") == "error" and isinstance(body.get("error"), dict),
        f"{what}: the body is not an Anthropic error: {body!r}",
    )
    check(body["error"].get("type") == kind, f"{what}: expected type {kind!r}, got {body['error']!r}")
    check(body["error"].get("message"), f"{what}: empty error message: {body}")
    check(error.response.headers.get("x-request-id"), f"{what}: the error has no x-request-id header")
    return {"class": type(error).__name__, "status": error.status_code, "type": kind}


def scenario_errors():
    model = env("PORTCULLIS_MODEL", required=True)

    def create(api, **kwargs):
        params = {"model": model, "max_tokens": 4, "messages": PROMPT}
        params.update(kwargs)
        return lambda: api.messages.create(**params)

    observed = {
        "bad_key": expect_error(
            create(client("pcl_not_a_real_key")), anthropic.AuthenticationError, 401, "authentication_error", "bad key"
        ),
        "count_bad_key": expect_error(
            lambda: client("pcl_not_a_real_key").messages.count_tokens(model=model, messages=PROMPT),
            anthropic.AuthenticationError,
            401,
            "authentication_error",
            "count_tokens with a bad key",
        ),
        "unknown_model": expect_error(
            create(client(), model="no-such-model"), anthropic.NotFoundError, 404, "not_found_error", "unknown model"
        ),
        "no_max_tokens": expect_error(
            lambda: client().post(
                "/v1/messages", body={"model": model, "messages": PROMPT}, cast_to=anthropic.types.Message
            ),
            anthropic.BadRequestError,
            400,
            "invalid_request_error",
            "no max_tokens",
        ),
    }
    unscoped = env("PORTCULLIS_UNSCOPED_KEY")
    if unscoped:
        observed["no_scope"] = expect_error(
            create(client(unscoped)), anthropic.PermissionDeniedError, 403, "permission_error", "no messages scope"
        )
    limited = env("PORTCULLIS_LIMITED_KEY")
    if limited:
        create(client(limited))()
        observed["rate_limited"] = expect_error(
            create(client(limited)), anthropic.RateLimitError, 429, "rate_limit_error", "second request in a minute"
        )
    return observed


def scenario_stream_cut():
    """A stream the model server breaks mid-way: the SDK raises on the `error` event, after the
    text relayed so far, instead of ending as if complete."""
    model = env("PORTCULLIS_MODEL", required=True)
    messages = [{"role": "user", "content": "please stub-fault:reset_mid_stream"}]
    text = []
    try:
        with client().messages.stream(model=model, max_tokens=max_tokens(), messages=messages) as stream:
            for piece in stream.text_stream:
                text.append(piece)
    except anthropic.APIStatusError as error:
        body = error.body
        check(isinstance(body, dict) and body.get("type") == "error", f"not an Anthropic error event: {body!r}")
        check(body["error"]["type"] == "api_error", f"expected an api_error: {body}")
        check(text, "the text before the cut was not delivered")
        return {"class": type(error).__name__, "type": body["error"]["type"], "text": "".join(text)}
    raise CheckFailed(f"the cut stream ended without an error, after {text!r}")


SCENARIOS = {
    "message": scenario_message,
    "stream": scenario_stream,
    "count_tokens": scenario_count_tokens,
    "errors": scenario_errors,
    "stream-cut": scenario_stream_cut,
}


if __name__ == "__main__":
    sys.exit(run(sys.argv, SCENARIOS, anthropic))
