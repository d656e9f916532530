"""Publishing to the Hub with the real `huggingface_hub` client against a loopback Hub (tests/hub_server.py).

The client is configured, not mocked: its endpoint, offline switch, Xet switch and cache are pointed at the
loopback server (`huggingface_hub.constants`, read at call time), and the token comes from `HF_TOKEN`.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import push_checkpoints
import pytest
import torch
from _runs import REPO, pretrain, train_logs
from hub_server import HubServer
from huggingface_hub import ModelCard, constants
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from hf_pretrain.hub.model_card import RunSummary, objective_ranges, render_model_card
from hf_pretrain.hub.publisher import (
    HubPublisher,
    PushJob,
    RetryPolicy,
    check_revision_template,
    human_count,
    revision_name,
)
from hf_pretrain.hub.run import checkpoint_job, list_checkpoints, read_revisions
from hf_pretrain.objectives import ObjectivePlan
from hf_pretrain.schedules import WSDSchedule

ENV_TOKEN = "hf_envTOKENforLoopbackTests0123"
YAML_TOKEN = "hf_yamlTOKENforLoopbackTests456"
FAST_RETRY = ["--hub_retry_delay", "0.05", "--hub_retry_max_delay", "0.2", "--hub_push_attempts", "10"]
RUN = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "1024", "--block_size", "32",
    "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--logging_steps", "1", "--eval_strategy", "no",
    "--max_documents", "40", "--seed", "0", "--disable_tqdm", "true", "--objective", "clm_then_mlm",
    "--switch_fraction", "0.5", "--max_steps", "4", "--save_steps", "2", "--warmup_steps", "1", "--decay_steps", "1",
    "--push_to_hub", "true", "--model_card_license", "apache-2.0", *FAST_RETRY,
]  # fmt: skip
BRANCHES = {"main", "step2-tokens512", "step4-tokens1.02K"}
CHECKPOINT_FILES = {".gitattributes", "README.md", "config.json", "model.safetensors", "modeling_masked_llama.py",
                    "tokenizer.json", "tokenizer_config.json"}  # fmt: skip


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The loopback Hub, with the real client pointed at it (and back when the module is done)."""
    home = tmp_path_factory.mktemp("hf_home")
    with HubServer(tokens={ENV_TOKEN, YAML_TOKEN}) as server, pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", server.endpoint)
        patch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        patch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest's default for every other test
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # else uploads go to the Xet storage service
        patch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        patch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / "agents.json"))  # the client's own cache file
        patch.setenv("HF_TOKEN", ENV_TOKEN)
        patch.setenv("HF_HOME", str(home))
        yield server


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory):
    """A CLM→MLM run (switch at step 2) with push_to_hub: checkpoints at steps 2 and 4, then the final model."""
    out = str(tmp_path_factory.mktemp("published") / "run")
    pretrain.main([*RUN, "--output_dir", out, "--hub_model_id", "tester/tiny"])
    return out


def losses(output_dir):
    return [entry["loss"] for entry in train_logs(output_dir).values()]


def same_weights(model_a, model_b) -> bool:
    a, b = model_a.state_dict(), model_b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def every_file(root):
    for folder, _, names in os.walk(root):
        for name in names:
            yield os.path.join(folder, name)


# ---- a run publishes its final model and its checkpoints ---------------------------------------------------------


