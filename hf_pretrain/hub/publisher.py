"""Push to the Hugging Face Hub without ever stopping training: a background publisher with retries.

`HubPublisher` owns one worker thread that runs pushes one at a time, in the order they were submitted. Each push
is one commit to one branch; a failure that may pass (network down, timeout, rate limit, server error) is retried
with exponential backoff, a permanent one (bad token, no permission) is not, and after the last attempt the push
is reported as failed. Nothing here raises into the caller: training goes on, local files are never touched, and
`wait` / `summary` tell at the end what was pushed, skipped, failed or is still pending.

Every request ends: `huggingface_hub` sends them without a timeout (one that hangs would hold every later push),
so the publisher gives the process's Hub client a stall timeout (`request_timeout`: seconds without progress on a
connect, read or write) wherever a call sets none.

The token comes from `HF_TOKEN`, the Hugging Face login or `hub_token` in a YAML config (moved out of the arguments
by `take_over_hub_push`): it is held by the `HfApi` client only, never logged, saved or written to a card. It is
refused on the command line (`command_line_token_error`): a launcher prints a failed child's whole command.

Branch names of checkpoints come from a template, e.g. `step{step}-tokens{tokens_h}` → `step1000-tokens2.1B`.
"""

from __future__ import annotations

import logging
import re
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass
from queue import Queue
from typing import TYPE_CHECKING

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_session
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

if TYPE_CHECKING:
    import httpx2  # huggingface_hub's HTTP client

logger = logging.getLogger(__name__)

DEFAULT_REVISION_TEMPLATE = "step{step}-tokens{tokens_h}"
REVISION_FIELDS = ("step", "tokens", "tokens_h")
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RETRIED_STATUS = (408, 409, 423, 425, 429)  # plus every 5xx: timeouts, conflicts, locks, rate limits
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")
DEFAULT_REQUEST_TIMEOUT = 60.0
TOKEN_FLAG = "--hub_token"


def human_count(n: int) -> str:
    """A count as the Hub's branch names write it (OLMo's `tokens2B`): three significant digits and a unit.

    >>> [human_count(n) for n in (512, 5120, 1_500_000, 2_000_000_000, 4_194_304_000_000)]
    ['512', '5.12K', '1.5M', '2B', '4.19T']
    """
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            value = n / scale
            return f"{value:.3g}{unit}" if value < 1000 else f"{value:.0f}{unit}"
    return str(int(n))


def revision_name(template: str, step: int, tokens: int) -> str:
    """The branch of the checkpoint at `step` after `tokens` tokens.

    >>> revision_name("step{step}-tokens{tokens_h}", 1000, 2_097_152_000)
    'step1000-tokens2.1B'
    """
    return template.format(step=int(step), tokens=int(tokens), tokens_h=human_count(tokens))


def check_revision_template(template: str, field_name: str = "hub_revision_template") -> None:
    """Raise a ValueError naming `field_name` unless every checkpoint gets its own, valid branch name."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ValueError(f"{field_name}={template!r} is not a valid template ({error}).") from None
    if fields - set(REVISION_FIELDS) or "step" not in fields:
        raise ValueError(
            f"{field_name}={template!r} must contain {{step}} (one branch per checkpoint) and may use only "
            f"{', '.join('{' + name + '}' for name in REVISION_FIELDS)}."
        )
    try:
        sample = revision_name(template, 1000, 2_000_000_000)
    except (ValueError, IndexError) as error:  # a format spec that does not fit, e.g. {step:s}
        raise ValueError(f"{field_name}={template!r} is not a valid template ({error}).") from None
    if not _BRANCH.fullmatch(sample) or ".." in sample or sample.endswith(".lock") or sample == "main":
        raise ValueError(
            f"{field_name}={template!r} gives the branch name {sample!r}: use letters, digits, '.', '_' and '-'."
        )


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries per push; the wait after attempt k is `initial_delay` · 2^(k-1), at most `max_delay`.

    >>> policy = RetryPolicy(attempts=5, initial_delay=5, max_delay=30)
    >>> [policy.delay(k) for k in (1, 2, 3, 4)], policy.total_delay()
    ([5.0, 10.0, 20.0, 30.0], 65.0)
    """

    attempts: int = 5
    initial_delay: float = 5.0
    max_delay: float = 60.0

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}.")
        if not 0 <= self.initial_delay <= self.max_delay:
            raise ValueError(f"RetryPolicy needs 0 <= initial_delay <= max_delay, got {self}.")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based); a server's Retry-After is honoured if longer."""
        delay = min(self.max_delay, self.initial_delay * 2 ** (attempt - 1))
        return float(min(self.max_delay, max(delay, retry_after or 0.0)))

    def total_delay(self) -> float:
        """Seconds one push waits between its attempts when every attempt fails (requests not counted; a server's
        longer Retry-After can stretch each wait up to `max_delay`)."""
        return sum(self.delay(attempt) for attempt in range(1, self.attempts))


