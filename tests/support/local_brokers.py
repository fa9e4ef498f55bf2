"""Real Kafka broker and schema registry for tests, without Docker.

Runs Apache Kafka 4.x (single-node KRaft, loopback) and Apicurio Registry (Confluent API at
``/apis/ccompat/v7``) as plain JVM processes from the jars cached by
``deploy/local/kafka-local.sh fetch`` and ``deploy/local/apicurio-local.sh fetch``; a missing
cache is fetched through those scripts (needs Maven Central once). The versions are the ones
``deploy/versions.env`` names (``versions()``; ``KAFKA_VERSION`` / ``APICURIO_VERSION`` in the
environment override it), handed to the scripts so both always agree. Cache locations and heap
sizes follow the same environment variables as the scripts (``KAFKA_LOCAL_CACHE``,
``KAFKA_HEAP_OPTS``, ``APICURIO_LOCAL_CACHE``, ``APICURIO_HEAP_OPTS``, ``JAVA_HOME``). Kafka
runs on ``JAVA_HOME`` (or ``java`` on PATH); Apicurio 3.3.x needs Java 21+, and its JDK is the
one ``apicurio-local.sh java`` picks (``APICURIO_JAVA_HOME``, else ``JAVA_HOME`` if >= 21, else
the newest JDK >= 21 under ``/usr/lib/jvm``), so the script and the tests always agree.

Usage::

    with local_kafka(tmp_path / "kafka") as bootstrap:            # "127.0.0.1:PORT"
        ...
    with local_kafka(tmp_path / "kafka", sasl=True) as bootstrap:  # SCRAM-SHA-512 + ACLs
        conf = sasl_client_config(bootstrap, "alice")
    with local_schema_registry(tmp_path / "sr") as url:           # ".../apis/ccompat/v7"
        ...
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # what confluent_kafka.admin re-exports (typed)

logger = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy" / "local"
KAFKA_SCRIPT = DEPLOY_DIR / "kafka-local.sh"
VERSIONS_FILE = REPO_ROOT / "deploy" / "versions.env"
_VERSION_KEYS = ("KAFKA_VERSION", "APICURIO_VERSION")
APICURIO_SCRIPT = DEPLOY_DIR / "apicurio-local.sh"
CCOMPAT_PATH = "/apis/ccompat/v7"

#: SCRAM-SHA-512 users created when ``local_kafka(..., sasl=True)`` formats its storage.
#: ``admin`` is a super user (also used broker-to-broker); ``alice`` starts without ACLs.
SASL_USERS: dict[str, str] = {"admin": "admin-secret", "alice": "alice-secret"}

#: librdkafka configuration, as confluent_kafka's type hints spell it.
ClientConfig = dict[str, str | int | float | bool]

_PROBE_TOPIC = "local-harness-ready"
_FETCH_TIMEOUT = 900.0
_STOP_TIMEOUT = 30.0


def sasl_client_config(
    bootstrap: str, username: str = "alice", password: str | None = None
) -> ClientConfig:
    """Return librdkafka settings for the SASL broker (password defaults to SASL_USERS)."""
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": username,
        "sasl.password": SASL_USERS.get(username, "") if password is None else password,
    }


def versions() -> dict[str, str]:
    """Return ``KAFKA_VERSION`` and ``APICURIO_VERSION``: the environment, else versions.env.

    Raises:
        RuntimeError: versions.env does not name one of them.
    """
    lines = VERSIONS_FILE.read_text(encoding="utf-8").splitlines()
    pairs = (line.split("#")[0].partition("=") for line in lines)
    named = {key.strip(): value.strip().strip("\"'") for key, _, value in pairs}
    found = {key: os.environ.get(key) or named.get(key, "") for key in _VERSION_KEYS}
    if missing := [key for key, value in found.items() if not value]:
        raise RuntimeError(f"{VERSIONS_FILE} does not name {', '.join(missing)}")
    return found


# --------------------------------------------------------------------------- helpers


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(pathlib.Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not pathlib.Path(java).exists():
        raise RuntimeError("java not found (install a JDK 17+ or set JAVA_HOME)")
    return java


def _run_script(script: pathlib.Path, command: str, timeout: float) -> str:
    """Run ``bash <script> <command>``; return the last stdout line or raise RuntimeError."""
    try:
        res = subprocess.run(
            ["bash", str(script), command],
            env={**os.environ, **versions()},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{script.name} {command} timed out after {timeout:.0f}s") from exc
    if res.returncode != 0:
        raise RuntimeError(
            f"{script.name} {command} failed (exit {res.returncode}):\n"
            f"{_tail_text(res.stderr + res.stdout)}"
        )
    lines = res.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _cached_dir(script: pathlib.Path, dir_command: str) -> pathlib.Path:
    """Directory the script caches into; fetch it first if it is not complete yet."""
    path = pathlib.Path(_run_script(script, dir_command, timeout=30))
    if not (path / ".complete").is_file():
        logger.info("cache %s missing, running %s fetch", path, script.name)
        _run_script(script, "fetch", timeout=_FETCH_TIMEOUT)
        if not (path / ".complete").is_file():
            raise RuntimeError(f"{script.name} fetch did not populate {path}")
    return path


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (bind port 0; small race until the server binds)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail_text(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _tail(path: pathlib.Path, lines: int = 60) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), lines)
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def _heap(env_var: str, default: str) -> list[str]:
    return shlex.split(os.environ.get(env_var) or default)


def _kafka_cluster_id() -> str:
    # == org.apache.kafka.common.Uuid.randomUuid().toString(): url-safe base64, no padding
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _stop_process(proc: subprocess.Popen[bytes], name: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s (pid %d) ignored SIGTERM for %.0fs, killing", name, proc.pid, _STOP_TIMEOUT
            )
            proc.kill()
            proc.wait()


def _start_failed(
    what: str, proc: subprocess.Popen[bytes], log: pathlib.Path, why: str
) -> RuntimeError:
    _stop_process(proc, what)
    return RuntimeError(f"{what} failed to start: {why}\n--- last lines of {log} ---\n{_tail(log)}")


# --------------------------------------------------------------------------- kafka


def _kafka_ready(conf: ClientConfig, probe_produce: bool) -> None:
    """Raise unless metadata (and, optionally, a produce to a probe topic) works."""
    admin = AdminClient(conf)
    md = admin.list_topics(timeout=5)
    if not md.brokers:
        raise KafkaException("metadata has no brokers yet")
    if not probe_produce:
        return
    if _PROBE_TOPIC not in md.topics:
        for fut in admin.create_topics(
            [NewTopic(_PROBE_TOPIC, 1, 1)], operation_timeout=10
        ).values():
            with contextlib.suppress(KafkaException):  # TOPIC_ALREADY_EXISTS after a retry
                fut.result(timeout=15)
    errors: list[str] = []
    producer = Producer({**conf, "message.timeout.ms": 10000, "acks": "all"})
    producer.produce(
        _PROBE_TOPIC,
        b"ready",
        on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
    )
    if producer.flush(15) != 0:
        raise KafkaException("probe message not delivered within 15s")
    if errors:
        raise KafkaException(f"probe produce failed: {errors[0]}")
    for fut in admin.delete_topics([_PROBE_TOPIC], operation_timeout=10).values():
        with contextlib.suppress(KafkaException):  # best effort: the broker is ready anyway
            fut.result(timeout=15)


@contextlib.contextmanager
def local_kafka(
    workdir: pathlib.Path,
    sasl: bool = False,
    *,
    start_timeout: float = 90.0,
    probe_produce: bool = True,
) -> Iterator[str]:
    """Start a fresh single-node KRaft broker on loopback; yield ``"127.0.0.1:PORT"``.

    With ``sasl=True`` the client listener is SASL_PLAINTEXT/SCRAM-SHA-512 with
    StandardAuthorizer ACLs and the SASL_USERS accounts (see ``sasl_client_config``).
    Storage, config and ``server.out`` live in ``workdir``; the data dir is recreated.
    Ready means: metadata lists the broker and (``probe_produce``) a message could be
    produced to a probe topic, which is deleted again.
    """
    lib = _cached_dir(KAFKA_SCRIPT, "libdir")
    version = versions()["KAFKA_VERSION"]
    if not (lib / f"kafka_2.13-{version}.jar").is_file():
        raise RuntimeError(f"{lib} holds no kafka_2.13-{version}.jar (KAFKA_VERSION {version})")
    java = _java()
    workdir = workdir.resolve()
    data = workdir / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    port, cport = _free_ports(2)
    template = DEPLOY_DIR / ("server-sasl.properties.tmpl" if sasl else "server.properties.tmpl")
    props = workdir / "server.properties"
    props.write_text(
        template.read_text()
        .replace("@PORT@", str(port))
        .replace("@CPORT@", str(cport))
        .replace("@DATA@", str(data))
    )
    classpath = str(lib / "*")
    started = time.monotonic()

    fmt = [
        java, "-Xmx256m", "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'tools-log4j2.properties'}",
        "-cp", classpath, "kafka.tools.StorageTool", "format",
        "-t", _kafka_cluster_id(), "-c", str(props),
    ]  # fmt: skip
    if sasl:
        for user, password in SASL_USERS.items():
            fmt += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
    res = subprocess.run(
        fmt, capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"kafka storage format failed (exit {res.returncode}):\n"
            f"{_tail_text(res.stderr + res.stdout)}"
        )

    log = workdir / "server.out"
    cmd = [
        java, *_heap("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m"),
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={workdir}",
        f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}",
        "-cp", classpath, "kafka.Kafka", str(props),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        bootstrap = f"127.0.0.1:{port}"
        conf: ClientConfig = (
            sasl_client_config(bootstrap, "admin") if sasl else {"bootstrap.servers": bootstrap}
        )
        deadline = started + start_timeout
        last_error = "broker port never opened"
        while True:
            if proc.poll() is not None:
                raise _start_failed(
                    "kafka", proc, log, f"broker exited with code {proc.returncode}"
                )
            if time.monotonic() > deadline:
                raise _start_failed(
                    "kafka", proc, log, f"not ready after {start_timeout:.0f}s ({last_error})"
                )
            if _port_open(port):
                try:
                    _kafka_ready(conf, probe_produce)
                    break
                except KafkaException as exc:
                    last_error = str(exc)
            time.sleep(0.2)
        logger.info(
            "kafka %s ready on %s (sasl=%s, pid %d) in %.1fs",
            version,
            bootstrap,
            sasl,
            proc.pid,
            time.monotonic() - started,
        )
        yield bootstrap
    finally:
        _stop_process(proc, "kafka")


# --------------------------------------------------------------------------- schema registry


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback http only
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return None


def _registry_java() -> str:
    """The Java 21+ executable for Apicurio, chosen by ``apicurio-local.sh java``.

    The script owns the selection (APICURIO_JAVA_HOME, JAVA_HOME if >= 21, newest JDK >= 21
    under /usr/lib/jvm) and fails naming what it looked at; that message is raised here.
    """
    java = _run_script(APICURIO_SCRIPT, "java", timeout=30)
    if not java or not pathlib.Path(java).is_file():
        raise RuntimeError(f"{APICURIO_SCRIPT.name} java printed no usable java: {java!r}")
    return java


@contextlib.contextmanager
def local_schema_registry(workdir: pathlib.Path, *, start_timeout: float = 120.0) -> Iterator[str]:
    """Start Apicurio Registry (in-memory H2, Java 21+) on loopback; yield the ccompat v7 URL.

    The URL (``http://127.0.0.1:PORT/apis/ccompat/v7``) is what
    ``confluent_kafka.schema_registry.SchemaRegistryClient({"url": ...})`` expects.
    Ready means ``GET <url>/subjects`` answered 200. The log is ``workdir/apicurio.out``.
    """
    appdir = _cached_dir(APICURIO_SCRIPT, "appdir")
    jars = sorted(appdir.glob("quarkus-run.jar")) + sorted(appdir.glob("*/quarkus-run.jar"))
    jars += sorted(appdir.glob("apicurio-registry-app-*-runner.jar"))
    if not jars:
        raise RuntimeError(f"no runnable Apicurio jar in {appdir}; delete it and fetch again")
    java = _registry_java()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port, mport = _free_ports(2)
    url = f"http://127.0.0.1:{port}{CCOMPAT_PATH}"
    log = workdir / "apicurio.out"
    cmd = [
        java, *_heap("APICURIO_HEAP_OPTS", "-Xms64m -Xmx384m"), "-XX:+UseSerialGC",
        "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={port}",
        "-Dquarkus.management.host=127.0.0.1", f"-Dquarkus.management.port={mport}",
        "-Dquarkus.banner.enabled=false", "-Dquarkus.log.level=WARN",
        "-Dquarkus.http.access-log.enabled=false",
        '-Dquarkus.log.category."io.quarkus".level=INFO',
        '-Dquarkus.log.category."io.apicurio".level=WARN',
        "-Dapicurio.ccompat.use-canonical-hash=true",
        "-jar", str(jars[0]),
    ]  # fmt: skip
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,
        )
    try:
        deadline = started + start_timeout
        while True:
            if proc.poll() is not None:
                raise _start_failed(
                    "schema registry", proc, log, f"exited with code {proc.returncode}"
                )
            if time.monotonic() > deadline:
                raise _start_failed(
                    "schema registry",
                    proc,
                    log,
                    f"GET {url}/subjects not 200 after {start_timeout:.0f}s",
                )
            if _http_status(f"{url}/subjects") == 200:
                break
            time.sleep(0.2)
        logger.info(
            "apicurio %s ready on %s (pid %d) in %.1fs",
            versions()["APICURIO_VERSION"],
            url,
            proc.pid,
            time.monotonic() - started,
        )
        yield url
    finally:
        _stop_process(proc, "schema registry")