def test_run_publishes_final_model_and_checkpoint_branches_that_load_back(hub, published):
    assert set(hub.branches("tester/tiny")) == BRANCHES
    for branch in ("step2-tokens512", "step4-tokens1.02K"):  # a loadable model, no optimizer or RNG state
        assert set(hub.files("tester/tiny", branch)) == CHECKPOINT_FILES
    main = hub.files("tester/tiny")
    assert {"README.md", "loss_curve.png", "revisions.txt", "resolved_config.yaml", "model.safetensors"} <= set(main)
    assert main["loss_curve.png"].startswith(b"\x89PNG")
    assert not {"optimizer.pt", "training_args.bin", "trainer_state.json"} & set(main)

    loaded = {
        "main": AutoModelForMaskedLM.from_pretrained("tester/tiny", trust_remote_code=True),
        "checkpoint-2": AutoModelForCausalLM.from_pretrained("tester/tiny", revision="step2-tokens512"),  # CLM phase
        "checkpoint-4": AutoModelForMaskedLM.from_pretrained(
            "tester/tiny", revision="step4-tokens1.02K", trust_remote_code=True
        ),
    }
    assert same_weights(loaded["main"], AutoModelForMaskedLM.from_pretrained(published))
    assert same_weights(loaded["checkpoint-2"], AutoModelForCausalLM.from_pretrained(f"{published}/checkpoint-2"))
    assert same_weights(loaded["checkpoint-4"], AutoModelForMaskedLM.from_pretrained(f"{published}/checkpoint-4"))
    step2, step4 = (hub.files("tester/tiny", b)["model.safetensors"] for b in ("step2-tokens512", "step4-tokens1.02K"))
    assert step2 != step4  # really different revisions

    # revisions.txt, locally and on main, lists each branch with the commit the Hub has for it.
    records = read_revisions(published, "tester/tiny")
    assert [(r.branch, r.step, r.tokens) for r in records] == [
        ("step2-tokens512", 2, 512),
        ("step4-tokens1.02K", 4, 1024),
    ]
    assert all(hub.branches("tester/tiny")[r.branch] == r.commit for r in records)
    assert main["revisions.txt"].decode().splitlines()[1:] == [
        f"tester/tiny\t{r.branch}\t{r.step}\t{r.tokens}\t{r.commit}" for r in records
    ]
    assert not os.path.exists(os.path.join(published, ".hub_staging"))  # staged copies removed, and their folder
    with open(os.path.join(published, "hub_status.json")) as handle:
        status = json.load(handle)
    assert status["complete"] and status["exit_code"] == 0 and not status["failed"] and not status["pending"]
    assert status["pushed"] == ["step2-tokens512", "step4-tokens1.02K", "main"]
    assert os.path.isfile(os.path.join(published, "checkpoint-2", "optimizer.pt"))  # local checkpoints kept whole


def test_the_model_card_describes_the_run(hub, published):
    text = hub.files("tester/tiny")["README.md"].decode()
    card = ModelCard(text)
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "fill-mask" and {"clm", "mlm"} <= set(card.data.tags)
    assert "CLM for steps 0–1, then MLM for steps 2–3." in text  # objectives and their step ranges
    assert "| warmup | 0 |" in text and "| decay | 3 |" in text  # WSD phases
    assert "on 1,024 tokens" in text and "| tokens seen | 1,024 |" in text
    assert "pydoc_data.topics" in text and "| 100% |" in text  # data source and mixing weight
    assert "| `learning_rate` | `0.003` |" in text and "| `switch_fraction` | `0.5` |" in text
    assert (
        "`train_loss`" in text and "`eval_loss`" in text and "![Training and evaluation loss](loss_curve.png)" in text
    )
    assert "| `step4-tokens1.02K` | 4 | 1,024 |" in text
    # A masked Llama is published in the native EuroBERT format: no remote code, and the card says so.
    assert 'AutoModelForMaskedLM.from_pretrained("tester/tiny")' in text and "trust_remote_code" not in text
    assert "Saved in the native EuroBERT format" in text
    # The CLM checkpoint before the switch loads as a causal LM, with no remote code.
    step2 = hub.files("tester/tiny", "step2-tokens512")["README.md"].decode()
    assert 'AutoModelForCausalLM.from_pretrained("tester/tiny", revision="step2-tokens512")' in step2
    assert "trust_remote_code" not in step2 and "Its last step trained CLM" in step2


# ---- resilience ---------------------------------------------------------------------------------------------------


