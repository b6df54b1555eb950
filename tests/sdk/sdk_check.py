"""The runner the SDK check scripts share: failing a check, reading the environment, and main.

Each script defines its scenarios (functions returning what they observed, as a dict) and ends
with `sys.exit(run(sys.argv, SCENARIOS, <sdk module>))`. On success ONE JSON line is printed and
the exit code is 0; a failed check prints `FAIL [<scenario>]: <why>` to stderr and exits 1, a
usage error exits 2.
"""

import json
import os
import sys


class CheckFailed(Exception):
    pass


def check(condition, message):
    """Like assert, but survives `python -O`."""
    if not condition:
        raise CheckFailed(message)


def env(name, default=None, required=False):
    value = os.environ.get(name, "").strip()
    if not value:
        if required:
            raise CheckFailed(f"environment variable {name} is required for this scenario")
        return default
    return value


def raised(call, sdk, error_class, status, what):
    """The error `call` must raise: an `error_class` (an `sdk.APIStatusError`) with `status`."""
    try:
        call()
    except sdk.APIStatusError as error:
        check(
            isinstance(error, error_class),
            f"{what}: expected {error_class.__name__}, got {type(error).__name__} "
            f"(status {error.status_code}, body {error.body})",
        )
        check(error.status_code == status, f"{what}: expected status {status}, got {error.status_code}")
        return error
    raise CheckFailed(f"{what}: expected {error_class.__name__}, but the call succeeded")


def client_options(api_key=None):
    """The SDK client's settings. No retries: a 429 or a 5xx must reach the check, not be tried again."""
    return {
        "base_url": env("PORTCULLIS_BASE_URL", required=True),
        "api_key": api_key or env("PORTCULLIS_KEY", required=True),
        "max_retries": 0,
        "timeout": float(env("PORTCULLIS_TIMEOUT", "60")),
    }


def max_tokens(default=24):
    return int(env("PORTCULLIS_MAX_TOKENS", str(default)))


PROMPT = [{"role": "user", "content": "Write one short sentence about the sea."}]


def run(argv, scenarios, sdk):
    """Runs the scenario named in `argv`; `sdk` (the `openai` or `anthropic` module) names the
    errors a scenario did not expect and the version reported with what it observed."""
    if len(argv) != 2 or argv[1] not in scenarios:
        print(f"usage: {argv[0]} {{{'|'.join(scenarios)}}}", file=sys.stderr)
        return 2
    name = argv[1]
    try:
        observed = scenarios[name]()
    except CheckFailed as failure:
        print(f"FAIL [{name}]: {failure}", file=sys.stderr)
        return 1
    except sdk.APIError as error:
        status = getattr(error, "status_code", None)
        print(
            f"FAIL [{name}]: unexpected {type(error).__name__} (status {status}): {error}; body {error.body!r}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps({"scenario": name, "ok": True, f"{sdk.__name__}_version": sdk.__version__, **observed}))
    return 0
