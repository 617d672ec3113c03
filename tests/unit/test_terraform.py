"""Static checks of the Terraform in infra/terraform.

Terraform's own `validate` needs the AWS provider, which cannot be downloaded here, so these
tests read the HCL as text: a small block reader (braces outside strings and comments) and
regular expressions. They check the wiring `validate` would (every module input and output
referenced exists, required inputs are set) and a few properties that must not regress.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
ENVS = ("dev", "staging", "prod")
ENV_FILES = ("main.tf", "providers.tf", "variables.tf", "backend.tf", "terraform.tfvars")
MODULES = ("network", "database", "app", "observability", "secrets")
SECRET_VARIABLES = ("POSTGRES_URL", "PATIENT_API_KEYS", "CLIENT_REGISTRY_TOKEN")

BLOCK_HEADER = re.compile(r'^(resource|data|module|variable|output)\s+((?:"[^"]*"\s*)+)\{', re.M)


def strip_comments(text: str) -> str:
    """HCL without # and // comments (quotes respected)."""
    out: list[str] = []
    for line in text.splitlines():
        in_string = False
        cut = len(line)
        for i, ch in enumerate(line):
            if ch == '"' and (i == 0 or line[i - 1] != "\\"):
                in_string = not in_string
            elif not in_string and (ch == "#" or line.startswith("//", i)):
                cut = i
                break
        out.append(line[:cut])
    return "\n".join(out)


def block_body(text: str, start: int) -> str:
    """The text between the brace at `start` and its partner."""
    depth, in_string = 0, False
    for i in range(start, len(text)):
        ch = text[i]
        if ch == '"' and text[i - 1] != "\\":
            in_string = not in_string
        elif not in_string and ch == "{":
            depth += 1
        elif not in_string and ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    raise AssertionError("unbalanced braces")


@functools.cache
def blocks(path: Path) -> dict[tuple[str, ...], str]:
    """Top-level blocks of a .tf file: ("resource", type, name) -> body."""
    text = strip_comments(path.read_text())
    found: dict[tuple[str, ...], str] = {}
    for match in BLOCK_HEADER.finditer(text):
        labels = tuple(re.findall(r'"([^"]*)"', match.group(2)))
        found[(match.group(1), *labels)] = block_body(text, match.end() - 1)
    return found


def tf_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tf"))


def all_blocks(directory: Path) -> dict[tuple[str, ...], str]:
    merged: dict[tuple[str, ...], str] = {}
    for path in tf_files(directory):
        merged.update(blocks(path))
    return merged


def names_of(directory: Path, kind: str) -> set[str]:
    return {key[1] for key in all_blocks(directory) if key[0] == kind}


def top_level_attributes(body: str) -> dict[str, str]:
    """`name = value` lines at the first level of a block body."""
    attributes: dict[str, str] = {}
    depth = 0
    for line in body.splitlines():
        if depth == 0 and (m := re.match(r"\s*([A-Za-z_][\w-]*)\s*=\s*(.*)$", line)):
            attributes[m.group(1)] = m.group(2).strip()
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return attributes


def resource(module: str, type_: str, name: str) -> str:
    return all_blocks(TERRAFORM / "modules" / module)[("resource", type_, name)]


def all_terraform_text() -> list[tuple[Path, str]]:
    paths = sorted([*TERRAFORM.rglob("*.tf"), *TERRAFORM.rglob("*.tfvars")])
    return [(path, path.read_text()) for path in paths]


@pytest.mark.parametrize("env", ENVS)
def test_every_environment_has_its_files_and_an_encrypted_locked_remote_state(env: str) -> None:
    directory = TERRAFORM / "envs" / env
    for name in ENV_FILES:
        assert (directory / name).is_file(), f"envs/{env}/{name} is missing"
    backend = (directory / "backend.tf").read_text()
    assert re.search(r'backend\s+"s3"\s*\{', backend)
    assert re.search(r"^\s*encrypt\s*=\s*true\s*$", backend, re.M)
    assert re.search(r'^\s*dynamodb_table\s*=\s*"[^"]+"', backend, re.M)
    assert re.search(rf'^\s*key\s*=\s*"[^"]*/{env}/terraform\.tfstate"', backend, re.M)
    tfvars = (directory / "terraform.tfvars").read_text()
    assert re.search(rf'^environment\s*=\s*"{env}"', tfvars, re.M)


def test_environments_share_one_wiring_and_differ_in_tfvars_only() -> None:
    def wiring(env: str, name: str) -> list[str]:
        text = strip_comments((TERRAFORM / "envs" / env / name).read_text())
        return [line for line in text.splitlines() if line.strip()]

    for name in ("main.tf", "providers.tf", "variables.tf", "outputs.tf"):
        assert wiring("dev", name) == wiring("staging", name) == wiring("prod", name), name


