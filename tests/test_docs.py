"""The documentation cannot drift: docs/cli.md is regenerated and compared, every command is
documented, and the examples run against the real BERT-tiny."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from headscope import report
from headscope.cli import commands

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _gen_cli_docs():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" /
                                                  "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(tmp_path: Path, bert_tiny_dir: Path) -> dict[str, str]:
    """Subprocess environment: this checkout first on the path, a private HEADSCOPE_CACHE that
    still sees the real assets, the model for the examples, no hub."""
    cache = tmp_path / "headscope-cache"
    cache.mkdir(exist_ok=True)
    if not (cache / "assets").exists():
        (cache / "assets").symlink_to(bert_tiny_dir.parent, target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(ROOT), "HEADSCOPE_CACHE": str(cache),
            "HEADSCOPE_EXAMPLE_MODEL": str(bert_tiny_dir), "HF_HUB_OFFLINE": "1"}


def test_cli_reference_is_up_to_date(monkeypatch):
    monkeypatch.setenv("COLUMNS", "57")  # the generator must not depend on the terminal
    fresh = _gen_cli_docs().render()
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == fresh, "docs/cli.md is stale: run python scripts/gen_cli_docs.py"


def test_cli_reference_covers_every_command_and_option():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for name, command in commands().items():
        assert f"## headscope {name}\n" in text
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert opt in text, f"{opt} of {name} is missing from docs/cli.md"
    assert max(len(line) for line in text.splitlines()) <= 100


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_command_is_documented_beyond_the_reference(command):
    """Each command appears, as `headscope COMMAND`, in the README or a hand-written doc."""
    texts = [(ROOT / "README.md").read_text(encoding="utf-8")]
    texts += [p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))
              if p.name != "cli.md"]
    assert any(re.search(rf"headscope {command}\b", t) for t in texts), (
        f"`headscope {command}` is in neither README.md nor docs/*.md")


def test_examples_exist():
    names = {p.name for p in EXAMPLES.iterdir()}
    assert {"github-actions-headscope.yml", "pre-merge-check.sh", "inspect_and_fix.py",
            "in_process_rescale.py", "confirm_short.py"} <= names


def test_github_actions_workflow_is_valid_yaml_and_uses_check():
    text = (EXAMPLES / "github-actions-headscope.yml").read_text(encoding="utf-8")
    workflow = yaml.safe_load(text)
    steps = workflow["jobs"]["check-head"]["steps"]
    assert workflow["name"] == "headscope" and True in workflow  # YAML reads `on:` as True
    run = "\n".join(s.get("run", "") for s in steps)
    # headscope is not on a package index: the workflow installs it from its git repository
    assert not re.search(r"pip install headscope\b", run)
    assert 'pip install "$HEADSCOPE_PIP_SPEC"' in run
    spec = workflow["jobs"]["check-head"]["env"]["HEADSCOPE_PIP_SPEC"]
    # from the repository itself: no release tag exists to pin (v0.1.0 was named and missing)
    assert spec == "headscope @ git+https://github.com/OWNER/headscope"
    assert not re.search(r"OWNER/headscope@v", text)
    assert "--index-url https://download.pytorch.org/whl/cpu" in run
    assert re.search(r"headscope check --report \S+ --policy \S+", run)
    assert "headscope inspect" in run
    # every flag the workflow passes exists
    for command, flags in (("inspect", re.findall(r"headscope inspect .*", run)),
                           ("check", re.findall(r"headscope check .*", run))):
        known = {o for p in commands()[command].params for o in p.opts}
        for line in flags:
            for flag in re.findall(r"(--[a-z-]+)", line):
                assert flag in known, f"{flag} is not an option of headscope {command}"


def test_readme_ci_recipe_is_a_valid_policy_and_valid_commands(tmp_path):
    """The README's CI recipe: its policy loads as written, and every flag of its commands
    exists."""
    from headscope.guard import load_policy

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    recipe = text[text.index("## In CI"):text.index("## In Python")]
    toml = re.search(r"```toml\n(.*?)```", recipe, re.DOTALL).group(1)
    (tmp_path / "headscope.toml").write_text(toml, encoding="utf-8")
    policy = load_policy(str(tmp_path / "headscope.toml"))
    assert (policy.max_k, policy.max_row_norm, policy.max_start_loss) == (8, 1.5, 10)
    assert policy.fail_on == ("error", "HS201")
    # the workflow example states the same policy
    workflow = (EXAMPLES / "github-actions-headscope.yml").read_text(encoding="utf-8")
    for line in toml.splitlines():
        if line and not line.startswith("#"):
            assert "#   " + line.split("#")[0].strip() in workflow, line
    bash = re.search(r"```bash\n(.*?)```", recipe, re.DOTALL).group(1)
    for line in bash.strip().splitlines():
        command = line.split()[1]
        known = {o for p in commands()[command].params for o in p.opts}
        for flag in re.findall(r"(--[a-z-]+)", line):
            assert flag in known, f"{flag} is not an option of headscope {command}"


def test_example_python_files_compile():
    for path in EXAMPLES.glob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_in_process_rescale_example_runs(bert_tiny_dir, tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "in_process_rescale.py"), "--k", "4"],
                            env=_env(tmp_path, bert_tiny_dir), cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("k = 4, strategy untie: changed cls.predictions.decoder.weight; decoder "
                        "untied from the input embeddings")
    error = float(lines[1].rsplit("= ", 1)[1])
    assert error < 1e-4


def test_inspect_and_fix_example_runs(bert_tiny_dir, tmp_path):
    out = tmp_path / "fixed"
    result = subprocess.run([sys.executable, str(EXAMPLES / "inspect_and_fix.py"), str(out),
                             "--k", "4", "--n-pairs", "4"], env=_env(tmp_path, bert_tiny_dir),
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{bert_tiny_dir}: bert, mean decoder row norm 0.682 over "
                                    "30,522 rows\n")
    assert f"Fixing {bert_tiny_dir} with k = 4 (--k)." in result.stdout.splitlines()
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert (out / "model.safetensors").is_file()


def test_pre_merge_script_saves_reports_and_fails_on_policy(bert_tiny_dir, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("max_row_norm = 0.5\n")
    reports = tmp_path / "reports"
    env = {**_env(tmp_path, bert_tiny_dir), "HEADSCOPE": f"{sys.executable} -m headscope",
           "INSPECT_ARGS": "--weights-only"}
    result = subprocess.run(["bash", str(EXAMPLES / "pre-merge-check.sh"), "-p", str(policy),
                             "-o", str(reports), str(bert_tiny_dir)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    saved = reports / "bert-tiny-splade.json"
    jsonschema.Draft202012Validator(report.schema()).validate(json.loads(saved.read_text()))
    assert f"!! {bert_tiny_dir} fails the policy (report: {saved})" in result.stderr
    assert "The mean decoder row norm is 0.6819, above the limit 0.5." in result.stdout


def test_report_reference_is_up_to_date_and_complete():
    """docs/report.md is generated from the dataclasses; every field has a description."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    check = subprocess.run([sys.executable, "scripts/gen_report_docs.py", "--check"], cwd=root,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = (root / "docs" / "report.md").read_text()
    assert "|  |" not in text  # a field without a comment in the code
    from headscope import report

    for name in report.schema()["properties"]:
        assert f"| `{name}` |" in text