def test_a_hub_outage_leaves_training_unharmed_and_the_pushes_complete(hub, published, tmp_path, caplog, capfd):
    """The Hub fails 503, 429, drops connections and one commit: training is the same run, everything arrives, and
    no token appears in any file, log or upload (the YAML file's token is used, and pulled out of the saved
    arguments; the command line refuses one: tests/test_hub_faults.py)."""
    caplog.set_level(logging.INFO)
    hub.fail(2, status=503, match="/api/repos/create")  # (matched: the client's own requests elsewhere don't count)
    hub.fail(2, status=429, retry_after=1, match="/api/repos/create")
    hub.fail(2, disconnect=True, match="/api/repos/create")
    hub.fail(1, status=500, match="/api/models/tester/outage/commit/step2")  # after its branch was created
    out = str(tmp_path / "run")
    config = tmp_path / "with_token.yaml"
    config.write_text(f"hub_token: {YAML_TOKEN}\n")
    pretrain.main([str(config), *RUN, "--output_dir", out, "--hub_model_id", "tester/outage"])

    assert losses(out) == pytest.approx(losses(published), rel=1e-6)  # training did not notice
    assert os.path.isfile(os.path.join(out, "checkpoint-2", "optimizer.pt"))
    assert set(hub.branches("tester/outage")) == BRANCHES  # every push went through in the end
    assert set(hub.files("tester/outage", "step2-tokens512")) == CHECKPOINT_FILES
    assert len(hub.commits("tester/outage", "step2-tokens512")) == 2  # the initial commit and one push
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 7 and any("503" in m for m in retries) and any("429" in m for m in retries)
    assert "3 pushed, 0 skipped (already on the Hub), 0 failed, 0 pending" in caplog.text

    assert hub.tokens_used >= {YAML_TOKEN}  # the YAML file's hub_token reached the client...
    with open(os.path.join(out, "resolved_config.yaml")) as handle:
        assert "hub_token: <HUB_TOKEN>" in handle.read()  # the placeholder, as transformers writes it
    captured = capfd.readouterr()
    for token in (YAML_TOKEN, ENV_TOKEN):  # ...and nothing else
        for path in every_file(out):
            with open(path, "rb") as handle:
                assert token.encode() not in handle.read(), path
        assert token not in caplog.text and token not in captured.out and token not in captured.err
        for branch in hub.branches("tester/outage"):
            assert all(token.encode() not in data for data in hub.files("tester/outage", branch).values())