def test_provider_and_terraform_versions_are_pinned() -> None:
    for path in [*TERRAFORM.glob("envs/*/providers.tf"), *TERRAFORM.glob("modules/*/versions.tf")]:
        text = path.read_text()
        assert re.search(r'source\s*=\s*"hashicorp/aws"', text), path
        assert re.search(r'version\s*=\s*"~>\s*5\.\d+"', text), path
        assert re.search(r'required_version\s*=\s*">=\s*1\.\d+', text), path


@pytest.mark.parametrize("env", ENVS)
def test_module_calls_match_the_modules(env: str) -> None:
    """What `terraform validate` would catch: unknown or missing inputs, unknown outputs."""
    directory = TERRAFORM / "envs" / env
    main = blocks(directory / "main.tf")
    calls = {key[1]: body for key, body in main.items() if key[0] == "module"}
    assert set(calls) == set(MODULES)
    for name, body in calls.items():
        attributes = top_level_attributes(body)
        assert attributes.pop("source") == f'"../../modules/{name}"'
        module_dir = TERRAFORM / "modules" / name
        variables = {
            key[1]: var_body
            for key, var_body in all_blocks(module_dir).items()
            if key[0] == "variable"
        }
        assert set(attributes) <= set(variables), f"{name}: unknown inputs"
        required = {v for v, var_body in variables.items() if "default" not in var_body}
        assert required <= set(attributes), f"{name}: required inputs not set"

    text = "\n".join(strip_comments(p.read_text()) for p in tf_files(directory))
    for module, output in re.findall(r"\bmodule\.(\w+)\.(\w+)", text):
        assert output in names_of(TERRAFORM / "modules" / module, "output"), (module, output)
    declared = names_of(directory, "variable")
    assert set(re.findall(r"\bvar\.(\w+)", text)) <= declared
    tfvars = (directory / "terraform.tfvars").read_text()
    assert set(re.findall(r"^(\w+)\s*=", tfvars, re.M)) <= declared


@pytest.mark.parametrize("module", MODULES)
def test_modules_use_only_declared_variables_and_locals(module: str) -> None:
    directory = TERRAFORM / "modules" / module
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (directory / name).is_file(), f"modules/{module}/{name} is missing"
    text = "\n".join(strip_comments(p.read_text()) for p in tf_files(directory))
    assert set(re.findall(r"\bvar\.(\w+)", text)) <= names_of(directory, "variable")
    for key, body in all_blocks(directory).items():
        if key[0] in {"variable", "output"}:
            assert re.search(r"^\s*description\s*=", body, re.M), key
        if key[0] == "variable":
            assert re.search(r"^\s*type\s*=", body, re.M), key
    local_names = {
        name
        for match in re.finditer(r"^locals\s*\{", text, re.M)
        for name in top_level_attributes(block_body(text, match.end() - 1))
    }
    assert set(re.findall(r"\blocal\.(\w+)", text)) <= local_names


def test_the_database_is_private_encrypted_and_protected() -> None:
    db = top_level_attributes(resource("database", "aws_db_instance", "this"))
    assert db["publicly_accessible"] == "false"
    assert db["storage_encrypted"] == "true"
    assert db["kms_key_id"] == "var.kms_key_arn"
    assert db["engine"] == '"postgres"'
    assert db["iam_database_authentication_enabled"] == "true"
    assert db["manage_master_user_password"] == "true"
    assert db["performance_insights_kms_key_id"] == "var.kms_key_arn"
    assert db["skip_final_snapshot"] == "false"
    assert "password" not in db
    for attribute in ("multi_az", "deletion_protection", "backup_retention_period"):
        assert db[attribute].startswith("var."), attribute
    params = resource("database", "aws_db_parameter_group", "this")
    assert re.search(r'name\s*=\s*"rds\.force_ssl"\s*\n\s*value\s*=\s*"1"', params)
    assert re.search(r'family\s*=\s*"postgres16"', params)
    variables = all_blocks(TERRAFORM / "modules" / "database")
    assert "default     = true" in variables[("variable", "multi_az")]
    assert "default     = true" in variables[("variable", "deletion_protection")]


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_production_like_environments_are_multi_az_and_keep_logs_six_years(env: str) -> None:
    tfvars = (TERRAFORM / "envs" / env / "terraform.tfvars").read_text()
    assert re.search(r"^db_multi_az\s*=\s*true", tfvars, re.M)
    assert re.search(r"^deletion_protection\s*=\s*true", tfvars, re.M)
    assert re.search(r"^log_retention_days\s*=\s*2192", tfvars, re.M)


