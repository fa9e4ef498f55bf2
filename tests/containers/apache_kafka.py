"""A testcontainers Kafka container for images with apache/kafka's environment interface.

testcontainers' own ``KafkaContainer`` drives the Confluent image's scripts
(``/etc/confluent/docker/...``). This one drives ``/etc/kafka/docker/run`` with ``KAFKA_*``
variables, which both the official ``apache/kafka`` image and the image
``deploy/images/build.sh kafka`` builds provide. As ``KafkaContainer`` does, it starts the
container on a command that waits for a start script, and writes the script once the host
port is known, so that the advertised listener is the address the tests connect to.
"""

from __future__ import annotations

import io
import tarfile
import time

from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

__all__ = ["ApacheKafkaContainer"]

START_SCRIPT = "/tmp/testcontainers-start.sh"  # noqa: S108 (inside the container)
CLIENT_PORT = 9092

# The settings of deploy/local/server.properties.tmpl (the JVM broker the tests otherwise run
# on), so a test behaves the same on either; listeners: PLAINTEXT for the host, BROKER and
# CONTROLLER inside the container.
BROKER_ENV = {
    "KAFKA_NODE_ID": "1",
    "KAFKA_PROCESS_ROLES": "broker,controller",
    "KAFKA_LISTENERS": "PLAINTEXT://:9092,BROKER://:9093,CONTROLLER://:9094",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
        "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
    ),
    "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
    "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
    "KAFKA_NUM_PARTITIONS": "1",
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_NUM_PARTITIONS": "1",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    "KAFKA_LOG_SEGMENT_BYTES": "16777216",
    "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
}


class ApacheKafkaContainer(DockerContainer):
    """A single-node KRaft broker (combined broker and controller), plaintext.

    Use as a context manager; :meth:`get_bootstrap_server` is ``host:port`` on the host.
    """

    def __init__(self, image: str, startup_timeout: float = 120.0) -> None:
        super().__init__(image)
        self.startup_timeout = startup_timeout
        self.with_exposed_ports(CLIENT_PORT)
        for name, value in BROKER_ENV.items():
            self.with_env(name, value)
        self.with_command(
            f'sh -c "while [ ! -f {START_SCRIPT} ]; do sleep 0.1; done; exec sh {START_SCRIPT}"'
        )

    def get_bootstrap_server(self) -> str:
        """``host:port`` of the PLAINTEXT listener as seen from the host."""
        return f"{self.get_container_host_ip()}:{self.get_exposed_port(CLIENT_PORT)}"

    def start(self) -> ApacheKafkaContainer:
        """Start the container, advertise its host address, wait for "Kafka Server started".

        Raises:
            TimeoutError: no start within ``startup_timeout`` seconds.
            RuntimeError: the container exited during start-up.
        """
        super().start()
        script = (
            f"export KAFKA_ADVERTISED_LISTENERS="
            f"PLAINTEXT://{self.get_bootstrap_server()},BROKER://localhost:9093\n"
            "exec /etc/kafka/docker/run\n"
        ).encode()
        self._put_file(START_SCRIPT, script)
        started = LogMessageWaitStrategy("Kafka Server started")
        started.with_startup_timeout(int(self.startup_timeout))
        started.wait_until_ready(self)
        return self

    def _put_file(self, path: str, content: bytes) -> None:
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(name=path.lstrip("/"))
            info.size = len(content)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
        self.get_wrapped_container().put_archive("/", archive.getvalue())
