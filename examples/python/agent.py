#!/usr/bin/env python3
"""A promptreg agent: follows one label of one prompt and serves its version.

It watches `--name`/`--label` on a promptreg server, fetches every version the
label moves to, checks the content digest itself (from the canonical form
documented on `Version` in proto/promptreg/v1/registry.proto), verifies the
server's Ed25519 signature over the version (the "SIGNED MESSAGE" after
`Version` in the same file) with a public key from ListSigningKeys, switches to
it, and tells the registry with AckApplied. A version that fails either check
is rejected and the agent keeps serving its current one. Across disconnects
and server restarts it keeps serving the last good version and resumes the
watch from the next revision it has not processed, so it misses nothing and
applies nothing twice.

During a progressive rollout of its label the agent follows its own arm: the
registry assigns it (by its agent id, or by one of its `--attribute`s) to the
stable version or the candidate, and its watch delivers that arm's version.
The agent counts the outcome of the requests it serves (`Outcomes.record`)
and reports them with ReportOutcome every `--report-interval` seconds, which
is what the rollout's guardrails judge. `--simulate-traffic` makes up such
requests, for drills and tests.

Every event is one JSON line on stdout:

    {"event": "connected", "start_revision": 0, ...}
    {"event": "applied", "name": ..., "label": ..., "version": 2, "digest": ..., "revision": 7, "key_id": ...}
    {"event": "rejected", ..., "reason": "digest mismatch: expected X, computed Y"}
    {"event": "rejected", ..., "reason": "signature: invalid Ed25519 signature by key K ..."}
    {"event": "removed", "revision": 9, ...}
    {"event": "disconnected", "error": ..., "retry_in": 0.42, "serving_version": 2}
    {"event": "compacted", "compact_revision": 120}
    {"event": "applied", ..., "version": 3, "arm": "candidate", "rollout_id": 4, "rollout_state": "running"}
    {"event": "arm", "version": 2, "arm": "stable", "rollout_id": 4, "rollout_state": "running"}
    {"event": "reported", "version": 3, "requests": 120, "errors": 2, ..., "rollout_id": 4, "arm": "candidate"}
    {"event": "stopped", "serving_version": 2}

Events about a label under rollout carry `arm` (`stable` or `candidate`),
`rollout_id` and `rollout_state`; `arm` is left out when it is not known
(no rollout, or one that has ended).

Usage:

    pip install -r requirements.txt
    python agent.py --server 127.0.0.1:50051 --name support/triage --label production
    python agent.py ... --attribute tenant=acme --report-interval 10
    python agent.py ... --simulate-traffic 20 --simulate-error-rate 5=0.5   # a drill
    python agent.py --self-test     # the documented digest and signature examples, offline

Python 3.9+; dependencies: grpcio, grpcio-tools, protobuf, cryptography. If
`opentelemetry` is importable, applying a version is traced and `prompt_span()`
puts the prompt's name, label, version and digest on spans of your own.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

HERE = Path(__file__).resolve().parent
SDK = "promptreg-python-example"
AGENT_VERSION = "0.1"
PROTO_FILE = "promptreg/v1/registry.proto"

# Unary calls (GetVersion, AckApplied) give up after this many seconds.
RPC_TIMEOUT = 10.0
# Reconnect backoff: full jitter between 0 and min(cap, BASE * 2**attempt).
BACKOFF_BASE = 0.1
# The last outcome report on shutdown gives up after this many seconds.
FINAL_REPORT_TIMEOUT = 2.0

try:  # Optional tracing: only when the user has OpenTelemetry installed.
    from opentelemetry import trace as _otel_trace

    _TRACER = _otel_trace.get_tracer(SDK, AGENT_VERSION)
except ImportError:  # pragma: no cover - depends on the environment
    _TRACER = None


# ---------------------------------------------------------------------------
# The canonical form and digest (see `message Version` in registry.proto).
# Pure Python: needs no generated code.
# ---------------------------------------------------------------------------

CANONICAL_TAG = b"promptreg.content.v1\n"


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _str(s: str) -> bytes:
    data = s.encode("utf-8")
    return _u32(len(data)) + data


def canonical_bytes(
    *,
    text: Optional[str] = None,
    chat: Optional[list[tuple[str, str]]] = None,
    variables: list[str],
    model_config_json: str,
) -> bytes:
    """The canonical form of one version's content: exactly one of `text`
    (a text template) or `chat` (a list of (role, content) messages)."""
    if (text is None) == (chat is None):
        raise ValueError("exactly one of text or chat is required")
    out = bytearray(CANONICAL_TAG)
    if text is not None:
        out += _str("text") + _str(text)
    else:
        out += _str("chat") + _u32(len(chat))
        for role, content in chat:
            out += _str(role) + _str(content)
    # Ascending *byte* order of the UTF-8 encodings (not Python's code-point
    # order of str, which differs for characters outside the BMP).
    encoded = sorted(v.encode("utf-8") for v in variables)
    out += _u32(len(encoded))
    for var in encoded:
        out += _u32(len(var)) + var
    out += _str(model_config_json)
    return bytes(out)


def digest_of(canonical: bytes) -> str:
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def version_digest(version: Any) -> str:
    """Recomputes the digest of a `promptreg.v1.Version` message."""
    kind = version.template.WhichOneof("kind")
    if kind == "text":
        canonical = canonical_bytes(
            text=version.template.text,
            variables=list(version.variables),
            model_config_json=version.model_config_json,
        )
    elif kind == "chat":
        canonical = canonical_bytes(
            chat=[(m.role, m.content) for m in version.template.chat.messages],
            variables=list(version.variables),
            model_config_json=version.model_config_json,
        )
    else:
        raise ValueError(f"version {version.version} has no template content")
    return digest_of(canonical)


# ---------------------------------------------------------------------------
# Signatures (see "SIGNED MESSAGE" after `message Version` in registry.proto).
# The message is pure Python; checking it needs the `cryptography` package.
# ---------------------------------------------------------------------------

SIGNATURE_TAG = b"promptreg.signature.v1\n"
SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 32


def _u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def _i64(n: int) -> bytes:
    return struct.pack(">q", n)


def timestamp_micros(seconds: int, nanos: int) -> int:
    """A `google.protobuf.Timestamp` in microseconds since the Unix epoch, as
    signed by the server (nanos is always in [0, 1e9), so this truncates)."""
    return seconds * 1_000_000 + nanos // 1000


def signed_message(name: str, version: int, digest: str, created_at_micros: int) -> bytes:
    """The bytes the server signs for a version: the tag, str(name),
    u64(version), str(digest text), i64(created_at in microseconds)."""
    return SIGNATURE_TAG + _str(name) + _u64(version) + _str(digest) + _i64(created_at_micros)


def key_id_of(public_key: bytes) -> str:
    """A signing key's id: the first 16 hex digits of SHA-256 over the raw key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _ed25519() -> tuple[Any, Any]:
    """(Ed25519PublicKey, InvalidSignature) from `cryptography`."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        sys.exit(
            "error: the `cryptography` package is needed to verify signatures "
            f"(pip install -r {HERE / 'requirements.txt'})"
        )
    return Ed25519PublicKey, InvalidSignature


class SignatureError(Exception):
    """A version's signature does not hold; the message says why."""


