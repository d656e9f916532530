"""Publishing that ends: a Hub that is down, hangs or refuses the token, against the loopback Hub (tests/hub_server.py).

Each scenario asserts how long the client waited and what it reports (the result, hub_status.json, the exit status);
the publisher and the recipe are driven in this process, and one run of recipes/pretrain.py checks the whole path.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pretrain
import push_checkpoints
import pytest
from _runs import REPO
from _tiny import tiny_llama_config
from hub_server import HubServer
from huggingface_hub import constants
from transformers import LlamaForCausalLM

from hf_pretrain.arguments import PretrainingArguments
from hf_pretrain.hub.publisher import DEFAULT_REQUEST_TIMEOUT, HubPublisher, PushJob, RetryPolicy, set_request_timeout
from hf_pretrain.hub.revisions import HubRevisionsCallback
from hf_pretrain.hub.run import (
    HUB_INCOMPLETE_EXIT_CODE,
    HUB_STATUS_FILE,
    publish_final_model,
    publishing_problem,
    read_revisions,
)

TOKEN = "hf_faultsTOKENforLoopbackTests89"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The loopback Hub, with the real client pointed at it (as in tests/test_hub.py)."""
    home = tmp_path_factory.mktemp("hf_home")
    with HubServer(tokens={TOKEN}) as server, pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", server.endpoint)
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        patch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / "agents.json"))
        patch.setenv("HF_TOKEN", TOKEN)
        patch.setenv("HF_HOME", str(home))
        yield server


def closed_port_endpoint() -> str:
    """The URL of a loopback port nothing listens on: every connection is refused, as with a Hub that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def config_job(tmp_path, revision="step1") -> PushJob:
    (tmp_path / "config.json").write_text("{}")
    return PushJob(revision, lambda repo: {"config.json": str(tmp_path / "config.json")}, "a push")


def save_checkpoint(folder, step: int, tokens: int, model) -> str:
    model.save_pretrained(folder)
    with open(os.path.join(folder, "trainer_state.json"), "w") as handle:
        json.dump({"global_step": step, "num_input_tokens_seen": tokens, "log_history": []}, handle)
    return str(folder)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as a kill -9 leaves it: checkpoint-2 complete, and three half-written ones (truncated weights,
    no weights, no trainer_state.json: a branch named with 0 tokens), plus the final model."""
    root = tmp_path_factory.mktemp("faults") / "run"
    model = LlamaForCausalLM(tiny_llama_config())
    for step in (2, 4, 6, 8):
        save_checkpoint(root / f"checkpoint-{step}", step, step * 256, model)
    weights = root / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    os.remove(root / "checkpoint-6" / "model.safetensors")
    os.remove(root / "checkpoint-8" / "trainer_state.json")
    save_checkpoint(root, 8, 2048, model)
    return root


