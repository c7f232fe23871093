"""Property-based fuzzing of the HTTP service against its own OpenAPI document: no 5xx, every rejection explained.

    python bench/fuzz.py --out FILE [--workdir DIR] [--url URL] [--min-requests 1200] [--max-examples 100]
                         [--max-seconds 300] [--seed 42]

Starts the service as `bench/serve_load.py` does (127.0.0.1, free port, `OMNI_WORKDIR=<workdir>`) unless
`--url` is given, reads `/docs.json` and, in rounds until `--min-requests` requests were sent (or
`--max-seconds` passed), fuzzes every operation it lists (routes that appear later are picked up):

- `positive` / `negative`: schemathesis (Python API, Hypothesis underneath) cases that fit the schema,
  and cases that break it (wrong types, out-of-range numbers, missing or extra fields, bad bytes), up to
  `--max-examples` each per operation and round. Positive cases get a known channel half the time
  (a free-text field in the schema, validated by the service), so the accepting paths run too;
- `mutated` (own Hypothesis strategies, for operations with a JSON body): a plausible body with one
  field replaced by any JSON value, a required field dropped or an unknown one added; any JSON
  document; raw bytes; the right body under the wrong content type; huge strings;
- `protocol`: each operation with methods it does not allow, and unknown paths.

Pass criteria (issue #6): `server_errors` (5xx answers and dropped connections) is 0, and
`rejections_without_message` (4xx whose body carries no message: a JSON object without a non-empty
"error"/"detail"/"message", or an empty body) is 0. 2xx answers are also checked against the response
schema (`response_schema_failures`, reported, not a pass criterion). Writes total requests, per-route and
per-mode counts, a status histogram and up to 20 failure examples to --out and stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import httpx

# the script's folder on sys.path: `python bench/X.py` and `python -m bench.X` both find serve_load
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import (  # noqa: E402
    ServerProcess,
    auth_headers,
    check_local,
    default_workdir,
    load_customers,
    machine_info,
    server_arguments,
)

KNOWN_CHANNELS = ("store", "web", "app", "email", "sms", "push", "social", "call_center")
MESSAGE_KEYS = ("error", "detail", "message")
MAX_EXAMPLES_KEPT = 20
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def has_message(status: int, content_type: str, body: bytes) -> bool:
    """Whether a rejection tells the client something: a non-empty error/detail/message, or some text."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return False
    if "json" in content_type or text[:1] in "{[":
        try:
            doc = json.loads(text)
        except ValueError:
            return True  # not JSON after all: plain text is a message
        if isinstance(doc, dict):
            return any(doc.get(k) not in (None, "", [], {}) for k in MESSAGE_KEYS)
        return False
    return True


class Recorder:
    """Every request sent and what came back; the failures worth showing."""

    def __init__(self) -> None:
        self.total = 0
        self.per_route: Counter[str] = Counter()
        self.per_mode: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.per_route_status: dict[str, Counter[str]] = defaultdict(Counter)
        self.server_errors = 0
        self.transport_errors = 0
        self.rejections_without_message = 0
        self.response_schema_failures = 0
        self.accepted = 0
        self.failures: list[dict] = []
        self.schema_failures: list[dict] = []

    def record(
        self,
        route: str,
        mode: str,
        status: int | None,
        content_type: str = "",
        body: bytes = b"",
        request: object = None,
        error: str | None = None,
    ) -> None:
        self.total += 1
        self.per_route[route] += 1
        self.per_mode[mode] += 1
        key = str(status) if status is not None else "exception"
        self.statuses[key] += 1
        self.per_route_status[route][key] += 1
        problem = None
        if status is None:
            self.transport_errors += 1
            self.server_errors += 1
            problem = f"no answer: {error}"
        elif status >= 500:
            self.server_errors += 1
            problem = "server error"
        elif status >= 400:
            if not has_message(status, content_type, body):
                self.rejections_without_message += 1
                problem = "rejection without a message"
        else:
            self.accepted += 1
        if problem and len(self.failures) < MAX_EXAMPLES_KEPT:
            self.failures.append(
                {
                    "route": route,
                    "mode": mode,
                    "problem": problem,
                    "status": status,
                    "request": _short(request),
                    "response": body[:500].decode("utf-8", "replace"),
                }
            )