def is_transient(error: BaseException) -> bool:
    """Whether a failed push may succeed later: network errors, timeouts, 408/409/429 and 5xx yes; 401, 403, 404 no."""
    if isinstance(error, OfflineModeIsEnabled | FileNotFoundError):
        return False  # HF_HUB_OFFLINE is set, or the local files are gone: waiting will not help
    cause = error
    while cause is not None:  # LFS upload errors arrive wrapped in a RuntimeError
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            status = cause.response.status_code
            return status >= 500 or status in _RETRIED_STATUS
        cause = cause.__cause__
    return True  # connection refused or reset, DNS, TLS, timeouts, a malformed reply from a proxy


def _retry_after(error: BaseException) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


def describe_error(error: BaseException) -> str:
    """One line: the type and the first line of the message (HTTP errors name the status and the URL, no headers)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class _StallTimeout:
    """A request hook of the Hub client: a request that sets no timeout (or None, as `huggingface_hub` does) gets
    `seconds` per connect, read, write and pool wait; one that sets its own keeps it."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, request: httpx2.Request) -> None:
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            phase: given.get(phase) if given.get(phase) is not None else self.seconds
            for phase in ("connect", "read", "write", "pool")
        }


def set_request_timeout(seconds: float) -> None:
    """Give every request of this process's Hub client (`huggingface_hub.get_session()`) a stall timeout of
    `seconds` where it has none. Called before each push: the client is re-created after a fork or a new factory."""
    hooks = get_session().event_hooks["request"]  # the client's own list: appending changes the client
    for hook in hooks:
        if isinstance(hook, _StallTimeout):
            hook.seconds = seconds
            return
    hooks.append(_StallTimeout(seconds))


def command_line_token_error(argv) -> str | None:
    """The one-line error for a Hub token given on the command line (`--hub_token`, `--hub-token`, `--hub_token=…`
    or a prefix of it), else None. The message never contains the token."""
    for arg in argv:
        name = str(arg).split("=", 1)[0].replace("-", "_")
        if name.startswith("__hub_t") and TOKEN_FLAG.replace("-", "_").startswith(name):
            return (
                "hub_token is refused on the command line: shell history and `ps` keep it, and `accelerate launch` "
                "prints the whole command of a run that fails (this refusal too, unless --quiet: revoke a token "
                "typed here). Set HF_TOKEN, run `hf auth login`, or put hub_token in the YAML config file."
            )
    return None


@dataclass
class PushJob:
    """One commit to one branch. `files(repo_id)` maps paths in the repo to local paths or bytes; it runs when the
    push does (so a model card can list every branch pushed before it).

    `replace`: delete the branch's other files, so it holds exactly these. `skip_if_published`: leave a branch that
    already holds a model alone (a resumed run does not re-push). `on_done` is called with the result.
    """

    revision: str
    files: Callable[[str], dict[str, str | bytes]]
    message: str
    replace: bool = False
    skip_if_published: bool = False
    on_done: Callable[[PushResult], None] | None = None