def test_incomplete_checkpoints_are_named_and_never_published(hub, run_dir, tmp_path, capsys):
    """push_checkpoints.py pushes checkpoint-2 alone, says why each other one is left out, and the card of main
    lists only what was pushed. A staged copy (one rotated away, one left by a failed push) goes once pushed."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    model = LlamaForCausalLM(tiny_llama_config())
    save_checkpoint(run / ".hub_staging" / "checkpoint-1", 1, 256, model)  # its checkpoint was rotated away
    shutil.copytree(run / "checkpoint-2", run / ".hub_staging" / "checkpoint-2")  # a failed push's copy
    size = os.path.getsize(run / "checkpoint-4" / "model.safetensors")  # 100 bytes short
    truncated = f"model.safetensors is truncated ({size} of {size + 100} bytes)"
    assert publishing_problem(str(run / "checkpoint-4")) == truncated
    assert publishing_problem(str(run / "checkpoint-6")).startswith("no model weights")
    assert publishing_problem(str(run / "checkpoint-8")) == "trainer_state.json is missing"

    results = push_checkpoints.main(["--run_dir", str(run), "--hub_model_id", "tester/halfwritten"])
    assert [(r.revision, r.status) for r in results] == [
        ("step1-tokens256", "pushed"), ("step2-tokens512", "pushed"), ("main", "pushed")
    ]  # fmt: skip
    out, err = capsys.readouterr()
    assert "tester/halfwritten: 3 pushed, 0 skipped (already on the Hub), 0 failed, 0 pending, 3 incomplete" in out
    for step in (4, 6, 8):
        assert f"not pushing {run}/checkpoint-{step}: it is incomplete" in err
    assert set(hub.branches("tester/halfwritten")) == {"main", "step1-tokens256", "step2-tokens512"}
    card = hub.files("tester/halfwritten")["README.md"].decode()
    assert "| `step2-tokens512` | 2 | 512 |" in card and "step4" not in card and "tokens0" not in card
    assert [r.branch for r in read_revisions(str(run))] == ["step1-tokens256", "step2-tokens512"]
    assert not os.path.exists(run / ".hub_staging")  # every staged copy is on the Hub: the folder is gone
    status = json.loads((run / HUB_STATUS_FILE).read_text())
    assert status["complete"] and status["exit_code"] == 0 and status["pushed"][-1] == "main"
    assert set(status["incomplete_checkpoints"]) == {"checkpoint-4", "checkpoint-6", "checkpoint-8"}

    with pytest.raises(SystemExit):  # named explicitly, an incomplete checkpoint is an error, not a skip
        push_checkpoints.main(["--run_dir", str(run), "--hub_model_id", "tester/halfwritten", "--checkpoints", "4"])
    assert "checkpoints: checkpoint-4 in" in capsys.readouterr().err


def test_a_refused_token_is_not_retried_and_the_status_says_failed(hub, run_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    monkeypatch.setenv("HF_TOKEN", "hf_notAtokenTheHubKnows")
    before = len(hub.requests)
    start = time.monotonic()
    argv = ["--run_dir", str(run), "--hub_model_id", "tester/refused", "--hub_retry_delay", "5"]
    results = push_checkpoints.main(argv)
    assert time.monotonic() - start < 5  # no retry waited its 5 s
    assert [(r.revision, r.status, r.attempts) for r in results] == [
        ("step2-tokens512", "failed", 1), ("main", "failed", 1)
    ]  # fmt: skip
    requests = [(path, status) for _, path, status in hub.requests[before:] if path.startswith("/api/")]
    # One try per push (create_repo asks whether the repo exists after a refusal: 404); nothing uploaded.
    assert requests == [("/api/repos/create", 401), ("/api/models/tester/refused", 404)] * 2, requests
    assert "401" in results[0].error
    status = json.loads((run / HUB_STATUS_FILE).read_text())
    assert not status["complete"] and status["exit_code"] == HUB_INCOMPLETE_EXIT_CODE == 3
    assert set(status["failed"]) == {"step2-tokens512", "main"} and "401" in status["failed"]["main"]
    assert os.path.isdir(run / "checkpoint-2")  # nothing local is touched
    assert "tester/refused: 0 pushed, 0 skipped (already on the Hub), 2 failed" in capsys.readouterr().out
    assert push_checkpoints.cli(argv) == 3  # the command's exit status


def test_a_hanging_request_ends_at_the_request_timeout_and_is_retried(hub, tmp_path):
    hub.fail(1, hang=True, match="/api/repos/create")  # accepted, read, never answered
    publisher = HubPublisher("tester/hanging", retry=RetryPolicy(3, 0.01, 0.01), request_timeout=1.0)
    start = time.monotonic()
    try:
        result = publisher.push(config_job(tmp_path))
    finally:
        set_request_timeout(DEFAULT_REQUEST_TIMEOUT)  # the process's client: as the other tests expect it
    elapsed = time.monotonic() - start
    assert (result.status, result.attempts) == ("pushed", 2) and 1.0 <= elapsed < 10
    assert [s for m, p, s in hub.requests if p == "/api/repos/create"][-2:] == [-1, 200]  # hung, then answered
    assert hub.files("tester/hanging", "step1")["config.json"] == b"{}"


def test_a_hub_down_for_the_whole_run_is_waited_for_at_most_hub_wait_timeout(tmp_path, caplog):
    """Connections refused throughout: the end of the run waits hub_wait_timeout (0.5 s) although the retries of
    the pending push would take 20 s, reports it pending in hub_status.json (exit status 3) and logs one line."""
    publisher = HubPublisher("tester/down", endpoint=closed_port_endpoint(), retry=RetryPolicy(3, 10, 10))
    publisher.submit(config_job(tmp_path, "step2"))
    args = SimpleNamespace(
        output_dir=str(tmp_path), model_card_license="other", hub_revision=None, hub_wait_timeout=0.5
    )  # the pipeline passes its trainer; these are the fields the end of the run reads
    start = time.monotonic()
    assert publish_final_model(publisher, SimpleNamespace(args=args)) is False
    assert time.monotonic() - start < 2.0
    status = json.loads((tmp_path / HUB_STATUS_FILE).read_text())
    assert status["pending"] == ["step2", "main"] and status["exit_code"] == 3 and not status["complete"]
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith("Hub: publishing tester/down is incomplete: 0 pushed, 0 skipped (already on the Hub), ")
    assert "2 pending (step2, main)" in line and "push_checkpoints.py" in line


def test_retries_must_fit_in_hub_wait_timeout_and_tokens_stay_off_the_command_line(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"wait 615s between a push's attempts, more than hub_wait_timeout=600"):
        PretrainingArguments(output_dir=str(tmp_path), hub_push_attempts=8, hub_retry_max_delay=300)
    assert RetryPolicy().total_delay() == 75 <= PretrainingArguments(output_dir=str(tmp_path)).hub_wait_timeout
    for argv in (["--hub_token", TOKEN], [f"--hub-token={TOKEN}"], ["--hub_tok", TOKEN]):
        with pytest.raises(SystemExit) as exit:
            pretrain.cli(["--output_dir", str(tmp_path / "never"), *argv])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and len(err.strip().splitlines()) == 1 and TOKEN not in err
        assert "hub_token is refused on the command line" in err and "HF_TOKEN" in err
    assert not os.path.exists(tmp_path / "never")


def test_a_run_whose_hub_never_answers_exits_3_within_hub_wait_timeout(tmp_path):
    """recipes/pretrain.py with a Hub that accepts every connection and never answers: the default request timeout
    (60 s) would hold each push, but the run exits hub_wait_timeout (3 s) after its last save, with status 3."""
    with HubServer(tokens={TOKEN}) as hanging:
        hanging.fail(10**6, hang=True)
        out = tmp_path / "run"
        env = {**os.environ, "HF_ENDPOINT": hanging.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
               "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}  # fmt: skip
        command = [sys.executable, os.path.join(REPO, "recipes", "pretrain.py"), "--output_dir", str(out),
                   "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "512", "--block_size", "32",
                   "--per_device_train_batch_size", "4", "--max_documents", "20", "--eval_strategy", "no",
                   "--max_steps", "2", "--save_steps", "1", "--warmup_steps", "0", "--decay_steps", "1",
                   "--disable_tqdm", "true", "--report_to", "none", "--push_to_hub", "true",
                   "--hub_model_id", "tester/silent", "--hub_wait_timeout", "3", "--hub_push_attempts", "1"]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        exited = time.time()
        assert result.returncode == HUB_INCOMPLETE_EXIT_CODE, result.stderr[-3000:]
        assert hanging.wait_for_request("/api/repos/create", timeout=0), hanging.requests  # asked, and hung
    after_training = exited - os.path.getmtime(out / "trainer_state.json")  # written just before publishing
    assert 3 <= after_training < 15, after_training
    status = json.loads((out / HUB_STATUS_FILE).read_text())
    assert not status["complete"] and status["pending"] == ["step1-tokens128", "step2-tokens256", "main"]
    assert os.path.isfile(out / "checkpoint-2" / "model.safetensors")  # the run itself is whole
    assert result.stderr.strip().splitlines()[-1] == (
        f"pretrain.py: the run is saved, but not everything reached the Hub: see {out}/{HUB_STATUS_FILE}"
    )
    assert TOKEN not in result.stdout + result.stderr


def test_a_resumed_run_queues_only_its_complete_checkpoints(run_dir, tmp_path, caplog):
    """At the start of a resumed run the callback queues the checkpoints in output_dir: the half-written ones are
    left out, each named with its problem in the log."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    submitted = []
    callback = HubRevisionsCallback(SimpleNamespace(submit=submitted.append), "step{step}")
    callback.on_train_begin(SimpleNamespace(output_dir=str(run)), SimpleNamespace(is_world_process_zero=True), None)
    assert [job.revision for job in submitted] == ["step2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w.split(":")[1].strip().removeprefix("not pushing ") for w in warnings] == [
        f"{run}/checkpoint-{step}" for step in (4, 6, 8)
    ]