def _short(value: object, limit: int = 500) -> object:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value[:limit]
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return value if len(text) <= limit else text[:limit] + "..."


def hypothesis_run(strategy, fn, max_examples: int, seed_value: int) -> None:
    """Call `fn` on up to `max_examples` values Hypothesis draws from `strategy` (no shrinking: nothing fails)."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

    @seed(seed_value)
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
        verbosity=Verbosity.quiet,
    )
    @given(strategy)
    def test(value):
        fn(value)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test()


# -- schemathesis phases ----------------------------------------------------------------------------


def schemathesis_phase(
    schema, url: str, headers: dict, rec: Recorder, args, round_no: int, deadline: float, notes: list
):
    import requests
    from schemathesis import GenerationMode

    session = requests.Session()
    session.headers.update(headers)
    rng = random.Random(args.seed * 1000 + round_no)
    for result in schema.get_all_operations():
        try:
            op = result.ok()
        except Exception as exc:  # noqa: BLE001 (an operation schemathesis cannot use: report and go on)
            notes.append(f"operation skipped: {exc}")
            continue
        has_inputs = bool(list(op.body)) or bool(op.definition.raw.get("parameters"))
        modes = (
            [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if has_inputs else [GenerationMode.POSITIVE]
        )
        if not has_inputs and round_no > 0:
            continue  # nothing to vary: once is enough
        for mode in modes:
            if time.monotonic() > deadline:
                return

            def run_case(case, mode=mode, op=op):
                if time.monotonic() > deadline:
                    return
                label = mode.value
                if mode == GenerationMode.POSITIVE and isinstance(case.body, dict) and "channel" in case.body:
                    if rng.random() < 0.5:
                        case.body["channel"] = rng.choice(KNOWN_CHANNELS)
                        label = "positive_known_channel"
                try:
                    response = case.call(base_url=url, session=session, timeout=args.timeout)
                except Exception as exc:  # noqa: BLE001 (a dropped connection is a finding)
                    rec.record(
                        op.label,
                        label,
                        None,
                        request=_case_repr(case),
                        error=f"{type(exc).__name__}: {exc}"[:300],
                    )
                    return
                ctype = (response.headers.get("content-type") or [""])[0]
                rec.record(
                    op.label,
                    label,
                    response.status_code,
                    ctype,
                    response.content or b"",
                    request=_case_repr(case),
                )
                if 200 <= response.status_code < 300 and mode == GenerationMode.POSITIVE:
                    check_response_schema(case, response, rec)

            try:
                hypothesis_run(
                    op.as_strategy(generation_mode=mode),
                    run_case,
                    max_examples=args.max_examples if has_inputs else 1,
                    seed_value=args.seed * 7919 + round_no * 31 + (mode == GenerationMode.NEGATIVE),
                )
            # schemathesis reports response-schema violations as a BaseExceptionGroup: note them, go on
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 (Unsatisfiable and the like)
                notes.append(
                    f"{op.label} {mode.value} round {round_no}: {type(exc).__name__}: {str(exc)[:200]}"
                )


def _case_repr(case) -> dict:
    from schemathesis.core import NotSet

    out: dict = {"method": case.method, "path": case.formatted_path}
    if not isinstance(case.body, NotSet):
        out["body"] = case.body
    if case.media_type:
        out["media_type"] = case.media_type
    if case.query:
        out["query"] = case.query
    if case.headers:
        out["headers"] = dict(case.headers)
    return out


def check_response_schema(case, response, rec: Recorder) -> None:
    from schemathesis.checks import load_all_checks
    from schemathesis.specs.openapi.checks import response_schema_conformance

    load_all_checks()
    try:
        case.validate_response(response, checks=[response_schema_conformance])
    except Exception as exc:  # noqa: BLE001 (any failed check)
        rec.response_schema_failures += 1
        if len(rec.schema_failures) < 5:
            rec.schema_failures.append({"route": case.operation.label, "error": str(exc)[:500]})


# -- own mutations -----------------------------------------------------------------------------------


def json_body_schemas(doc: dict) -> dict[tuple[str, str], dict]:
    """(method, path) -> the JSON request body schema, for every operation that takes one."""
    out = {}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            if method not in HTTP_METHODS or not isinstance(op, dict):
                continue
            content = (op.get("requestBody") or {}).get("content", {})
            schema = (content.get("application/json") or {}).get("schema")
            if schema is not None:
                out[(method.upper(), path)] = resolve(schema, doc)
    return out


def resolve(schema: dict, doc: dict, depth: int = 0) -> dict:
    if depth > 10 or not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target: object = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return resolve(target, doc, depth + 1)
    return schema


def mutation_strategy(schema: dict, customers: list[str]):
    """Hypothesis strategy of (content_type, raw bytes, description) for one JSON-body operation."""
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
    )
    any_json = st.recursive(
        scalars,
        lambda kids: st.one_of(
            st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=10), kids, max_size=5)
        ),
        max_leaves=20,
    )
    props = schema.get("properties", {})
    required = list(schema.get("required", []))

    def plausible_value(name: str, spec: dict):
        if name == "customer_id":
            return st.sampled_from(customers[:500] or ["C0000001"]) | st.text(min_size=1, max_size=20)
        if name == "channel":
            return st.sampled_from(KNOWN_CHANNELS)
        kind = spec.get("type")
        if "enum" in spec:
            return st.sampled_from(spec["enum"])
        if kind == "integer":
            lo, hi = spec.get("minimum", -1000), spec.get("maximum", 1000)
            return st.integers(min_value=lo, max_value=hi)
        if kind == "number":
            return st.floats(min_value=spec.get("minimum", -1e6), max_value=spec.get("maximum", 1e6))
        if kind == "boolean":
            return st.booleans()
        if kind == "array":
            return st.lists(st.text(min_size=1, max_size=12), max_size=min(spec.get("maxItems", 5), 5))
        if kind == "object":
            return st.dictionaries(st.text(max_size=8), scalars, max_size=3)
        return st.text(min_size=spec.get("minLength", 0), max_size=min(spec.get("maxLength", 30), 30))

    plausible = st.fixed_dictionaries(
        {k: plausible_value(k, props[k]) for k in props if k in required},
        optional={k: plausible_value(k, props[k]) for k in props if k not in required},
    )

    def encode(doc) -> bytes:
        return json.dumps(doc).encode()

    @st.composite
    def one_field_replaced(draw):
        body = draw(plausible)
        if not props:
            return "application/json", encode(body), "plausible"
        name = draw(st.sampled_from(sorted(props)))
        body[name] = draw(any_json)
        return "application/json", encode(body), f"field {name} replaced"

    @st.composite
    def required_dropped(draw):
        body = draw(plausible)
        if required:
            body.pop(draw(st.sampled_from(required)), None)
        return "application/json", encode(body), "required field dropped"

    @st.composite
    def extra_field(draw):
        body = draw(plausible)
        body[draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in props))] = draw(any_json)
        return "application/json", encode(body), "unknown field added"

    @st.composite
    def wrong_content_type(draw):
        body = draw(plausible)
        ctype = draw(
            st.sampled_from(
                [
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "application/xml",
                    "",
                    "multipart/form-data",
                    "multipart/form-data; boundary=fuzz",
                    "application/vnd.bentoml+pickle",
                    "application/octet-stream",
                ]
            )
        )
        return ctype, encode(body), f"plausible body as {ctype or 'no content type'}"

    @st.composite
    def huge_strings(draw):
        body = draw(plausible)
        name = draw(st.sampled_from(sorted(props) or ["x"]))
        body[name] = "x" * draw(st.sampled_from([129, 10_000, 1_000_000]))
        return "application/json", encode(body), f"huge {name}"

    @st.composite
    def deep_nesting(draw):
        n = draw(st.sampled_from([64, 1000, 100_000]))
        return "application/json", ("[" * n + "]" * n).encode(), f"nested {n} deep"

    return st.one_of(
        st.builds(lambda b: ("application/json", encode(b), "plausible"), plausible),
        one_field_replaced(),
        required_dropped(),
        extra_field(),
        st.builds(lambda d: ("application/json", encode(d), "any JSON document"), any_json),
        st.builds(lambda b: ("application/json", b, "raw bytes"), st.binary(max_size=200)),
        wrong_content_type(),
        huge_strings(),
        deep_nesting(),
    )


def mutation_phase(
    doc: dict,
    client: httpx.Client,
    rec: Recorder,
    customers: list[str],
    args,
    round_no: int,
    deadline: float,
    notes: list,
):
    for (method, path), schema in json_body_schemas(doc).items():
        if time.monotonic() > deadline:
            return
        route = f"{method} {path}"

        def send(item, method=method, path=path, route=route):
            if time.monotonic() > deadline:
                return
            ctype, content, what = item
            hdrs = {"content-type": ctype} if ctype else {}
            try:
                r = client.request(method, path, content=content, headers=hdrs)
            except httpx.HTTPError as exc:
                rec.record(
                    route,
                    "mutated",
                    None,
                    request={"what": what, "content": content[:300].decode("utf-8", "replace")},
                    error=repr(exc)[:300],
                )
                return
            rec.record(
                route,
                "mutated",
                r.status_code,
                r.headers.get("content-type", ""),
                r.content,
                request={"what": what, "content": content[:300].decode("utf-8", "replace")},
            )

        try:
            hypothesis_run(
                mutation_strategy(schema, customers),
                send,
                max_examples=args.max_examples,
                seed_value=args.seed * 104729 + round_no,
            )
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{route} mutated round {round_no}: {type(exc).__name__}: {str(exc)[:200]}")


def protocol_phase(doc: dict, client: httpx.Client, rec: Recorder) -> None:
    """Methods an operation does not allow, paths that do not exist and, with an API key, requests without it."""
    for path, ops in doc.get("paths", {}).items():
        allowed = {m for m in ops if m in HTTP_METHODS}
        for method in HTTP_METHODS:
            if method in allowed or (method == "get" and "get" in allowed):
                continue
            _send(client, rec, f"{method.upper()} {path}", method.upper(), path, b"{}")
    if "x-api-key" in client.headers:
        for path, ops in doc.get("paths", {}).items():
            for method in ops:
                if method in HTTP_METHODS:
                    route = f"{method.upper()} {path} without key"
                    _send(client, rec, route, method.upper(), path, b"{}", anonymous=True)
    for path in (
        "/v1/does-not-exist",
        "/v2/recommend",
        "/v1/recommend/extra",
        "/%00",
        "/..%2f..%2fetc/passwd",
    ):
        _send(client, rec, "unknown path", "POST", path, b"{}")


def _send(
    client: httpx.Client,
    rec: Recorder,
    route: str,
    method: str,
    path: str,
    content: bytes,
    anonymous: bool = False,
) -> None:
    headers = {"content-type": "application/json"}
    try:
        if anonymous:
            r = httpx.request(
                method, client.base_url.join(path), content=content, headers=headers, timeout=30
            )
        else:
            r = client.request(method, path, content=content, headers=headers)
        rec.record(
            route,
            "protocol",
            r.status_code,
            r.headers.get("content-type", ""),
            r.content,
            request={"method": method, "path": path},
        )
    except httpx.HTTPError as exc:
        rec.record(route, "protocol", None, request={"method": method, "path": path}, error=repr(exc)[:300])


# -- main -------------------------------------------------------------------------------------------


def fuzz(url: str, headers: dict, customers: list[str], args) -> tuple[Recorder, list[str], dict]:
    import schemathesis

    notes: list[str] = []
    rec = Recorder()
    doc = httpx.get(f"{url}/docs.json", headers=headers, timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    deadline = time.monotonic() + args.max_seconds
    rounds = 0
    with httpx.Client(base_url=url, headers=headers, timeout=args.timeout) as client:
        protocol_phase(doc, client, rec)
        while time.monotonic() < deadline and (rounds == 0 or rec.total < args.min_requests):
            before = rec.total
            schemathesis_phase(schema, url, headers, rec, args, rounds, deadline, notes)
            mutation_phase(doc, client, rec, customers, args, rounds, deadline, notes)
            rounds += 1
            print(f"round {rounds}: {rec.total} requests so far", file=sys.stderr, flush=True)
            if rec.total == before:
                notes.append("a round sent nothing new: stopping")
                break
    if rec.total < args.min_requests:
        notes.append(f"only {rec.total} requests within {args.max_seconds} s (asked for {args.min_requests})")
    info = {"rounds": rounds, "routes_in_openapi": sorted(doc.get("paths", {}))}
    return rec, notes, info


def run(args: argparse.Namespace) -> dict:
    import schemathesis

    workdir = Path(args.workdir).resolve() if args.workdir else default_workdir()
    data_dir = Path(args.data) if args.data else workdir / "data" / "demo"
    try:
        customers = load_customers(args.customers_file, data_dir)
    except SystemExit:
        customers = []
    headers = auth_headers(args.api_key)
    server = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        server = ServerProcess(workdir, workers=args.workers, service=args.service).start()
        url = server.url
    start = time.monotonic()
    try:
        rec, notes, info = fuzz(url, headers, customers, args)
        server_log_tail = server.log_tail(20) if server is not None and rec.server_errors else None
    finally:
        if server is not None:
            server.stop()
    report = {
        "total_requests": rec.total,
        "server_errors": rec.server_errors,
        "transport_errors": rec.transport_errors,
        "rejections_without_message": rec.rejections_without_message,
        "accepted_2xx": rec.accepted,
        "response_schema_failures": rec.response_schema_failures,
        "status_histogram": dict(sorted(rec.statuses.items())),
        "per_route": dict(sorted(rec.per_route.items())),
        "per_route_status": {k: dict(sorted(v.items())) for k, v in sorted(rec.per_route_status.items())},
        "per_mode": dict(sorted(rec.per_mode.items())),
        "failures": rec.failures,
        "response_schema_failure_examples": rec.schema_failures,
        "targets": {
            "at_least_min_requests": rec.total >= args.min_requests,
            "zero_5xx": rec.server_errors == 0,
            "every_rejection_has_message": rec.rejections_without_message == 0,
        },
        "seconds": round(time.monotonic() - start, 1),
        "seed": args.seed,
        "max_examples": args.max_examples,
        "tool": f"schemathesis {schemathesis.__version__} (Python API) + own Hypothesis mutations",
        "machine": machine_info(),
        **info,
        "notes": notes,
    }
    if server is not None:
        report["server_log"] = str(server.log_path)
    if server_log_tail:
        report["server_log_tail"] = server_log_tail
    print(
        f"fuzz: {rec.total} requests, {rec.server_errors} server errors, "
        f"{rec.rejections_without_message} rejections without a message, {rec.accepted} accepted",
        file=sys.stderr,
    )
    return report


def main(argv: list[str] | None = None) -> None:
    p = server_arguments(__doc__, "fuzz")
    p.add_argument(
        "--min-requests", type=int, default=1200, help="keep going in rounds until this many (default 1200)"
    )
    p.add_argument(
        "--max-examples", type=int, default=100, help="Hypothesis examples per operation, mode and round"
    )
    p.add_argument("--max-seconds", type=float, default=300.0, help="time bound of the fuzzing (default 300)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    args = p.parse_args(argv)
    check_local(args.url)
    try:
        import hypothesis  # noqa: F401
        import schemathesis  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"{exc.name} is missing: install the test extras (pip install -e '.[test]')"
        ) from exc
    report = run(args)
    text = json.dumps(report, indent=2, default=repr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
