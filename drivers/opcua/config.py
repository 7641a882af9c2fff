"""Configuration of an OPC UA source."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from drivers.config_base import ConfigPath, SourceConfigBase, StrictModel

SecurityPolicyName = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityModeName = Literal["None", "Sign", "SignAndEncrypt"]
Trigger = Literal["status", "status-value", "status-value-timestamp"]


class MonitoringOptions(StrictModel):
    """Monitored-item settings (OPC UA Part 4, MonitoringParameters and DataChangeFilter).

    A field left unset takes the value of the enclosing node group, then of the source.
    """

    sampling_interval_ms: float | None = Field(default=None, ge=0)
    queue_size: int | None = Field(default=None, ge=0, le=65535)
    discard_oldest: bool | None = None
    trigger: Trigger | None = Field(default=None, description="data-change filter trigger")
    deadband_type: Literal["none", "absolute", "percent"] | None = None
    deadband_value: float | None = Field(default=None, ge=0)


class OpcUaNode(MonitoringOptions):
    """One monitored node, by node id (`ns=2;s=...`, `nsu=<uri>;s=...`, `i=2258`) or by browse path."""

    node_id: str | None = Field(
        default=None,
        min_length=1,
        description="node id, such as 'nsu=urn:plantgate:demo;s=Line1.Temperature'",
    )
    browse_path: str | None = Field(
        default=None,
        min_length=1,
        description="'/'-separated browse names from start_node, such as 'Line1/Temperature'",
    )
    namespace: str | None = Field(
        default=None, description="namespace URI of the browse names in browse_path that have no 'N:' prefix"
    )
    start_node: str = Field(default="i=85", description="node the browse path starts from (Objects)")
    name: str | None = Field(default=None, description="subject of the records; defaults to the address")

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaNode:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("set exactly one of node_id and browse_path")
        return self

    @property
    def address(self) -> str:
        """The node's configured address, as written; it names the node in records and messages."""
        if self.node_id is not None:
            return self.node_id
        namespace = f"nsu={self.namespace};" if self.namespace else ""
        return f"{namespace}{self.start_node}/{self.browse_path}"

    @property
    def subject(self) -> str:
        return self.name or self.address


class NodeGroup(MonitoringOptions):
    """Nodes sharing one subscription and its publishing interval."""

    name: str = Field(min_length=1)
    publishing_interval_ms: float | None = Field(default=None, gt=0)
    nodes: list[OpcUaNode] = Field(min_length=1)


class EventSubscription(StrictModel):
    """Events (alarms and conditions) from one notifier, recorded in the event lane."""

    notifier: str = Field(default="i=2253", description="node id of the event notifier (Server object)")
    event_type: str = Field(default="i=2041", description="node id of the event type (BaseEventType)")
    fields: list[str] = Field(
        default=["EventId", "EventType", "SourceName", "Time", "Message", "Severity"],
        min_length=1,
        description="browse names of the event fields to record",
    )
    name: str | None = Field(default=None, description="subject of the records; defaults to the notifier")
    queue_size: int = Field(default=1000, ge=0)

    @property
    def subject(self) -> str:
        return self.name or self.notifier


class SecurityConfig(StrictModel):
    policy: SecurityPolicyName = "None"
    mode: SecurityModeName = "None"
    # validate_default: the default, too, is taken relative to the configuration file.
    pki_dir: ConfigPath = Field(
        default=Path("pki"), validate_default=True, description="folder with own/, trusted/, rejected/"
    )
    application_uri: str = Field(default="urn:plantgate:agent", min_length=1)
    trust_all_server_certificates: bool = Field(
        default=False, description="accept any server certificate; for commissioning only"
    )

    @model_validator(mode="after")
    def _policy_and_mode(self) -> SecurityConfig:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError(
                f"policy {self.policy!r} and mode {self.mode!r} do not fit: use policy 'None' with mode "
                "'None', or a policy such as 'Basic256Sha256' with mode 'Sign' or 'SignAndEncrypt'"
            )
        return self


class OpcUaSourceConfig(SourceConfigBase, MonitoringOptions):
    type: Literal["opcua"]
    endpoint: str = Field(description="opc.tcp://host:port/path")
    mode: Literal["subscription", "polling"] = "subscription"
    poll_interval_ms: float = Field(default=1000.0, gt=0, description="Read interval in polling mode")
    publishing_interval_ms: float = Field(default=1000.0, gt=0)
    keepalive_count: int = Field(default=10, ge=1, le=1000, description="publishing intervals per keep-alive")
    missed_keepalives: float = Field(
        default=3.0, ge=1, description="keep-alive intervals without a publish response before reconnecting"
    )
    timeout_s: float = Field(default=10.0, gt=0, description="time allowed for one request")
    session_timeout_s: float = Field(
        default=60.0, ge=5, description="how long the server keeps a session whose connection was lost"
    )
    max_items_per_call: int | None = Field(
        default=None,
        ge=1,
        description="cap on monitored items or reads per request; server limits also apply",
    )
    username: str | None = None
    password_file: ConfigPath | None = None
    password: SecretStr | None = Field(default=None, description="prefer password_file")
    security: SecurityConfig = SecurityConfig()
    nodes: list[OpcUaNode] = []
    groups: list[NodeGroup] = []
    events: list[EventSubscription] = []

    @field_validator("endpoint")
    @classmethod
    def _endpoint_scheme(cls, value: str) -> str:
        if not value.startswith("opc.tcp://"):
            raise ValueError(f"{value!r} must start with 'opc.tcp://'")
        return value

    @model_validator(mode="after")
    def _something_to_read(self) -> OpcUaSourceConfig:
        if not (self.nodes or self.groups or self.events):
            raise ValueError("configure at least one entry in nodes, groups or events")
        if self.username is None and (self.password_file or self.password):
            raise ValueError("a password is set but username is missing")
        if self.password_file and self.password:
            raise ValueError("set password_file or password, not both")
        return self

    def describe(self) -> str:
        count = len(self.nodes) + sum(len(group.nodes) for group in self.groups)
        parts = [f"{self.endpoint}, {count} node(s)", self.mode]
        if self.events:
            parts.append(f"{len(self.events)} event notifier(s)")
        if self.security.policy != "None":
            parts.append(f"{self.security.policy}/{self.security.mode}")
        return ", ".join(parts)