class KeyRing:
    """The server's public keys by key id, fetched with `fetch` (which returns
    (key_id, raw public key) pairs, i.e. ListSigningKeys) and cached. An
    unknown key id makes it fetch again, once per lookup, to pick up a key
    rotation. A key whose id is not the hash of its bytes is never used."""

    def __init__(self, fetch: Any) -> None:
        self.fetch = fetch
        self.keys: dict[str, Any] = {}
        self.invalid: dict[str, str] = {}  # key id -> why it is not used
        self.Ed25519PublicKey, self.InvalidSignature = _ed25519()

    def refresh(self) -> None:
        for key_id, public_key in self.fetch():
            public_key = bytes(public_key)
            if key_id in self.keys:
                continue  # already checked; ids are hashes, so it cannot differ
            if len(public_key) != PUBLIC_KEY_LEN:
                self.invalid[key_id] = f"its public key is {len(public_key)} bytes, not {PUBLIC_KEY_LEN}"
            elif key_id_of(public_key) != key_id:
                self.invalid[key_id] = f"its public key hashes to key id {key_id_of(public_key)}"
            else:
                try:
                    self.keys[key_id] = self.Ed25519PublicKey.from_public_bytes(public_key)
                    self.invalid.pop(key_id, None)
                except ValueError as e:
                    self.invalid[key_id] = f"not an Ed25519 public key ({e})"

    def public_key(self, key_id: str) -> Any:
        if key_id not in self.keys:
            self.refresh()
        if key_id in self.keys:
            return self.keys[key_id]
        if key_id in self.invalid:
            raise SignatureError(f"signing key {key_id} is not usable: {self.invalid[key_id]}")
        raise SignatureError(f"unknown signing key {key_id} (not in ListSigningKeys)")

    def verify(
        self,
        *,
        name: str,
        version: int,
        digest: str,
        created_at_micros: int,
        signature: bytes,
        key_id: str,
    ) -> None:
        """Raises SignatureError unless `signature` is the signature of key
        `key_id` over this version's signed message."""
        if not signature:
            raise SignatureError(f"version {version} is unsigned")
        if not key_id:
            raise SignatureError(f"version {version} names no signing key")
        if len(signature) != SIGNATURE_LEN:
            raise SignatureError(f"the signature is {len(signature)} bytes, not {SIGNATURE_LEN}")
        public_key = self.public_key(key_id)
        try:
            public_key.verify(bytes(signature), signed_message(name, version, digest, created_at_micros))
        except self.InvalidSignature:
            raise SignatureError(
                f"invalid Ed25519 signature by key {key_id} over {name} v{version} {digest}"
            ) from None


# The signature example of --self-test: the documented digest example, as
# version 1 of `examples/hi`, signed with the key of RFC 8032's test 1.
EXAMPLE_SECRET_KEY = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
EXAMPLE_CREATED_AT = (1714564800, 123456789)  # 2024-05-01T12:00:00.123456789Z


def self_test() -> int:
    """Prints the documented digest example's canonical bytes and digest, and
    the signed message and signature of an example version; checks both
    against layouts written out by hand, and the signature checks (good,
    tampered, unknown key) against a fixed key. Offline."""
    canonical = canonical_bytes(
        text="Hi {{name}}", variables=["name"], model_config_json="{}"
    )
    documented = (
        b"promptreg.content.v1\n"
        + bytes.fromhex("00000004") + b"text"
        + bytes.fromhex("0000000b") + b"Hi {{name}}"
        + bytes.fromhex("00000001") + bytes.fromhex("00000004") + b"name"
        + bytes.fromhex("00000002") + b"{}"
    )
    digest = digest_of(canonical)

    _ed25519()  # a readable error if `cryptography` is missing
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(EXAMPLE_SECRET_KEY))
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_id = key_id_of(public)
    seconds, nanos = EXAMPLE_CREATED_AT
    micros = timestamp_micros(seconds, nanos)
    message = signed_message("examples/hi", 1, digest, micros)
    signed_documented = (
        b"promptreg.signature.v1\n"
        + bytes.fromhex("0000000b") + b"examples/hi"
        + bytes.fromhex("0000000000000001")
        + bytes.fromhex("00000047") + digest.encode()
        + bytes.fromhex("0006176339db1240")  # 1714564800123456 microseconds
    )
    signature = private.sign(message)

    keyring = KeyRing(lambda: [(key_id, public)])
    checks = {}

    def check(case: str, **changes: Any) -> None:
        fields = dict(
            name="examples/hi", version=1, digest=digest, created_at_micros=micros,
            signature=signature, key_id=key_id,
        )
        fields.update(changes)
        try:
            keyring.verify(**fields)
            checks[case] = "verified"
        except SignatureError as e:
            checks[case] = f"rejected: {e}"

    tampered = bytearray(signature)
    tampered[0] ^= 0x01
    check("good")
    check("tampered_signature", signature=bytes(tampered))
    check("other_version", version=2)
    check("other_created_at", created_at_micros=micros + 1)
    check("unsigned", signature=b"", key_id="")
    check("unknown_key", key_id="0123456789abcdef")
    # The proto's ASSIGNMENT test vectors (tests/rollout_vectors.rs checks
    # `bucket` against the proto itself and the server).
    bucket_examples = [
        ("s1", "agent-0", 5760), ("s1", "agent-1", 9993), ("s1", "agent-2", 7040),
        ("s1", "", 503), ("", "agent-0", 2498), ("rollout-7", "tenant-acme", 9644),
        ("é", "ключ", 4371),
    ]
    buckets_ok = all(bucket(salt, key) == want for salt, key, want in bucket_examples)
    ok = (
        canonical == documented
        and buckets_ok
        and message == signed_documented
        and checks["good"] == "verified"
        and all(v.startswith("rejected: ") for k, v in checks.items() if k != "good")
    )
    print(
        json.dumps(
            {
                "example": {"text": "Hi {{name}}", "variables": ["name"], "model_config_json": "{}"},
                "canonical_hex": canonical.hex(),
                "digest": digest,
                "matches_documented_bytes": canonical == documented,
                "signature_example": {
                    "name": "examples/hi",
                    "version": 1,
                    "digest": digest,
                    "created_at": {"seconds": seconds, "nanos": nanos},
                    "created_at_micros": micros,
                    "signed_message_hex": message.hex(),
                    "matches_documented_layout": message == signed_documented,
                    "secret_key_hex": EXAMPLE_SECRET_KEY,
                    "public_key_hex": public.hex(),
                    "key_id": key_id,
                    "signature_hex": signature.hex(),
                    "checks": checks,
                },
                "bucket_examples": [
                    {"salt": salt, "key": key, "bucket": bucket(salt, key), "documented": want}
                    for salt, key, want in bucket_examples
                ],
                "ok": ok,
            }
        ),
        flush=True,
    )
    return 0 if ok else 1