def test_a_resumed_run_does_not_repush_what_is_on_the_hub(hub, published, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(published, run, ignore=shutil.ignore_patterns("checkpoint-4", "revisions.txt", ".hub_staging"))
    for name in [n for n in os.listdir(run) if os.path.isfile(os.path.join(run, n))]:
        os.remove(os.path.join(run, name))  # as if interrupted after step 2: only checkpoint-2 and the tokenizer
    # checkpoint-2 was published before the interruption (here after the fact, with the recipe).
    push_checkpoints.main(["--run_dir", run, "--hub_model_id", "tester/resumed", "--checkpoints", "2",
                           "--push_final", "false", "--hub_revision_template", "step{step}-tokens{tokens_h}"])  # fmt: skip
    step2_head = hub.branches("tester/resumed")["step2-tokens512"]
    commits_before = sum(1 for method, path, _ in hub.requests if method == "POST" and "/commit/" in path)

    pretrain.main([*RUN, "--output_dir", run, "--hub_model_id", "tester/resumed", "--resume_from_checkpoint", "true"])
    assert set(hub.branches("tester/resumed")) == BRANCHES
    assert hub.branches("tester/resumed")["step2-tokens512"] == step2_head  # queued again at resume, but skipped
    commits = [path for method, path, _ in hub.requests if method == "POST" and "/commit/" in path][commits_before:]
    assert sorted(commits) == [
        "/api/models/tester/resumed/commit/main",
        "/api/models/tester/resumed/commit/step4-tokens1.02K",
    ]
    assert [r.branch for r in read_revisions(run, "tester/resumed")] == ["step2-tokens512", "step4-tokens1.02K"]


def test_publisher_reports_failures_and_never_raises(hub, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    job = PushJob("step1", lambda repo: {"config.json": str(folder / "config.json")}, "a push")
    # A permanent error (a token the Hub refuses) is reported at once, not retried.
    refused = HubPublisher("tester/refused", token="hf_wrong", retry=RetryPolicy(5, 0.01, 0.01)).push(job)
    assert refused.status == "failed" and refused.attempts == 1 and "401" in refused.error
    # A Hub that stays down: the push gives up after its attempts, and says so.
    hub.fail(3, status=503)
    publisher = HubPublisher("tester/down", retry=RetryPolicy(3, 0.01, 0.01))
    result = publisher.push(job)
    assert result.status == "failed" and result.attempts == 3 and "503" in result.error
    assert publisher.summary().startswith("0 pushed, 0 skipped (already on the Hub), 1 failed (step1: HfHubHTTPError")
    # In the background: wait() reports False while the push is retrying; close() stops it, and it stays pending.
    hub.fail(1000, status=503, match="tester/slow")
    publisher = HubPublisher("tester/slow", retry=RetryPolicy(100, 0.2, 0.2))
    publisher.submit(job)
    publisher.submit(PushJob("step2", job.files, "another push"))
    # Synchronised on the Hub, not on time: once it has refused a request of tester/slow, step1 is being pushed
    # (and is retrying), and it cannot finish while the Hub refuses its next 999 requests and nothing closes it.
    assert hub.wait_for_request("tester/slow")
    assert publisher.wait(timeout=0) is False and publisher.pending == ["step1", "step2"]
    assert publisher.summary().endswith("2 pending (step1, step2)")
    publisher.close()
    assert publisher.wait(timeout=60) is True  # stopped retrying; the queued push is dropped
    step1, step2 = publisher.failures
    assert step1.revision == "step1" and 1 <= step1.attempts < 100
    assert (step2.revision, step2.attempts, step2.error) == ("step2", 0, "not pushed: closed")


def test_a_checkpoint_rotated_away_while_its_push_waits_is_still_published(hub, published, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(os.path.join(published, "checkpoint-2"), run / "checkpoint-2")
    hub.fail(1000, status=503, match="tester/rotated")  # the Hub is down when the checkpoint is saved...
    job = checkpoint_job(str(run / "checkpoint-2"), str(run), "step{step}")
    shutil.rmtree(run / "checkpoint-2")  # ...and save_total_limit deletes the folder before the push runs
    failed = HubPublisher("tester/rotated", retry=RetryPolicy(2, 0.01, 0.01)).push(job)
    assert failed.status == "failed"
    staged = str(run / ".hub_staging" / "checkpoint-2")
    assert list_checkpoints(str(run)) == [staged]  # the staged copy is kept, and found by a resume or the recipe
    hub.recover()
    pushed = HubPublisher("tester/rotated").push(checkpoint_job(staged, str(run), "step{step}"))
    assert pushed.status == "pushed" and not os.path.exists(staged)
    expected = hub.files("tester/tiny", "step2-tokens512")["model.safetensors"]
    assert hub.files("tester/rotated", "step2")["model.safetensors"] == expected


# ---- publishing after the fact ------------------------------------------------------------------------------------


def test_push_checkpoints_recipe_publishes_a_run_directory(hub, published, capsys):
    results = push_checkpoints.main(["--run_dir", published, "--hub_model_id", "tester/after"])
    assert [(r.revision, r.status) for r in results] == [
        ("step2-tokens512", "pushed"), ("step4-tokens1.02K", "pushed"), ("main", "pushed")
    ]  # fmt: skip
    assert set(hub.branches("tester/after")) == BRANCHES
    for branch in BRANCHES:  # the same files as the run pushed live (the run's template and license)
        assert hub.files("tester/after", branch).keys() == hub.files("tester/tiny", branch).keys()
        assert (
            hub.files("tester/after", branch)["model.safetensors"]
            == hub.files("tester/tiny", branch)["model.safetensors"]
        )
    assert "license: apache-2.0" in hub.files("tester/after")["README.md"].decode()
    assert "| `step2-tokens512` | 2 | 512 |" in hub.files("tester/after")["README.md"].decode()
    assert "tester/after: 3 pushed, 0 skipped" in capsys.readouterr().out
    again = push_checkpoints.main(["--run_dir", published, "--hub_model_id", "tester/after", "--push_final", "false"])
    assert [r.status for r in again] == ["skipped", "skipped"]  # nothing re-pushed
    with pytest.raises(SystemExit):
        push_checkpoints.main(["--run_dir", published, "--hub_model_id", "tester/after", "--checkpoints", "3"])
    assert "checkpoints: no checkpoint-3" in capsys.readouterr().err


@pytest.mark.slow
def test_push_checkpoints_recipe_is_configured_by_the_environment_alone(hub, published, tmp_path):
    """As a user runs it: a fresh process pointed at the Hub by HF_ENDPOINT, HF_HUB_DISABLE_XET and HF_TOKEN."""
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
           "HF_TOKEN": ENV_TOKEN, "HF_HOME": str(tmp_path), "PYTHONPATH": REPO}  # fmt: skip
    command = [sys.executable, os.path.join(REPO, "recipes", "push_checkpoints.py"), "--run_dir", published,
               "--hub_model_id", "tester/env", "--checkpoints", "checkpoint-4", "--push_final", "false"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tester/env: 1 pushed" in result.stdout
    assert set(hub.branches("tester/env")) == {"main", "step4-tokens1.02K"}
    assert ENV_TOKEN not in result.stdout + result.stderr


# ---- names, validation, the card's pieces -------------------------------------------------------------------------


def test_revision_names_and_template_validation():
    assert revision_name("stage1-step{step}-tokens{tokens_h}", 1000, 2_000_000_000) == "stage1-step1000-tokens2B"
    assert revision_name("step{step}", 5, 0) == "step5" and human_count(999) == "999"
    for template, message in (
        ("tokens{tokens_h}", "must contain {step}"),
        ("step{step}-{lr}", "must contain {step}"),
        ("step {step}", "gives the branch name 'step 1000'"),
        ("step{step", "is not a valid template"),
    ):
        with pytest.raises(ValueError, match=message):
            check_revision_template(template)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--push_to_hub", "true"], "push_to_hub needs hub_model_id"),
        (["--hub_revision_template", "main"], "hub_revision_template='main' must contain {step}"),
        (["--hub_retry_delay", "10", "--hub_retry_max_delay", "1"], "hub_retry_delay must be in"),
    ],
)
def test_hub_arguments_are_validated_naming_the_field(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        pretrain.main(["--output_dir", str(tmp_path), *argv])
    assert message in capsys.readouterr().err


def test_card_sections_from_a_plan_and_schedule():
    plan = ObjectivePlan(((0, "clm_unshifted"), (2500, "mlm")))
    assert objective_ranges(plan, 10_000) == [("clm_unshifted", 0, 2499), ("mlm", 2500, 9999)]
    summary = RunSummary(
        config={"architectures": ["LlamaForCausalLM"]},
        resolved={
            "dataset_name": "HuggingFaceFW/fineweb-edu",
            "dataset_config_name": "sample-10BT",
            "streaming": True,
            "learning_rate": 0.003,
            "block_size": 2048,
            "objective": "clm",
        },  # fmt: skip
        state={"global_step": 10_000, "num_input_tokens_seen": 20_971_520_000},
        plan=ObjectivePlan(((0, "clm"),)),
        schedule=WSDSchedule(100, 8900, 1000, "1-sqrt", min_lr_ratio=0.1),
    )
    text = render_model_card(summary, "org/model", "apache-2.0")
    assert ModelCard(text).data.datasets == ["HuggingFaceFW/fineweb-edu"]
    assert "CLM for steps 0–9,999." in text and "| tokens per optimizer step | 2,097,152 |" in text
    assert (
        "| stable | 100–8,999 | 0.003 |" in text
        and "| decay | 9,000–9,999 | 1-sqrt from 0.003 to 0.1 × peak |" in text
    )
    assert "subset `sample-10BT`, streamed" in text and "trust_remote_code" not in text
    assert 'AutoModelForCausalLM.from_pretrained("org/model")' in text
