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
MODULES = ("network", "database", "app", "observability", "secrets", "stack")
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


def local_values(directory: Path) -> dict[str, str]:
    """The locals of a directory: name -> expression."""
    text = "\n".join(strip_comments(p.read_text()) for p in tf_files(directory))
    return {
        name: value
        for match in re.finditer(r"^locals\s*\{", text, re.M)
        for name, value in top_level_attributes(block_body(text, match.end() - 1)).items()
    }


def stack_inputs(env: str) -> dict[str, str]:
    """The inputs envs/<env>/main.tf gives modules/stack."""
    return top_level_attributes(blocks(TERRAFORM / "envs" / env / "main.tf")[("module", "stack")])


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
    assert local_values(directory)["environment"] == f'"{env}"'


def test_environments_are_one_stack_call_each_and_share_the_rest() -> None:
    """The wiring is modules/stack; an environment is its values, its state key and its account."""

    def wiring(env: str, name: str) -> list[str]:
        text = strip_comments((TERRAFORM / "envs" / env / name).read_text())
        return [line for line in text.splitlines() if line.strip()]

    for name in ("providers.tf", "variables.tf"):
        assert wiring("dev", name) == wiring("staging", name) == wiring("prod", name), name
    for env in ENVS:
        directory = TERRAFORM / "envs" / env
        assert [path.name for path in tf_files(directory)] == sorted(ENV_FILES[:-1])
        main = blocks(directory / "main.tf")
        assert set(main) == {("module", "stack"), ("output", "stack")}, env
        assert top_level_attributes(main[("output", "stack")])["value"] == "module.stack"
        assert set(local_values(directory)) == {"environment"}
        call = top_level_attributes(main[("module", "stack")])
        assert call["source"] == '"../../modules/stack"'
        assert call["environment"] == "local.environment"
        assert call["image_tag"] == "var.image_tag"
        call.pop("source")
        # every input, so that no environment silently takes a default another one overrides
        assert set(call) == names_of(TERRAFORM / "modules" / "stack", "variable"), env


def test_provider_and_terraform_versions_are_pinned() -> None:
    for path in [*TERRAFORM.glob("envs/*/providers.tf"), *TERRAFORM.glob("modules/*/versions.tf")]:
        text = path.read_text()
        assert re.search(r'source\s*=\s*"hashicorp/aws"', text), path
        assert re.search(r'version\s*=\s*"~>\s*5\.\d+"', text), path
        assert re.search(r'required_version\s*=\s*">=\s*1\.\d+', text), path


def module_calls(directory: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """module blocks of a directory: name -> (directory of its source, its inputs)."""
    calls = {}
    for key, body in all_blocks(directory).items():
        if key[0] == "module":
            attributes = top_level_attributes(body)
            source = attributes.pop("source")
            assert source.startswith('"../') and source.endswith('"'), (directory, source)
            target = (directory / source.strip('"')).resolve()
            assert target.parent == TERRAFORM / "modules", (directory, source)
            calls[key[1]] = (target, attributes)
    return calls


@pytest.mark.parametrize("directory", [*(f"envs/{env}" for env in ENVS), "modules/stack"])
def test_module_calls_match_the_modules(directory: str) -> None:
    """What `terraform validate` would catch: unknown or missing inputs, unknown outputs."""
    caller = TERRAFORM / directory
    calls = module_calls(caller)
    expected = set(MODULES) - {"stack"} if directory == "modules/stack" else {"stack"}
    assert set(calls) == expected
    for name, (target, attributes) in calls.items():
        assert target.name == name, f"module {name} calls {target.name}"
        variables = {
            key[1]: var_body for key, var_body in all_blocks(target).items() if key[0] == "variable"
        }
        assert set(attributes) <= set(variables), f"{name}: unknown inputs"
        required = {v for v, var_body in variables.items() if "default" not in var_body}
        assert required <= set(attributes), f"{name}: required inputs not set"

    text = "\n".join(strip_comments(p.read_text()) for p in tf_files(caller))
    for module, output in re.findall(r"\bmodule\.(\w+)\.(\w+)", text):
        assert output in names_of(calls[module][0], "output"), (module, output)
    declared = names_of(caller, "variable")
    assert set(re.findall(r"\bvar\.(\w+)", text)) <= declared
    assert set(re.findall(r"\blocal\.(\w+)", text)) <= set(local_values(caller))
    if directory.startswith("envs/"):
        # variables.tf declares what terraform.tfvars sets, and nothing else
        tfvars = (caller / "terraform.tfvars").read_text()
        assert set(re.findall(r"^(\w+)\s*=", tfvars, re.M)) == declared


def test_the_stack_outputs_endpoints_database_and_secrets() -> None:
    outputs = names_of(TERRAFORM / "modules" / "stack", "output")
    assert {"url", "alb_dns_name", "db_endpoint", "secret_arns"} <= outputs
    assert {"ecr_repository_url", "migrate_task_definition_arn", "cluster_name"} <= outputs


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
    assert set(re.findall(r"\blocal\.(\w+)", text)) <= set(local_values(directory))


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
    inputs = stack_inputs(env)
    assert inputs["db_multi_az"] == "true"
    assert inputs["deletion_protection"] == "true"
    assert inputs["log_retention_days"] == "2192"
    tfvars = (TERRAFORM / "envs" / env / "terraform.tfvars").read_text()
    assert re.search(r'^data_classification\s*=\s*"phi"', tfvars, re.M)


@pytest.mark.parametrize("env", ENVS)
def test_only_a_single_az_environment_skips_the_multi_az_check(env: str) -> None:
    """The skip sits on the environment's stack call, so it covers that environment alone."""
    main = (TERRAFORM / "envs" / env / "main.tf").read_text()
    skipped = re.search(r'module\s+"stack"\s*\{\s*#checkov:skip=CKV_AWS_157:', main) is not None
    assert skipped == (stack_inputs(env)["db_multi_az"] == "false"), env
    for path, text in all_terraform_text():
        if "CKV_AWS_157" in text:
            assert path.parent.parent.name == "envs", path


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