# ---------------------------------------------------------------------------
# Rollouts: the assignment, and outcome counts (see "Progressive rollouts" at
# the end of registry.proto). Pure Python: needs no generated code.
# ---------------------------------------------------------------------------

BUCKET_TAG = b"promptreg.bucket.v1\n"
BUCKETS_BP = 10_000  # basis points: a bucket is in 0..9999


def bucket(salt: str, key: str) -> int:
    """An agent's bucket under a rollout's salt, as the proto's ASSIGNMENT
    defines it: the first 8 bytes of SHA-256(tag || salt || "\\n" || key),
    big-endian, times 10000, over 2^64 (Python's integers are exact). The
    key is the agent id, or the value of the rollout's `sticky_by`
    attribute. The agent is on the candidate while bucket < weight_bp."""
    digest = hashlib.sha256(BUCKET_TAG + salt.encode("utf-8") + b"\n" + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") * BUCKETS_BP >> 64


# Upper bounds (ms, inclusive) of the latency histogram of ReportOutcome;
# one more bucket holds everything above the last (+Inf): 12 in all.
LATENCY_BOUNDS_MS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
# The most requests one ReportOutcome may carry.
MAX_REPORT_REQUESTS = 10**9


def latency_bucket(latency_ms: float) -> int:
    """The histogram bucket of a latency: the first bound it is at or below."""
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if latency_ms <= bound:
            return i
    return LATENCY_BUCKETS - 1


class Window:
    """The outcome counts of one version over one reporting window."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.requests = 0
        self.errors = 0
        self.safety_violations = 0
        self.policy_violations = 0
        self.latency_ms_sum = 0.0
        self.latency_buckets = [0] * LATENCY_BUCKETS

    def add(self, success: bool, safety_violation: bool, latency_ms: float, policy_violation: bool) -> None:
        self.requests += 1
        self.errors += 0 if success else 1
        self.safety_violations += 1 if safety_violation else 0
        self.policy_violations += 1 if policy_violation else 0
        self.latency_ms_sum += latency_ms
        self.latency_buckets[latency_bucket(latency_ms)] += 1

    def merge(self, other: "Window") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.safety_violations += other.safety_violations
        self.policy_violations += other.policy_violations
        self.latency_ms_sum += other.latency_ms_sum
        self.latency_buckets = [a + b for a, b in zip(self.latency_buckets, other.latency_buckets)]

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "safety_violations": self.safety_violations,
            "policy_violations": self.policy_violations,
            "latency_ms_sum": round(self.latency_ms_sum, 3),
        }


class Outcomes:
    """Outcome counts of the requests this agent serves, for the version it
    serves now; thread-safe. Call `record()` once per request your agent
    handled; the agent reports the counts since its last report every
    `--report-interval` seconds (ReportOutcome) and starts a new window. When
    the served version changes the unreported counts of the old one are
    dropped: a rollout judges a version by the requests served while the
    agent was assigned to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window: Optional[Window] = None

    @property
    def version(self) -> Optional[int]:
        """The version counted now (None before the first apply)."""
        with self._lock:
            return self._window.version if self._window else None

    def record(
        self,
        success: bool,
        safety_violation: bool = False,
        latency_ms: float = 0.0,
        policy_violation: bool = False,
        *,
        version: Optional[int] = None,
    ) -> bool:
        """Counts one request: whether it succeeded, whether its output broke
        a safety or policy rule, and how long it took (ms, 0 or more). With
        `version` (the version that served the request, e.g. read when it
        started), it is counted only if that is still the version served.
        Returns whether it was counted (nothing is before a first apply)."""
        latency_ms = float(latency_ms)
        if not (latency_ms >= 0.0 and latency_ms != float("inf")):  # also refuses NaN
            raise ValueError(f"latency_ms must be a finite number, 0 or more; got {latency_ms!r}")
        with self._lock:
            window = self._window
            if window is None or (version is not None and version != window.version):
                return False
            window.add(bool(success), bool(safety_violation), latency_ms, bool(policy_violation))
            return True

    def serve(self, version: int) -> int:
        """The agent serves `version` from now on: a new window when it is a
        different version. Returns the requests dropped from the old one."""
        with self._lock:
            if self._window is not None and self._window.version == version:
                return 0
            dropped = self._window.requests if self._window else 0
            self._window = Window(version)
            return dropped

    def take(self) -> Optional[Window]:
        """The counts since the last take (None if no request was recorded),
        and a new window for the same version."""
        with self._lock:
            window = self._window
            if window is None or window.requests == 0:
                return None
            self._window = Window(window.version)
            return window

    def give_back(self, window: Window) -> bool:
        """Puts back counts whose report failed, to be sent with the next
        window; False (dropped) when the served version changed since, or
        when the merged window would be over what one report may carry."""
        with self._lock:
            current = self._window
            if current is None or current.version != window.version:
                return False
            if current.requests + window.requests > MAX_REPORT_REQUESTS:
                return False
            current.merge(window)
            return True


def parse_error_rates(specs: list[str]) -> dict[Optional[int], float]:
    """`--simulate-error-rate` values: `VERSION=RATE` for one version, a plain
    `RATE` for every other version (`None` key); several per value with
    commas. Raises ValueError naming what is wrong."""
    rates: dict[Optional[int], float] = {}
    for spec in specs:
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            version_text, sep, rate_text = item.rpartition("=")
            version: Optional[int] = None
            if sep:
                if not version_text.strip().isdigit() or int(version_text) < 1:
                    raise ValueError(f"{item!r}: the version must be a number from 1")
                version = int(version_text)
            try:
                rate = float(rate_text)
            except ValueError:
                raise ValueError(f"{item!r}: the rate must be a number from 0 to 1") from None
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{item!r}: the rate must be a number from 0 to 1")
            rates[version] = rate
    return rates


class TrafficSimulator:
    """Made-up requests for drills and tests: `rps` a second, each failing
    with the error rate of the version served then (`rates`, see
    `parse_error_rates`), with latencies around 40 ms, recorded in
    `outcomes` from a background thread."""

    TICK = 0.05  # seconds between batches

    def __init__(
        self,
        outcomes: Outcomes,
        rps: float,
        rates: dict[Optional[int], float],
        halt: threading.Event,
        seed: Optional[int] = None,
    ) -> None:
        self.outcomes = outcomes
        self.rps = rps
        self.rates = rates
        self.halt = halt
        self.random = random.Random(seed)
        self.thread = threading.Thread(target=self.run, name="simulate-traffic", daemon=True)

    def rate_for(self, version: int) -> float:
        return self.rates.get(version, self.rates.get(None, 0.0))

    def one_request(self) -> None:
        version = self.outcomes.version
        if version is None:
            return  # nothing served yet
        failed = self.random.random() < self.rate_for(version)
        latency = min(self.random.lognormvariate(3.7, 0.5), 60_000.0)  # median ~40 ms
        self.outcomes.record(success=not failed, latency_ms=latency, version=version)

    def run(self) -> None:
        start = time.monotonic()
        done = 0
        while not self.halt.is_set():
            due = int((time.monotonic() - start) * self.rps) - done
            # After a stall (a loaded machine), catch up at most one second.
            for _ in range(min(due, int(self.rps) + 1)):
                self.one_request()
            done += max(due, 0)
            self.halt.wait(min(self.TICK, 1.0 / self.rps))


# ---------------------------------------------------------------------------
# Generated client code: made from proto/ with grpc_tools when missing or stale.
# ---------------------------------------------------------------------------


def load_stubs(proto_dir: Path, gen_dir: Path) -> tuple[Any, Any]:
    """Returns the (registry_pb2, registry_pb2_grpc) modules, generating them
    into `gen_dir` first if they are missing or older than the proto."""
    proto = proto_dir / PROTO_FILE
    out = gen_dir / "promptreg" / "v1"
    modules = [out / "registry_pb2.py", out / "registry_pb2_grpc.py"]
    stamp = gen_dir / ".proto-sha256"
    want = hashlib.sha256(proto.read_bytes()).hexdigest() if proto.is_file() else None
    have = stamp.read_text().strip() if stamp.is_file() else None
    fresh = all(m.is_file() for m in modules) and (want is None or want == have)
    if not fresh:
        if want is None:
            sys.exit(f"error: {proto} not found (set --proto-dir to the repository's proto/)")
        out.mkdir(parents=True, exist_ok=True)
        # Generate into a scratch folder, then move the files in: another
        # agent starting at the same time never imports a half-written module.
        with tempfile.TemporaryDirectory(prefix=".gen-", dir=gen_dir) as scratch:
            command = [
                sys.executable, "-m", "grpc_tools.protoc",
                f"-I{proto_dir}",
                f"--python_out={scratch}",
                f"--grpc_python_out={scratch}",
                PROTO_FILE,
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(
                    f"error: generating the client failed ({' '.join(command)}):\n"
                    f"{done.stderr.strip()}\n(is grpcio-tools installed? "
                    f"pip install -r {HERE / 'requirements.txt'})"
                )
            for module in modules:
                os.replace(Path(scratch) / "promptreg" / "v1" / module.name, module)
        for package in (gen_dir / "promptreg", out):
            (package / "__init__.py").touch()
        stamp.write_text(want + "\n")
    if str(gen_dir) not in sys.path:
        sys.path.insert(0, str(gen_dir))
    from promptreg.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402

    return registry_pb2, registry_pb2_grpc


# ---------------------------------------------------------------------------
# Output, state file, tracing.
# ---------------------------------------------------------------------------


# Events come from the watch and the reporter threads: one line at a time.
_OUTPUT_LOCK = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields}) + "\n"
    with _OUTPUT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def warn(message: str) -> None:
    line = f"agent: {message}\n"
    with _OUTPUT_LOCK:
        sys.stderr.write(line)
        sys.stderr.flush()


