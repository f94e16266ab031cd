"""The orderhub command as people use it: fast help, one-line errors, serve's explanation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})}, cwd=ROOT)


def test_help_is_fast_and_imports_nothing_heavy():
    started = time.monotonic()
    out = _run("--help")
    assert out.returncode == 0 and "demo" in out.stdout
    assert time.monotonic() - started < 5  # the benchmark holds the real target (1.5 s)
    probe = _run("--help", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert "great_expectations" not in probe.stderr and "prefect" not in probe.stderr


def test_check_config_lists_what_the_file_declares(capsys):
    assert main(["check-config", "--config", str(ROOT / "orderhub.yaml")]) == 0
    out = capsys.readouterr().out
    assert "shopify (shopify): orders, fulfilment_target" in out


def test_a_bad_config_is_one_line_naming_file_and_key(tmp_path, capsys):
    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    raw["sources"]["shopify"]["auth"] = {"token": "shpat_plaintext_secret"}
    bad = tmp_path / "orderhub.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(bad) in err and "sources.shopify.auth.token" in err
    assert "shpat_plaintext_secret" not in err


def test_unknown_system_and_missing_file(tmp_path, capsys):
    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    raw["sources"]["shopify"]["system"] = "magento"
    bad = tmp_path / "orderhub.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["check-config", "--config", str(bad)]) == 1
    assert "sources.shopify.system: 'magento' is not one of" in capsys.readouterr().err
    assert main(["check-config", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml: file not found" in capsys.readouterr().err


def test_unreachable_source_is_one_line_naming_source_and_url(tmp_path):
    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    raw["warehouse"] = {"url": f"sqlite:///{tmp_path / 'wh.db'}"}
    raw["sources"] = {"shopify": {**raw["sources"]["shopify"],
                                  "base_url": "http://127.0.0.1:9", "rate_limit": 0,
                                  "retry": {"max_retries": 1, "backoff_base": 0.01}}}
    cfg = tmp_path / "orderhub.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = _run("run", "ingest", "--config", str(cfg),
               env={"SHOPIFY_TOKEN": "shpat_do_not_print"})
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("orderhub: error:")]
    assert len(errors) == 1, out.stderr
    assert "shopify" in errors[0] and "127.0.0.1:9" in errors[0]
    assert "alert source_unreachable" in out.stderr  # the alert fired too
    assert "shpat_do_not_print" not in out.stderr + out.stdout


def test_serve_explains_that_schedules_need_a_server():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "serve"], capture_output=True,
                         text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 2
    assert "need a running Prefect server" in out.stderr
    assert "PREFECT_API_URL" in out.stderr


def test_a_declared_rest_source_is_checked_when_the_config_loads(tmp_path, capsys):
    raw = yaml.safe_load((ROOT / "orderhub.yaml").read_text())
    example = yaml.safe_load((ROOT / "examples" / "rest-source.yaml").read_text())
    name, src = next(iter(example["sources"].items()))
    stream = next(iter(src["options"]["streams"].values()))
    stream["paginator"]["type"] = "pages"
    raw["sources"][name] = src
    bad = tmp_path / "orderhub.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "paginator.type" in err and "'pages'" in err