@dataclass
class PushResult:
    repo_id: str
    revision: str
    status: str  # "pushed", "skipped" (already on the Hub), "failed"
    commit: str | None = None
    attempts: int = 0
    error: str | None = None


class HubPublisher:
    """Pushes to one Hub repository from a background thread. See the module docstring.

    Args:
        repo_id: the repository ("org/name"); created (with `private`) if it does not exist.
        token: a token to use instead of `HF_TOKEN` / the login; kept only by the client, never logged.
        retry: how often and how long to retry a failed push.
        endpoint: the Hub's URL; default `HF_ENDPOINT` (https://huggingface.co).
        request_timeout: seconds a request may go without progress (connect, read, write) before it fails and
            its push is retried; applied to this process's Hub client (see `set_request_timeout`).
    """

    def __init__(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        retry: RetryPolicy | None = None,
        endpoint: str | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ):
        self.repo_id = repo_id
        self.private = private
        self.retry = retry or RetryPolicy()
        self.request_timeout = request_timeout
        self.results: list[PushResult] = []
        self._api = HfApi(endpoint=endpoint, token=token)
        self._repo_ready = False
        self._root: str | None = None
        self._queue: Queue[PushJob | None] = Queue()
        self._pending: list[str] = []
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._worker: threading.Thread | None = None

    def __repr__(self) -> str:  # never the client's: it holds the token
        return f"HubPublisher(repo_id={self.repo_id!r}, pending={self.pending})"

    @classmethod
    def from_training_args(cls, args) -> HubPublisher:
        retry = RetryPolicy(args.hub_push_attempts, args.hub_retry_delay, args.hub_retry_max_delay)
        return cls(
            args.hub_model_id,
            token=args.hub_token,
            private=args.hub_private_repo,
            retry=retry,
            request_timeout=args.hub_request_timeout,
        )

    # ---- background pushes ---------------------------------------------------------------------------------------

    def submit(self, job: PushJob) -> None:
        """Queue `job` for the worker thread and return at once."""
        if self._closed.is_set():
            logger.error("Hub: publisher closed; not pushing %s.", job.revision)
            return
        with self._changed:
            self._pending.append(job.revision)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="hub-publisher", daemon=True)
                self._worker.start()
        self._queue.put(job)

    @property
    def pending(self) -> list[str]:
        """Revisions submitted and not finished (the one being pushed first)."""
        with self._changed:
            return list(self._pending)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted push has finished (pushed, skipped or failed); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending, timeout)

    def close(self) -> None:
        """Stop retrying, and drop the pushes still queued (failed: "not pushed"); a request in flight may finish.

        Take `summary()` before closing to report what was still pending.
        """
        self._closed.set()
        self._queue.put(None)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                if self._closed.is_set():
                    self.results.append(PushResult(self.repo_id, job.revision, "failed", error="not pushed: closed"))
                else:
                    self.push(job)
            except Exception:  # push() reports its own failures; this is a bug, and must not kill the worker
                logger.exception("Hub: unexpected error while pushing %s.", job.revision)
            with self._changed:
                self._pending.remove(job.revision)
                self._changed.notify_all()

    # ---- one push, with retries ----------------------------------------------------------------------------------

    def push(self, job: PushJob) -> PushResult:
        """Run `job` now, in this thread, retrying transient failures; never raises."""
        attempt = 0
        while True:
            attempt += 1
            try:
                commit, status = self._push_once(job)
                result = PushResult(self.repo_id, job.revision, status, commit, attempt)
                logger.info("Hub: %s %s of %s (commit %s).", status, job.revision, self.repo_id, (commit or "")[:8])
                break
            except Exception as error:
                retry = is_transient(error) and attempt < self.retry.attempts and not self._closed.is_set()
                if not retry:
                    logger.error(
                        "Hub: giving up on %s of %s after %d attempt(s): %s",
                        job.revision, self.repo_id, attempt, describe_error(error),
                    )  # fmt: skip
                    result = PushResult(self.repo_id, job.revision, "failed", None, attempt, describe_error(error))
                    break
                delay = self.retry.delay(attempt, _retry_after(error))
                logger.warning(
                    "Hub: pushing %s failed (attempt %d/%d): %s; retrying in %.3gs.",
                    job.revision, attempt, self.retry.attempts, describe_error(error), delay,
                )  # fmt: skip
                if self._closed.wait(delay):
                    result = PushResult(
                        self.repo_id, job.revision, "failed", None, attempt, "publisher closed while retrying"
                    )
                    break
        self.results.append(result)
        if job.on_done is not None:
            try:
                job.on_done(result)
            except Exception:
                logger.exception("Hub: recording the result of %s failed.", job.revision)
        return result

    def _root_commit(self) -> str:
        if self._root is None:
            self._root = self._api.list_repo_commits(self.repo_id)[-1].commit_id
        return self._root

    def _push_once(self, job: PushJob) -> tuple[str, str]:
        set_request_timeout(self.request_timeout)
        api = self._api
        if not self._repo_ready:
            self.repo_id = api.create_repo(self.repo_id, private=self.private, exist_ok=True).repo_id
            self._repo_ready = True
        heads = {ref.name: ref.target_commit for ref in api.list_repo_refs(self.repo_id).branches}
        remote: set[str] = set()
        if job.revision in heads:
            remote = set(api.list_repo_files(self.repo_id, revision=job.revision))
            configs = {"config.json", "adapter_config.json"}
            if job.skip_if_published and remote.intersection(configs) and remote.intersection(WEIGHT_FILES):
                return heads[job.revision], "skipped"
        else:
            # From the repo's first commit, not main's head: the branch then holds a model only once our commit
            # lands, so a branch left empty by a failed push is not mistaken for a published one.
            api.create_branch(self.repo_id, branch=job.revision, revision=self._root_commit(), exist_ok=True)
        files = job.files(self.repo_id)
        operations: list = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=src) for path, src in files.items()]
        if job.replace:
            stale = sorted(remote - set(files) - {".gitattributes"})
            operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
        info = api.create_commit(self.repo_id, operations, commit_message=job.message, revision=job.revision)
        return info.oid, "pushed"

    # ---- the report ----------------------------------------------------------------------------------------------

    @property
    def failures(self) -> list[PushResult]:
        return [result for result in self.results if result.status == "failed"]

    def summary(self) -> str:
        """E.g. "3 pushed, 1 skipped (already on the Hub), 1 failed (step4-tokens1.02K: HfHubHTTPError: 503 ...),
        0 pending"."""
        counts = {status: sum(r.status == status for r in self.results) for status in ("pushed", "skipped")}
        failed = "; ".join(f"{r.revision}: {r.error}" for r in self.failures)
        pending = ", ".join(self.pending)
        return (
            f"{counts['pushed']} pushed, {counts['skipped']} skipped (already on the Hub), "
            f"{len(self.failures)} failed{f' ({failed})' if failed else ''}, "
            f"{len(self.pending)} pending{f' ({pending})' if pending else ''}"
        )


def take_over_hub_push(args) -> HubPublisher | None:
    """The publisher of a run with `push_to_hub` (None without it, and on every process but the main one).

    It takes pushing over from the Trainer, which would create the repo in its constructor and push synchronously
    at every save, so that one failed request would stop training: `args.push_to_hub` is turned off. And
    `args.hub_token` is cleared, so a token given on the command line is not pickled into every checkpoint's
    `training_args.bin` (a token from the YAML file: the command line refuses it): from here on it lives only in
    the publisher's client.
    """
    if not args.push_to_hub:
        return None
    publisher = HubPublisher.from_training_args(args) if args.process_index == 0 else None
    args.push_to_hub = False
    args.hub_token = None
    return publisher