def write_state_atomically(path: Path, state: dict) -> None:
    """Writes JSON to `path` so a reader sees the old file or the new one,
    never a torn one: a temporary file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def prompt_span(span_name: str, prompt: Optional[dict]) -> Iterator[Any]:
    """A span carrying the prompt's name/label/version/digest when
    OpenTelemetry is installed (wrap your LLM calls in it); a no-op otherwise."""
    if _TRACER is None:
        yield None
        return
    # OpenTelemetry GenAI conventions, plus the registry's own attributes.
    names = {
        "name": "gen_ai.prompt.name",
        "version": "gen_ai.prompt.version",
        "digest": "promptreg.prompt.digest",
        "label": "promptreg.label",
        "revision": "promptreg.revision",
    }
    with _TRACER.start_as_current_span(span_name) as span:
        for key, attribute in names.items():
            if prompt and prompt.get(key) is not None:
                span.set_attribute(attribute, prompt[key])
        yield span


def trace_metadata() -> list:
    """gRPC metadata carrying the current trace context as W3C `traceparent`
    (empty without OpenTelemetry), so the registry's spans join the agent's
    trace."""
    if _TRACER is None:
        return []
    from opentelemetry.propagate import inject

    carrier: dict = {}
    inject(carrier)
    return [(k.lower(), v) for k, v in carrier.items()]


# ---------------------------------------------------------------------------
# The agent.
# ---------------------------------------------------------------------------


class Agent:
    def __init__(self, args: argparse.Namespace, pb2: Any, pb2_grpc: Any) -> None:
        import grpc

        self.grpc = grpc
        # Failures worth retrying: the change is delivered again on resume.
        self.transient_codes = {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.CANCELLED,
        }
        self.pb2 = pb2
        self.name: str = args.name
        self.label: str = args.label
        self.agent_id: str = args.agent_id
        self.state_file: Optional[Path] = args.state_file
        self.max_backoff: float = args.max_backoff
        # Rollouts may assign agents by an attribute (`sticky_by`) instead
        # of their id.
        self.attributes: dict[str, str] = dict(args.attribute or [])
        self.info = pb2.AgentInfo(
            host=socket.gethostname(), sdk=SDK, version=AGENT_VERSION, attributes=self.attributes
        )

        target, secure = parse_server(args.server)
        backoff_ms = int(max(BACKOFF_BASE, self.max_backoff) * 1000)
        options = [
            # Keep gRPC's own reconnect backoff in line with ours, so a
            # restarted server is found again within --max-backoff.
            ("grpc.initial_reconnect_backoff_ms", int(BACKOFF_BASE * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(BACKOFF_BASE * 1000)),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
            # Detect a dead connection between progress messages (gRPC
            # backs off by itself if a server finds the pings too frequent).
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        # The bearer token goes on every call; the registry refuses calls
        # without one (UNAUTHENTICATED) unless it runs --insecure-no-auth.
        self.auth = [("authorization", f"Bearer {args.token}")] if args.token else []
        if secure:
            roots = args.ca_cert.read_bytes() if args.ca_cert else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self.channel = grpc.secure_channel(target, credentials, options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb2_grpc.RegistryStub(self.channel)
        # The server's public keys, fetched on the first apply and again
        # whenever a version names a key id not seen yet (a rotation).
        self.keyring = KeyRing(self.list_signing_keys)

        # What this agent serves: {"name","label","version","digest",
        # "revision","key_id"} plus the fetched content. It only changes on a
        # verified apply.
        self.current: Optional[dict] = None
        self.template: Any = None
        self.model_config_json: str = "{}"
        # The highest revision whose changes are fully processed; the watch
        # resumes from the next one. 0: take a snapshot.
        self.last_revision = 0
        # Acks not sent yet, oldest first: at most an applied then a rejected.
        self.pending_acks: list[Any] = []
        # The rejection ack while the label still points at a version this
        # agent refused: sent again after every reconnect.
        self.rejection: Any = None
        self.attempt = 0  # reconnects since the last successful `created`
        self.stopping = False
        self.call: Any = None

        # The rollout of the label as this agent last heard of it:
        # {"rollout_id", "rollout_state", "arm"} ("arm" only while it runs
        # or is paused), or None when no rollout is known. Written by the
        # watch and by outcome reports, under `lock`.
        self.lock = threading.Lock()
        self.rollout: Optional[dict] = None
        self.rollout_seq = 0  # counts the watch's updates of `rollout`
        self.offered_rollout: Optional[dict] = None  # of the event being applied
        # The outcomes of the requests served (call `outcomes.record()`),
        # reported every --report-interval seconds by a background thread.
        self.outcomes = Outcomes()
        self.report_interval: float = args.report_interval
        self.halt = threading.Event()  # stops the background threads
        self.threads: list[threading.Thread] = [
            threading.Thread(target=self.report_loop, name="report-outcomes", daemon=True)
        ]
        self.simulator: Optional[TrafficSimulator] = None
        if args.simulate_traffic:
            self.simulator = TrafficSimulator(
                self.outcomes, args.simulate_traffic, args.simulate_error_rate, self.halt
            )
            self.threads.append(self.simulator.thread)

    # -- lifecycle -------------------------------------------------------

    def stop(self, signum: int, _frame: Any) -> None:
        """Signal handler: end the stream; run() returns soon after."""
        self.stopping = True
        self.halt.set()
        call = self.call
        if call is not None:
            call.cancel()

    def run(self) -> int:
        for thread in self.threads:
            thread.start()
        try:
            while not self.stopping:
                start = self.last_revision + 1 if self.last_revision > 0 else 0
                error = self.watch_once(start)
                if self.stopping:
                    break
                if error is None:
                    continue  # compacted: take a fresh snapshot at once
                cap = min(self.max_backoff, BACKOFF_BASE * 2 ** min(self.attempt, 30))
                delay = random.uniform(0, cap)  # full jitter
                self.attempt += 1
                emit(
                    "disconnected",
                    error=error,
                    retry_in=round(delay, 3),
                    serving_version=self.serving_version(),
                )
                self.sleep(delay)
        finally:
            self.halt.set()
            for thread in self.threads:
                # The reporter sends what is left (at most FINAL_REPORT_TIMEOUT).
                thread.join(FINAL_REPORT_TIMEOUT + 1.0)
            self.channel.close()
        emit("stopped", serving_version=self.serving_version())
        return 0

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def serving_version(self) -> Optional[int]:
        return self.current["version"] if self.current else None

    # -- one watch stream ------------------------------------------------

    def watch_once(self, start: int) -> Optional[str]:
        """Runs one Watch stream until it ends. Returns the error to report,
        or None when the watch must restart from a snapshot at once."""
        pb2 = self.pb2
        request = pb2.WatchRequest(
            names=[self.name],
            labels=[self.label],
            start_revision=start,
            agent_id=self.agent_id,
            agent=self.info,
        )
        call = self.stub.Watch(request, metadata=self.auth)
        self.call = call
        if self.stopping:  # a signal arrived before self.call was set
            call.cancel()
        seen_in_snapshot = False
        try:
            for message in call:
                kind = message.WhichOneof("event")
                if kind == "created":
                    self.attempt = 0
                    emit(
                        "connected",
                        start_revision=start,
                        revision=message.created.revision,
                        compact_revision=message.created.compact_revision,
                    )
                    if self.current is not None:
                        # Tell the registry what we run on every (re)connect,
                        # so its fleet view is right after it restarts too.
                        self.queue_ack(
                            pb2.APPLY_OUTCOME_APPLIED,
                            self.current["version"],
                            self.current["digest"],
                            self.current["revision"],
                        )
                    if self.rejection is not None:
                        # ... and what we refused, if the label still points there.
                        self.queue_ack_request(self.rejection)
                elif kind == "snapshot":
                    snapshot = message.snapshot
                    for state in snapshot.labels:
                        if state.name == self.name and state.label == self.label:
                            seen_in_snapshot = True
                            rollout = self.rollout_of(
                                state.rollout if state.HasField("rollout") else None,
                                arm=state.arm,
                            )
                            self.offer(state.version, state.digest, state.revision, rollout)
                    if snapshot.complete:
                        if not seen_in_snapshot and self.current is not None:
                            self.removed(snapshot.revision)
                        self.last_revision = snapshot.revision
                elif kind == "changes":
                    batch = message.changes
                    for change in batch.changes:
                        if change.WhichOneof("kind") != "label_moved":
                            continue
                        move = change.label_moved
                        if move.name != self.name or move.label != self.label:
                            continue
                        if move.to_version == 0:
                            self.removed(batch.revision)
                        elif move.kind == pb2.MOVE_KIND_ROLLOUT:
                            # Not sent to a watch with an agent id (it gets
                            # a promote or rollback when its arm changes);
                            # if a server sends it anyway, work the arm out
                            # from the rollout, as the proto defines it.
                            version, digest, rollout = self.own_arm(move.rollout)
                            self.offer(version, digest, batch.revision, rollout)
                        else:
                            rollout = None
                            if move.HasField("rollout"):
                                rollout = self.rollout_of(move.rollout, to_version=move.to_version)
                            self.offer(move.to_version, move.digest, batch.revision, rollout)
                    self.last_revision = max(self.last_revision, batch.revision)
                elif kind == "progress":
                    self.last_revision = max(self.last_revision, message.progress.revision)
                self.flush_ack()
                if self.stopping:
                    break
            return "stream ended by the server"
        except self.grpc.RpcError as e:
            code, details = e.code(), e.details()
            if code == self.grpc.StatusCode.OUT_OF_RANGE and call.done() and call.code() == code:
                # Resuming from a compacted revision: start over with a
                # snapshot (the current version is kept until then).
                emit("compacted", compact_revision=compact_revision_of(e))
                self.last_revision = 0
                return None
            return f"{code.name}: {details}"
        finally:
            self.call = None
            call.cancel()

    # -- applying --------------------------------------------------------

    def offer(self, version: int, event_digest: str, revision: int, rollout: Optional[dict] = None) -> None:
        """The label points at `version` for this agent as of `revision`
        (during a rollout: its arm's version, `rollout` saying which):
        apply it unless we already run it."""
        self.offered_rollout = rollout
        if self.current and self.current["version"] == version and self.current["digest"] == event_digest:
            self.set_rollout(rollout, version)
            if self.rejection is not None:
                # Back to what we run (e.g. a rollback after a rejected
                # promote): report it, which clears the rejection in the
                # fleet view.
                self.rejection = None
                self.queue_ack(self.pb2.APPLY_OUTCOME_APPLIED, version, event_digest, revision)
            return
        try:
            response = self.stub.GetVersion(
                self.pb2.GetVersionRequest(name=self.name, version=version),
                timeout=RPC_TIMEOUT,
                metadata=self.auth + trace_metadata(),
            )
        except self.grpc.RpcError as e:
            if e.code() in self.transient_codes:
                raise  # reconnect; the change is delivered again on resume
            self.reject(version, "", revision, f"cannot fetch version {version}: {e.code().name}: {e.details()}")
            return
        fetched = response.version

        # 1. The content is what its digest says.
        try:
            computed = version_digest(fetched)
        except ValueError as e:
            self.reject(version, "", revision, str(e))
            return
        if computed != event_digest or computed != fetched.digest:
            expected = event_digest if event_digest != computed else fetched.digest
            self.reject(version, computed, revision, f"digest mismatch: expected {expected}, computed {computed}")
            return

        # 2. The server signed that digest under this name, number and time.
        # The message is built from what this agent asked for and computed,
        # not from what the server says, so a swapped version fails too.
        try:
            self.keyring.verify(
                name=self.name,
                version=version,
                digest=computed,
                created_at_micros=timestamp_micros(fetched.created_at.seconds, fetched.created_at.nanos),
                signature=bytes(fetched.signature),
                key_id=fetched.signing_key_id,
            )
        except SignatureError as e:
            self.reject(version, computed, revision, f"signature: {e}")
            return
        except self.grpc.RpcError as e:
            if e.code() in self.transient_codes:
                raise  # reconnect; the change is delivered again on resume
            self.reject(
                version, computed, revision,
                f"signature: cannot list the signing keys: {e.code().name}: {e.details()}",
            )
            return

        prompt = {
            "name": self.name,
            "label": self.label,
            "version": version,
            "digest": computed,
            "revision": revision,
            "key_id": fetched.signing_key_id,
        }
        with prompt_span("promptreg.apply", prompt):
            # Switch: from here on the new content is what this agent serves.
            self.template = fetched.template
            self.model_config_json = fetched.model_config_json
            with self.lock:
                self.current = prompt
                self.rollout = rollout
                self.rollout_seq += 1
            # Outcomes from now on are this version's.
            self.outcomes.serve(version)
            if self.state_file is not None:
                write_state_atomically(self.state_file, prompt)
            self.rejection = None
            # Inside the span: the acknowledgement carries its traceparent.
            self.queue_ack(self.pb2.APPLY_OUTCOME_APPLIED, version, computed, revision)
        emit("applied", **prompt, **(rollout or {}))

    def list_signing_keys(self) -> list[tuple[str, bytes]]:
        response = self.stub.ListSigningKeys(
            self.pb2.ListSigningKeysRequest(), timeout=RPC_TIMEOUT, metadata=self.auth
        )
        return [(key.key_id, bytes(key.public_key)) for key in response.keys]

    def reject(self, version: int, computed: str, revision: int, reason: str) -> None:
        emit(
            "rejected",
            name=self.name,
            label=self.label,
            version=version,
            digest=computed,
            revision=revision,
            reason=reason,
            serving_version=self.serving_version(),
            **(self.offered_rollout or {}),
        )
        self.rejection = self.queue_ack(self.pb2.APPLY_OUTCOME_REJECTED, version, computed, revision, reason)

    def removed(self, revision: int) -> None:
        # Nothing to apply: keep serving the last good version. The label no
        # longer points at a version we refused, if it did.
        self.rejection = None
        emit(
            "removed",
            name=self.name,
            label=self.label,
            revision=revision,
            serving_version=self.serving_version(),
        )

    # -- rollouts --------------------------------------------------------

    def rollout_of(self, rollout: Any, *, arm: Optional[int] = None, to_version: int = 0) -> Optional[dict]:
        """What an event says of the label's rollout: its id and state, and
        while it runs or is paused this agent's arm, from the snapshot's
        `arm` or from the version a move takes the agent to."""
        if rollout is None:
            return None
        pb2 = self.pb2
        info: dict = {
            "rollout_id": rollout.id,
            "rollout_state": enum_suffix(pb2.RolloutState, rollout.state, "ROLLOUT_STATE_"),
        }
        if rollout.state not in (pb2.ROLLOUT_STATE_RUNNING, pb2.ROLLOUT_STATE_PAUSED):
            return info  # ended: everyone is on one version, no arms
        name: Optional[str] = None
        if arm is not None:
            name = arm_name(pb2, arm)
        elif to_version and to_version == rollout.candidate_version:
            name = "candidate"
        elif to_version and to_version == rollout.stable_version:
            name = "stable"
        if name is not None:
            info["arm"] = name
            mine = self.local_arm(rollout)
            if mine != name:
                warn(
                    f"the server puts this agent on the {name} arm of rollout {rollout.id}, "
                    f"but its bucket says {mine} (salt {rollout.spec.salt!r}, "
                    f"weight {rollout.weight_bp} bp, key {self.assignment_key(rollout)!r})"
                )
        return info

    def assignment_key(self, rollout: Any) -> Optional[str]:
        """What a rollout assigns this agent by: its id, or its `sticky_by`
        attribute (None when it has not got it: it stays on stable)."""
        sticky_by = rollout.spec.sticky_by
        return self.attributes.get(sticky_by) if sticky_by else self.agent_id

    def local_arm(self, rollout: Any) -> str:
        """This agent's arm in `rollout` by the proto's ASSIGNMENT rule."""
        pb2 = self.pb2
        if rollout.state == pb2.ROLLOUT_STATE_COMPLETED:
            return "candidate"
        if rollout.state not in (pb2.ROLLOUT_STATE_RUNNING, pb2.ROLLOUT_STATE_PAUSED):
            return "stable"
        key = self.assignment_key(rollout)
        on_candidate = key is not None and bucket(rollout.spec.salt, key) < rollout.weight_bp
        return "candidate" if on_candidate else "stable"

    def own_arm(self, rollout: Any) -> tuple[int, str, Optional[dict]]:
        """(version, digest, rollout info) of this agent's arm in a rollout
        move it was sent as is (MOVE_KIND_ROLLOUT)."""
        if self.local_arm(rollout) == "candidate":
            version, digest = rollout.candidate_version, rollout.candidate_digest
        else:
            version, digest = rollout.stable_version, rollout.stable_digest
        return version, digest, self.rollout_of(rollout, to_version=version)

    def set_rollout(self, rollout: Optional[dict], version: int, seq: Optional[int] = None) -> None:
        """Takes in what is known of the rollout while serving `version`
        (unchanged); emits an `arm` event when that changes the arm. With
        `seq` (an outcome report's), only if the watch said nothing since."""
        with self.lock:
            if self.serving_version() != version or (seq is not None and seq != self.rollout_seq):
                return
            before = self.rollout
            self.rollout = rollout
            if seq is None:
                self.rollout_seq += 1
        old_arm = (before or {}).get("arm")
        new_arm = (rollout or {}).get("arm")
        if old_arm != new_arm:
            emit("arm", name=self.name, label=self.label, version=version, **{"arm": None, **(rollout or {})})

    # -- outcome reports -------------------------------------------------

    def report_loop(self) -> None:
        """Every --report-interval seconds, the window since the last report;
        once more on the way out. Never ends the agent on an error."""
        while not self.halt.wait(self.report_interval):
            self.report_once(RPC_TIMEOUT)
        self.report_once(FINAL_REPORT_TIMEOUT)

    def report_once(self, timeout: float) -> None:
        window = self.outcomes.take()
        if window is None:
            return  # nothing served since the last report
        try:
            self.send_report(window, timeout)
        except Exception as e:  # noqa: BLE001 - the reporter must outlive anything
            kept = self.outcomes.give_back(window)
            warn(f"ReportOutcome failed ({'kept for the next report' if kept else 'dropped'}): {e!r}")

    def send_report(self, window: Window, timeout: float) -> None:
        pb2 = self.pb2
        request = pb2.ReportOutcomeRequest(
            agent_id=self.agent_id,
            name=self.name,
            label=self.label,
            version=window.version,
            requests=window.requests,
            errors=window.errors,
            safety_violations=window.safety_violations,
            policy_violations=window.policy_violations,
            latency_ms_sum=window.latency_ms_sum,
            latency_buckets=window.latency_buckets,
        )
        seq = self.rollout_seq
        try:
            response = self.stub.ReportOutcome(request, timeout=timeout, metadata=self.auth + trace_metadata())
        except self.grpc.RpcError as e:
            code = e.code()
            if code == self.grpc.StatusCode.INVALID_ARGUMENT:
                # The same counts would be refused again.
                warn(f"ReportOutcome refused; {window.requests} requests dropped: {code.name}: {e.details()}")
                return
            kept = self.outcomes.give_back(window)
            what = "kept for the next report" if kept else "dropped: the served version changed"
            warn(f"ReportOutcome failed ({what}): {code.name}: {e.details()}")
            return
        arm = arm_name(pb2, response.arm)
        emit("reported", name=self.name, label=self.label, **window.as_dict(),
             rollout_id=response.rollout_id, arm=arm)
        # The report says where the server counts us: it tells a stable
        # agent (which the watch tells nothing) its arm, and that a rollout
        # ended. Counted apart (rollout, no arm): a switch is on its way.
        if response.rollout_id == 0:
            self.set_rollout(None, window.version, seq)
        elif arm is not None:
            with self.lock:
                known = dict(self.rollout or {})
            if known.get("rollout_id") != response.rollout_id:
                known = {"rollout_id": response.rollout_id}
            known["arm"] = arm
            self.set_rollout(known, window.version, seq)

    # -- acknowledgements ------------------------------------------------

    def queue_ack(self, outcome: int, version: int, digest: str, revision: int, reason: str = "") -> Any:
        """Acks are best effort: a failed one is retried after the next
        message, and every reconnect acks the current version anyway."""
        request = self.pb2.AckAppliedRequest(
            agent_id=self.agent_id,
            name=self.name,
            label=self.label,
            version=version,
            digest=digest,
            revision=revision,
            outcome=outcome,
            reason=reason,
        )
        self.queue_ack_request(request)
        return request

    def queue_ack_request(self, request: Any) -> None:
        # The registry keeps the last applied version and, after it, the last
        # rejection: an applied ack supersedes every unsent ack, a rejection
        # only unsent rejections.
        if request.outcome == self.pb2.APPLY_OUTCOME_APPLIED:
            self.pending_acks = [request]
        else:
            self.pending_acks = [
                a for a in self.pending_acks if a.outcome == self.pb2.APPLY_OUTCOME_APPLIED
            ] + [request]
        self.flush_ack()

    def flush_ack(self) -> None:
        while self.pending_acks:
            try:
                self.stub.AckApplied(
                    self.pending_acks[0], timeout=RPC_TIMEOUT, metadata=self.auth + trace_metadata()
                )
            except self.grpc.RpcError as e:
                warn(f"AckApplied failed (will retry): {e.code().name}: {e.details()}")
                return
            self.pending_acks.pop(0)


def enum_suffix(enum: Any, value: int, prefix: str) -> str:
    """`ROLLOUT_STATE_RUNNING` -> `running`; an unknown value as its number."""
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def arm_name(pb2: Any, arm: int) -> Optional[str]:
    """`stable`, `candidate`, or None for ARM_UNSPECIFIED."""
    return None if arm == pb2.ARM_UNSPECIFIED else enum_suffix(pb2.Arm, arm, "ARM_")


def compact_revision_of(error: Any) -> Optional[int]:
    """The compact revision from the `promptreg-compact-revision` trailer, or
    failing that the status message ("... (compact revision N) ...")."""
    with contextlib.suppress(Exception):
        for key, value in error.trailing_metadata() or ():
            if key == "promptreg-compact-revision":
                return int(value)
    match = re.search(r"compact revision (\d+)", error.details() or "")
    return int(match.group(1)) if match else None


def parse_server(server: str) -> tuple[str, bool]:
    """`host:port`, `http://host:port` or `https://host:port` -> (target, tls)."""
    secure = server.startswith("https://")
    target = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", server).rstrip("/")
    return target, secure


# What AgentInfo.attributes may hold.
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_BYTES = 64


def parse_attributes(specs: list[str]) -> list[tuple[str, str]]:
    """`--attribute KEY=VALUE` values as (key, value) pairs; ValueError
    naming the first one that breaks the AgentInfo.attributes limits."""
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise ValueError(f"{spec!r}: expected KEY=VALUE")
        for what, text in (("key", key), ("value", value)):
            if len(text.encode("utf-8")) > MAX_ATTRIBUTE_BYTES:
                raise ValueError(f"{spec!r}: the {what} is over {MAX_ATTRIBUTE_BYTES} bytes")
        if key in out:
            raise ValueError(f"{spec!r}: {key} is given twice")
        out[key] = value
    if len(out) > MAX_ATTRIBUTES:
        raise ValueError(f"given {len(out)} times; at most {MAX_ATTRIBUTES} attributes")
    return list(out.items())


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port or http://host:port")
    parser.add_argument("--token", default=os.environ.get("PROMPTREG_TOKEN"),
                        help="the agent's bearer token (prt_...; default $PROMPTREG_TOKEN)")
    parser.add_argument("--token-file", type=Path, default=os.environ.get("PROMPTREG_TOKEN_FILE"),
                        help="read the bearer token from this file (default $PROMPTREG_TOKEN_FILE)")
    parser.add_argument("--ca-cert", type=Path,
                        help="with https://: trust this CA (PEM) instead of the system roots")
    parser.add_argument("--name", help="the prompt to follow, e.g. support/triage")
    parser.add_argument("--label", default="production", help="the label to follow (default production)")
    parser.add_argument("--agent-id", default=f"{socket.gethostname()}-{os.getpid()}",
                        help="this agent's stable identity for fleet status (default hostname-pid)")
    parser.add_argument("--state-file", type=Path,
                        help="after every apply, atomically write the current version here as JSON")
    parser.add_argument("--max-backoff", type=float, default=5.0,
                        help="the reconnect backoff cap, in seconds (default 5)")
    parser.add_argument("--proto-dir", type=Path, default=HERE / ".." / ".." / "proto",
                        help="the folder holding promptreg/v1/registry.proto (default ../../proto)")
    parser.add_argument("--gen-dir", type=Path, default=HERE / "_gen",
                        help="where the generated client goes (default _gen next to agent.py)")
    parser.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE",
                        help="an attribute a rollout may assign this agent by (its sticky_by, "
                             "e.g. tenant=acme); repeatable, at most 16")
    parser.add_argument("--report-interval", type=float, default=10.0, metavar="SECONDS",
                        help="send the outcome counts (ReportOutcome) this often (default 10)")
    parser.add_argument("--simulate-traffic", type=float, metavar="RPS",
                        help="drills and tests: record this many made-up requests a second")
    parser.add_argument("--simulate-error-rate", action="append", default=[], metavar="[VERSION=]RATE",
                        help="with --simulate-traffic: the share of failed requests, for one version "
                             "(5=0.5) or for every other one (0.01); repeatable or comma-separated "
                             "(default 0)")
    parser.add_argument("--self-test", action="store_true",
                        help="print the documented digest and signature examples, check them, and exit")
    args = parser.parse_args(argv)
    if not args.self_test and not args.name:
        parser.error("--name is required")
    if args.max_backoff <= 0:
        parser.error("--max-backoff must be positive")
    try:
        args.attribute = parse_attributes(args.attribute)
    except ValueError as e:
        parser.error(f"--attribute {e}")
    if not (args.report_interval > 0 and args.report_interval < float("inf")):
        parser.error("--report-interval must be a positive number of seconds")
    if args.simulate_traffic is not None and not 0 < args.simulate_traffic <= 100_000:
        parser.error("--simulate-traffic must be more than 0 and at most 100000 requests a second")
    try:
        args.simulate_error_rate = parse_error_rates(args.simulate_error_rate)
    except ValueError as e:
        parser.error(f"--simulate-error-rate {e}")
    if args.simulate_error_rate and args.simulate_traffic is None:
        parser.error("--simulate-error-rate needs --simulate-traffic")
    if not args.token and args.token_file:
        try:
            args.token = args.token_file.read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError) as e:
            parser.error(f"cannot read a token from --token-file {args.token_file}: {e}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        return self_test()
    pb2, pb2_grpc = load_stubs(args.proto_dir.resolve(), args.gen_dir.resolve())
    agent = Agent(args, pb2, pb2_grpc)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