def test_log_retention_defaults_to_six_years() -> None:
    for module, variable in [
        ("observability", "log_retention_days"),
        ("network", "flow_log_retention_days"),
        ("database", "log_retention_days"),
        ("app", "access_log_retention_days"),
        ("app", "waf_log_retention_days"),
    ]:
        body = all_blocks(TERRAFORM / "modules" / module)[("variable", variable)]
        assert re.search(r"default\s*=\s*2192\b", body), (module, variable)


def test_the_load_balancer_is_https_only_and_checks_readyz() -> None:
    https = top_level_attributes(resource("app", "aws_lb_listener", "https"))
    assert https["protocol"] == '"HTTPS"'
    assert https["ssl_policy"] == "var.ssl_policy"
    ssl_default = all_blocks(TERRAFORM / "modules" / "app")[("variable", "ssl_policy")]
    assert re.search(r'default\s*=\s*"ELBSecurityPolicy-TLS13-1-2-', ssl_default)
    redirect = resource("app", "aws_lb_listener", "http_redirect")
    assert re.search(r'type\s*=\s*"redirect"', redirect)
    assert re.search(r'protocol\s*=\s*"HTTPS"', redirect)
    lb = top_level_attributes(resource("app", "aws_lb", "this"))
    assert lb["drop_invalid_header_fields"] == "true"
    target_group = resource("app", "aws_lb_target_group", "this")
    assert re.search(r"path\s*=\s*var\.health_check_path", target_group)
    variables = all_blocks(TERRAFORM / "modules" / "app")
    assert '"/readyz"' in variables[("variable", "health_check_path")]


def test_the_tasks_run_serve_and_migrate_with_secrets_from_secrets_manager() -> None:
    app = (TERRAFORM / "modules" / "app" / "main.tf").read_text()
    assert 'command      = ["fhir-server", "serve"]' in app
    assert 'command          = ["fhir-server", "migrate"]' in app
    assert "for name, arn in var.secret_arns : { name = name, valueFrom = arn }" in app
    assert 'valueFrom = var.secret_arns["POSTGRES_URL"]' in app
    assert "readonlyRootFilesystem = true" in app
    secrets_module = all_blocks(TERRAFORM / "modules" / "secrets")
    default = secrets_module[("variable", "secrets")]
    for name in SECRET_VARIABLES:
        assert re.search(rf"^\s*{name}\s*=", default, re.M), name
    # a secret is never a plain environment variable
    for path, text in all_terraform_text():
        for name in SECRET_VARIABLES:
            assert not re.search(rf'^\s*{name}\s*=\s*"', text, re.M) or path.name == (
                "variables.tf"
            ), f"{name} set as a literal in {path.relative_to(ROOT)}"


def test_no_secret_values_in_the_terraform() -> None:
    patterns = {
        "secret version": r'resource\s+"aws_secretsmanager_secret_version"',
        "password attribute": r"^\s*(master_)?password\s*=",
        "secret string": r"secret_string\s*=",
        "AWS access key": r"\bAKIA[0-9A-Z]{16}\b",
        "URL with credentials": r"://[^/\s:@\"]+:[^/\s@\"]+@",
        "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    }
    for path, text in all_terraform_text():
        for what, pattern in patterns.items():
            assert not re.search(pattern, text, re.M), f"{what} in {path.relative_to(ROOT)}"


def test_kms_keys_rotate_and_encrypt_logs_and_secrets() -> None:
    for key in ("data", "logs"):
        body = top_level_attributes(resource("secrets", "aws_kms_key", key))
        assert body["enable_key_rotation"] == "true"
        assert "policy" in body
    secret = top_level_attributes(resource("secrets", "aws_secretsmanager_secret", "this"))
    assert secret["kms_key_id"] == "aws_kms_key.data.arn"
    for module, name in [
        ("observability", "app"),
        ("network", "flow_logs"),
        ("database", "exports"),
        ("app", "waf"),
    ]:
        group = top_level_attributes(resource(module, "aws_cloudwatch_log_group", name))
        assert group["kms_key_id"].startswith("var."), (module, name)


def test_accepted_checkov_findings_are_documented_with_a_reason() -> None:
    doc = (ROOT / "docs" / "infrastructure.md").read_text()
    skips = [
        (path, match)
        for path, text in all_terraform_text()
        for match in re.finditer(r"#checkov:skip=(\w+)(?::(.*))?", text)
    ]
    assert skips
    for path, match in skips:
        assert (match.group(2) or "").strip(), f"{match.group(1)} in {path.name} has no reason"
        assert f"`{match.group(1)}`" in doc, f"{match.group(1)} is not in docs/infrastructure.md"
