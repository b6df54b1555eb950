#!/usr/bin/env python3
"""Drive a Portcullis proxy's Responses API with the official `openai` Python SDK.

Usage:  python tests/sdk/openai_responses_check.py <scenario>

Scenarios:
  responses  `responses.create`, plain then streamed; the stored response retrieved and deleted
             when PORTCULLIS_STORES=1 (a model server that stores responses)
  errors     the SDK's own exception classes: 401, 403, 404, 429
On success it prints ONE JSON line describing what it observed and exits 0; on a failed check
it prints `FAIL [<scenario>]: <why>` to stderr and exits 1 (2 for a usage error).

Environment:
  PORTCULLIS_BASE_URL   the proxy's OpenAI base URL, e.g. http://127.0.0.1:8080/v1 (required)
  PORTCULLIS_KEY        a valid API key with the `responses` scope (required)
  PORTCULLIS_MODEL      the model to call (required)
  PORTCULLIS_MAX_TOKENS max_output_tokens (default 16)
  PORTCULLIS_TIMEOUT    seconds per request (default 60)
  PORTCULLIS_STORES     1 when the model server keeps responses for GET/DELETE (default 0)
  errors:  PORTCULLIS_CHAT_ONLY_KEY  a key without the `responses` scope
           PORTCULLIS_OTHER_KEY      another valid key, which must not see this key's responses
           PORTCULLIS_LIMITED_KEY    a key allowed one request a minute
"""

import sys

import openai
from openai import OpenAI

from sdk_check import CheckFailed, check, client_options, env, max_tokens, run


def client(key=None):
    return OpenAI(**client_options(key))


def create(sdk, **extra):
    return sdk.responses.create(
        model=env("PORTCULLIS_MODEL", required=True),
        input="Name three colours.",
        max_output_tokens=max_tokens(16),
        **extra,
    )


def usage_of(response):
    return {"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens}


def scenario_responses():
    sdk = client()
    model = env("PORTCULLIS_MODEL", required=True)
    cap = max_tokens(16)
    plain = create(sdk)
    check(plain.model == model, f"the answer names {plain.model!r}, not the model asked for ({model!r})")
    check(plain.output_text, f"no text in {plain}")
    check(plain.usage.input_tokens > 0 and 1 <= plain.usage.output_tokens <= cap, f"usage {plain.usage}")

    text, kinds, ids, completed = [], [], set(), None
    with create(sdk, stream=True) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            response = getattr(event, "response", None)
            if response is not None:
                ids.add(response.id)
                check(response.model in (None, model), f"{event.type} names {response.model!r}")
            if event.type in ("response.completed", "response.incomplete"):
                completed = event.response
    check(completed is not None, f"no response.completed in {kinds}")
    check(kinds[0] == "response.created", f"first event {kinds[0]}")
    check(len(ids) == 1, f"one id across the stream, not {ids}")
    check("".join(text), "no text streamed")
    check(completed.usage.output_tokens >= 1, f"usage {completed.usage}")

    stored = {}
    if env("PORTCULLIS_STORES", "0") == "1":
        again = sdk.responses.retrieve(plain.id)
        check(again.id == plain.id and again.output_text == plain.output_text, f"retrieved {again}")
        sdk.responses.delete(plain.id)
        try:
            sdk.responses.retrieve(plain.id)
            raise CheckFailed("a deleted response was still served")
        except openai.NotFoundError:
            stored = {"retrieved": True, "deleted": True}

    return {
        "plain": {"id": plain.id, "request_id": plain._request_id, "usage": usage_of(plain), "text": plain.output_text},
        "stream": {"id": completed.id, "usage": usage_of(completed), "text": "".join(text), "events": len(kinds)},
        "stored": stored,
    }


def expect(error_class, call, what):
    try:
        call()
    except error_class as error:
        return {"class": type(error).__name__, "status": error.status_code}
    except openai.APIError as error:
        raise CheckFailed(f"{what}: raised {type(error).__name__} ({error}), not {error_class.__name__}")
    raise CheckFailed(f"{what}: succeeded, expected {error_class.__name__}")


def scenario_errors():
    sdk = client()
    mine = create(sdk)
    seen = {
        "401": expect(openai.AuthenticationError, lambda: create(client("pcl_not_a_real_key")), "a bad key"),
        "403": expect(openai.PermissionDeniedError,
                      lambda: create(client(env("PORTCULLIS_CHAT_ONLY_KEY", required=True))),
                      "a key without the responses scope"),
        "404_unknown": expect(openai.NotFoundError, lambda: sdk.responses.retrieve("resp_never_made"), "an unknown id"),
        "404_not_mine": expect(openai.NotFoundError,
                               lambda: client(env("PORTCULLIS_OTHER_KEY", required=True)).responses.retrieve(mine.id),
                               "another key's response"),
        "404_continued_by_another": expect(
            openai.NotFoundError,
            lambda: create(client(env("PORTCULLIS_OTHER_KEY", required=True)), previous_response_id=mine.id),
            "another key continuing this key's response"),
    }
    limited = client(env("PORTCULLIS_LIMITED_KEY", required=True))
    create(limited)
    seen["429"] = expect(openai.RateLimitError, lambda: create(limited), "a second request in the minute")
    return seen


SCENARIOS = {"responses": scenario_responses, "errors": scenario_errors}


if __name__ == "__main__":
    sys.exit(run(sys.argv, SCENARIOS, openai))