@pytest.mark.slow  # ~90 s: two processes train BERT-tiny for 10 steps
def test_the_callback_example_runs_under_cpu_torchrun(tmp_path, bert_tiny_dir):
    """docs/integrations.md's callback example under `torchrun --nproc-per-node 2` on CPU (gloo):
    the two processes split the data (10 steps of a global batch of 16 over 64 pairs reach
    epoch 2.5; one process would reach 1.25), DDP runs without the unused-parameter search,
    rank 0 prints the verdict once and writes the telemetry, and rank 1 prints nothing."""
    import socket

    (code,) = [c for _, c, _ in python_blocks(ROOT / "docs" / "integrations.md")]
    work = tmp_path / "work"
    work.mkdir()
    (work / "ckpt").symlink_to(bert_tiny_dir, target_is_directory=True)
    (work / "example.py").write_text(code + "\nif trainer.is_world_process_zero():\n"
                                     "    print('epoch', trainer.state.epoch)\n"
                                     "    print('find_unused', trainer.model_wrapped"
                                     ".find_unused_parameters)\n", encoding="utf-8")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**_env(tmp_path, bert_tiny_dir), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(port), "--log-dir", str(tmp_path / "logs"), "--redirects", "3", "example.py"],
        env=env, cwd=work, capture_output=True, text=True, timeout=1200)
    logs = {f"{p.parent.name}/{p.name}": p.read_text()
            for p in (tmp_path / "logs").rglob("*.log")}
    assert result.returncode == 0, result.stderr[-3000:] + str(logs)[-3000:]
    assert logs["1/stdout.log"] == "" and logs["1/stderr.log"] == ""
    lines = logs["0/stdout.log"].splitlines()
    assert lines[-2:] == ["epoch 2.5", "find_unused False"]
    assert lines[-4] in ("stable", "degraded", "collapsed") and lines[-3] == "None"
    assert sum(line in ("stable", "degraded", "collapsed") for line in lines) == 1
    rows = [json.loads(x) for x in (work / "run" / "telemetry.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10]


@pytest.mark.slow  # over 20 s: the example trains two arms in a subprocess
def test_confirm_example_runs(bert_tiny_dir, tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "confirm_short.py"), "--k", "4",
                             "--steps", "2"], env=_env(tmp_path, bert_tiny_dir), cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # 2 steps are below the steps a verdict needs (detectors.Thresholds.min_steps): a healthy
    # run of the real BERT-tiny is "too short", not "stable" or "degraded"
    assert lines[0].startswith("original: ") and lines[0].split(": ")[1].split(";")[0] == \
        "too short"
    assert any(line.startswith("fixed: ") for line in lines)
    records = (tmp_path / "confirm.jsonl").read_text().splitlines()
    assert len(records) == 4  # 2 steps x 2 arms
    assert lines[-1] == "telemetry: confirm.jsonl"


# --------------------------------------------------------------------------------------------
# Every Python block of the docs runs as written


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SLOW_MARK = "<!-- slow -->"  # on the line before a ```python fence: run only with -m slow


def python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """(first line number, code, slow) of each ```python block of a Markdown page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            slow = i > 0 and lines[i - 1].strip() == SLOW_MARK
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            blocks.append((start + 1, "\n".join(lines[start:end]) + "\n", slow))
            i = end
        i += 1
    return blocks


PAGES_WITH_CODE = [p for p in DOC_PAGES if python_blocks(p)]

_SESSION = """
import sys, traceback
blocks = {blocks!r}
namespace = {{"__name__": "__main__"}}
for line, code in blocks:
    try:
        exec(compile(code, f"{page}:{{line}}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"the block at {page}:{{line}} failed")
"""


def _run_page(page: Path, tmp_path: Path, bert_tiny_dir: Path, *, slow: bool):
    """Run the page's blocks in order, as one session, in a fresh folder holding `./ckpt` (the
    real BERT-tiny SPLADE); slow blocks only when `slow`."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "ckpt").symlink_to(bert_tiny_dir, target_is_directory=True)
    blocks = [(line, code) for line, code, is_slow in python_blocks(page) if slow or not is_slow]
    script = tmp_path / "session.py"
    script.write_text(_SESSION.format(blocks=blocks, page=page.relative_to(ROOT)),
                      encoding="utf-8")
    env = {**_env(tmp_path, bert_tiny_dir), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM":
           "false", "WANDB_DISABLED": "true"}
    result = subprocess.run([sys.executable, str(script)], env=env, cwd=work,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return work


def test_python_blocks_are_found():
    names = {p.name for p in PAGES_WITH_CODE}
    assert {"README.md", "api.md", "integrations.md", "json.md"} <= names
    # the README's block runs the full default probe twice and writes a checkpoint: slow
    assert [slow for _, _, slow in python_blocks(ROOT / "README.md")] == [True]
    # architecture.md lists signatures, not code to run: its blocks are plain fences
    assert "architecture.md" not in names
    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert any(slow for _, _, slow in blocks) and sum(not slow for _, _, slow in blocks) >= 8


@pytest.mark.parametrize("page", [p for p in PAGES_WITH_CODE
                                  if any(not s for _, _, s in python_blocks(p))],
                         ids=lambda p: p.name)
@pytest.mark.usefixtures("bands_default")
def test_python_blocks_of_the_docs_run_as_written(page, tmp_path, bert_tiny_dir):
    work = _run_page(page, tmp_path, bert_tiny_dir, slow=False)
    if page.name == "api.md":
        assert (work / "fixed" / "headscope.json").is_file() and not (work / "not-written").exists()
        assert (work / "report.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES_WITH_CODE
                                  if any(s for _, _, s in python_blocks(p))],
                         ids=lambda p: p.name)
def test_every_python_block_of_the_docs_runs_slow_ones_too(page, tmp_path, bert_tiny_dir):
    work = _run_page(page, tmp_path, bert_tiny_dir, slow=True)
    if page.name == "integrations.md":
        rows = [json.loads(x) for x in (work / "run" / "telemetry.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [5, 10]


def _readme_policy(tmp_path):
    from headscope.guard import load_policy

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    recipe = text[text.index("## In CI"):text.index("## In Python")]
    (tmp_path / "headscope.toml").write_text(
        re.search(r"```toml\n(.*?)```", recipe, re.DOTALL).group(1), encoding="utf-8")
    return load_policy(str(tmp_path / "headscope.toml"))


def test_readme_ci_policy_passes_a_healthy_model_and_fails_the_dense_simulation(tmp_path):
    """The README's policy on the demo's two models: the real BERT-tiny passes (max_k = 1, the
    earlier example, failed it), its dense simulation fails, each for the reasons the README
    gives."""
    from headscope import api, guard
    from headscope.probe import ProbeConfig

    policy = _readme_policy(tmp_path)
    real, dense = api.demo(probe_config=ProbeConfig(n_pairs=16)).reports
    passed = guard.evaluate(real, policy)
    assert passed.passed, [r.message for r in passed.failed]
    failed = guard.evaluate(dense, policy)
    assert not failed.passed
    assert {r.name for r in failed.failed} >= {"max_k", "max_start_loss"}
    import dataclasses

    assert not guard.evaluate(real, dataclasses.replace(policy, max_k=1.0)).passed


def test_exit_codes_are_one_list_in_readme_cli_reference_and_findings():
    from headscope.errors import EXIT_CODES, exit_codes_text

    def flat(text: str) -> str:
        return " ".join(text.split())

    listed = exit_codes_text()
    assert listed.startswith("0 ok, 1 check failed its policy, 2 usage or input error, ")
    assert f"Exit codes: {listed}." in flat((ROOT / "README.md").read_text(encoding="utf-8"))
    assert f"**Exit codes:** {listed}." in flat((ROOT / "docs" / "cli.md").read_text(
        encoding="utf-8"))
    findings = (ROOT / "docs" / "findings.md").read_text(encoding="utf-8")
    table = findings[findings.index("## Exit codes"):]
    assert [int(c) for c in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)] == [
        code for code, _ in EXIT_CODES]
    import signal

    from headscope import errors

    assert (errors.EXIT_HUNG_UP, errors.EXIT_INTERRUPTED, errors.EXIT_TERMINATED) == (
        128 + signal.SIGHUP, 128 + signal.SIGINT, 128 + signal.SIGTERM)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("target", "what"), [
    ("install", "Installing headscope (editable) and its dependencies: transformers, "
                "safetensors, numpy, ..."),
    ("install-test", "Installing headscope (editable) with its test extras: transformers, "
                     "pytest, hypothesis, ..."),
])
def test_make_install_says_each_step_in_one_line(tmp_path, target, what):
    """`pip -q` is silent for minutes while torch installs: the Makefile says each step, and
    nothing else (PYTHON=true stands in for pip, so nothing is installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env["VIRTUAL_ENV"] = str(tmp_path / "venv")
    result = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), target,
                             "PYTHON=true"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Installing torch==2.13.0 (the largest step: ~190 MB for the CPU build, several GB for "
        "a CUDA build; nothing is printed until it is done)...",
        what,
        "Installed for true"]
