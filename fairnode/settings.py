"""The node's settings: one place, read once, injected everywhere else.

Sources, later ones winning: embedded defaults, a YAML file (``fairnode serve --config FILE`` or
``FAIRNODE_CONFIG``), environment variables ``FAIRNODE_<FIELD>`` (nested with ``__``, lists as JSON).
See ``deploy/fairnode.example.yaml`` for every field with a comment.

Secrets have no default: the pseudonymisation secret is read from ``FAIRNODE_PSEUDONYM_SECRET`` or,
in the embedded set-up, from ``<data_dir>/pseudonym.key``, created on first start (32 random bytes,
mode 0600) — back it up: without it, the registry cannot link a returning patient to earlier studies.
"""

from __future__ import annotations

import os
import secrets
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydicom.uid import UID

from dicom_node.assembly import AssemblySettings
from dicom_node.audit_trail import AuditTrailSettings
from dicom_node.deid import OPTIONS as DEID_OPTIONS
from dicom_node.guards import GuardSettings
from dicom_node.retention import RetentionSettings
from dicom_node.scp import ScpSettings
from dicom_node.scp_settings import Receiver
from dicom_node.scu import Destination, ForwardSettings, RetryPolicy
from dicom_node.selection import DEFAULT_RULES, SeriesRule
from dicom_node.stow import DicomWebTarget, WebAuth, check_url
from dicom_node.tls import DestinationTls, TlsSettings
from dicom_node.writers import MAP_TRANSFER_SYNTAXES, OutputSettings
from fairness_registry.audit.settings import AuditSettings
from fairness_registry.settings import RegistrySettings
from fairnode.benchmark.settings import BenchmarkSettings
from fairnode.jobs.settings import JobSettings
from fairnode.lesions import LesionSettings
from fairnode.pipeline import QualitySettings
from inference.backends import InferenceSettings
from quality.settings import QualityCalibrationSettings
from review.config import ReviewSettings


class DestinationModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["dicom", "dicomweb"] = "dicom"  # C-STORE to an AE, or STOW-RS to a DICOMweb url
    ae_title: str | None = Field(None, min_length=1, max_length=16, description="kind dicom: the called AE")
    host: str | None = Field(None, description="kind dicom")
    port: int | None = Field(None, ge=1, le=65535, description="kind dicom")
    url: str | None = Field(None, description="kind dicomweb: base URL, results POSTed to {url}/studies")
    auth: WebAuth | None = None  # kind dicomweb: basic (username, password) or bearer (token)
    tls: DestinationTls | None = None  # DICOM TLS to this destination (CAs to trust, client certificate)
    deidentify: bool = False  # send de-identified copies only (PS3.15 Annex E basic profile)
    deidentify_options: list[str] = Field(default_factory=list, description="Annex E options kept, see docs")

    @field_validator("deidentify_options")
    @classmethod
    def _deid_options(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - DEID_OPTIONS.keys())
        if unknown:
            raise ValueError(f"unknown de-identification options {unknown}; accepted: {sorted(DEID_OPTIONS)}")
        return v

    @model_validator(mode="after")
    def _kind(self) -> DestinationModel:
        if self.kind == "dicom":
            missing = [n for n in ("ae_title", "host", "port") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"destination {self.name!r} (kind dicom) needs {', '.join(missing)}")
        elif self.url is None:
            raise ValueError(f"destination {self.name!r} (kind dicomweb) needs url (the DICOMweb base URL)")
        else:
            self.url = check_url(self.url)
        return self

    def destination(self) -> Destination:
        if self.kind == "dicomweb" and self.url is not None:
            tls = self.tls
            web = DicomWebTarget(
                url=self.url,
                auth=self.auth or WebAuth(),
                ca_file=tls.ca_file if tls else None,
                certificate=tls.certificate if tls else None,
                private_key=tls.private_key if tls else None,
                min_version=tls.min_version if tls else "1.2",
            )
            return Destination(
                self.name,
                self.ae_title or "DICOMWEB",
                web.host,
                web.port,
                deidentify=self.deidentify,
                deidentify_options=tuple(self.deidentify_options),
                web=web,
            )
        if self.ae_title is None or self.host is None or self.port is None:  # refused by _kind already
            raise ValueError(f"destination {self.name!r} (kind dicom) needs ae_title, host and port")
        return Destination(
            self.name,
            self.ae_title,
            self.host,
            self.port,
            tls=self.tls,
            deidentify=self.deidentify,
            deidentify_options=tuple(self.deidentify_options),
        )


#: The values of the settings file being loaded (set by :func:`load_settings` around building Settings).
_FILE_VALUES: ContextVar[dict[str, object] | None] = ContextVar("fairnode_settings_file", default=None)


class _FileSource(PydanticBaseSettingsSource):
    """The settings file as a source below the environment, so that ``FAIRNODE_JOBS__METRICS_PORT`` changes
    one value of the file's ``jobs:`` section instead of replacing the section (sources merge deeply)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[object, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, object]:
        return dict(_FILE_VALUES.get() or {})


class Settings(BaseSettings):
    """Every setting of the node (see the module docstring for where values come from)."""

    model_config = SettingsConfigDict(env_prefix="FAIRNODE_", env_nested_delimiter="__", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Priority: values given in code, then the environment, then the settings file, then defaults."""
        return (init_settings, env_settings, _FileSource(settings_cls), dotenv_settings, file_secret_settings)

    data_dir: Path = Path("data")
    # DICOM SCP
    ae_title: str = Field("FAIRNODE", min_length=1, max_length=16)
    bind: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    allowed_calling_aes: list[str] = Field(default_factory=list, description="empty: accept any calling AE")
    require_called_ae: bool = True
    max_associations: int = Field(10, ge=1)
    min_free_disk_mb: int = Field(1024, ge=0)
    guards: GuardSettings = Field(default_factory=GuardSettings)  # per-AE caps, size, rate, backlog
    receiver: Receiver = "native"  # the DICOM port's receiver: native (fast C-ECHO/C-STORE) or pynetdicom
    retention: RetentionSettings = Field(default_factory=RetentionSettings)  # spool clean-up by age and size
    tls: TlsSettings = Field(default_factory=TlsSettings)  # DICOM TLS on the node's port (and its own certificate)
    audit_trail: AuditTrailSettings = Field(default_factory=AuditTrailSettings)  # security audit trail (ATNA)
    # study assembly
    idle_seconds: float = Field(10.0, gt=0)
    required_series: list[str] = Field(default_factory=list)
    forced_seconds: float = Field(900.0, gt=0)
    # series selection
    rules: list[SeriesRule] = Field(default_factory=lambda: list(DEFAULT_RULES))
    # inference
    prefer_gpu: bool = True
    models_dir: Path | None = None
    inference: InferenceSettings = Field(default_factory=InferenceSettings)  # backend (auto|onnx-*|torch-*), threads
    # outputs
    uid_root: str = OutputSettings.uid_root
    seg_series_number: int = 9100
    sr_series_number: int = 9101
    map_transfer_syntax: str = Field(
        OutputSettings.map_transfer_syntax,
        description="transfer syntax UID of the probability SEG and entropy map: RLE Lossless (default, every "
        "toolkit decodes it), JPEG-LS Lossless (about 10 times faster to encode and 4 times smaller; the PACS and "
        "viewers must decode it), JPEG 2000 Lossless or Explicit VR Little Endian (no encoding, about 50 times larger)",
    )
    # quality and review routing
    quality_enabled: bool = True
    quality_method: Literal["mc-dropout", "tta-flip"] | None = Field(None, description="default: the model card's")
    quality_samples: int | None = Field(None, ge=2, le=64, description="default: the model card's")
    quality_rca: bool = True
    quality_calibration: QualityCalibrationSettings = Field(default_factory=QualityCalibrationSettings)
    review_route: Literal["forward", "hold", "review-destination"] = "forward"
    lesions: LesionSettings = Field(default_factory=LesionSettings)  # liver lesions after ct-abdomen (off by default)
    review_destination: DestinationModel | None = None
    # forwarding
    destinations: list[DestinationModel] = Field(default_factory=list)
    retry_max_attempts: int = Field(8, ge=1)
    retry_base_seconds: float = Field(5.0, gt=0)
    retry_max_delay_seconds: float = Field(600.0, gt=0)
    # registry
    registry_url: str | None = Field(None, description="default: SQLite file in data_dir")
    pseudonym_secret: SecretStr | None = None
    registry_options: RegistrySettings = Field(default_factory=RegistrySettings)  # ethnic group table, site name
    # status page
    http_bind: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)  # fairness audit: small cells, alerts, bootstrap
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)  # model benchmark on labelled cohorts
    jobs: JobSettings = Field(default_factory=JobSettings)  # in-process or Celery workers (scale-out)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _review_destination(self) -> Settings:
        if self.review_route == "review-destination" and self.review_destination is None:
            raise ValueError("review_route 'review-destination' needs review_destination (name, ae_title, host, port)")
        return self

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, v: str) -> str:
        if not v.endswith(".") or not all(p.isdigit() for p in v.rstrip(".").split(".")) or len(v) > 40:
            raise ValueError(f"uid_root must be digits and dots ending in '.', at most 40 characters; got {v!r}")
        return v

    @field_validator("map_transfer_syntax")
    @classmethod
    def _map_transfer_syntax(cls, v: str) -> str:
        if v not in MAP_TRANSFER_SYNTAXES:
            allowed = ", ".join(f"{UID(t).name} ({t})" for t in MAP_TRANSFER_SYNTAXES)
            raise ValueError(f"map_transfer_syntax must be one of {allowed}; got {v!r}")
        return v

    # -- derived views for the packages ----------------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def registry(self) -> str:
        return self.registry_url or f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    def scp(self) -> ScpSettings:
        return ScpSettings(
            ae_title=self.ae_title,
            bind=self.bind,
            port=self.port,
            allowed_calling_aes=tuple(self.allowed_calling_aes),
            require_called_ae=self.require_called_ae,
            max_associations=self.max_associations,
            min_free_disk_mb=self.min_free_disk_mb,
            guards=self.guards,
            receiver=self.receiver,
        )

    def assembly(self) -> AssemblySettings:
        return AssemblySettings(
            idle_seconds=self.idle_seconds,
            required_series=tuple(self.required_series),
            forced_seconds=self.forced_seconds,
        )

    def forwarding(self) -> ForwardSettings:
        return ForwardSettings(
            calling_ae_title=self.ae_title,
            destinations=tuple(d.destination() for d in self.destinations),
            review=r.destination() if (r := self.review_destination) is not None else None,
            tls=self.tls,
            retry=RetryPolicy(
                max_attempts=self.retry_max_attempts,
                base_seconds=self.retry_base_seconds,
                max_delay_seconds=self.retry_max_delay_seconds,
            ),
        )

    def quality(self) -> QualitySettings:
        return QualitySettings(
            enabled=self.quality_enabled,
            method=self.quality_method,
            samples=self.quality_samples,
            rca=self.quality_rca,
            review_route=self.review_route,
        )

    def outputs(self) -> OutputSettings:
        return OutputSettings(
            uid_root=self.uid_root,
            seg_series_number=self.seg_series_number,
            sr_series_number=self.sr_series_number,
            map_transfer_syntax=self.map_transfer_syntax,
        )

    def secret(self) -> bytes:
        """The pseudonymisation secret (from settings, else the data folder's key file, created once)."""
        if self.pseudonym_secret is not None:
            return self.pseudonym_secret.get_secret_value().encode("utf-8")
        key = self.data_dir / "pseudonym.key"
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return key.read_text(encoding="utf-8").strip().encode("utf-8")


class SettingsFileError(ValueError):
    """A settings file that cannot be read or is not a mapping."""


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Settings from defaults, the YAML ``config`` (or ``FAIRNODE_CONFIG``), the environment, ``overrides``."""
    path = config or (Path(os.environ["FAIRNODE_CONFIG"]) if os.environ.get("FAIRNODE_CONFIG") else None)
    values: dict[str, object] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsFileError(f"cannot read settings file {path}: {exc}") from exc
        if raw is not None and not isinstance(raw, dict):
            raise SettingsFileError(f"settings file {path} must hold a mapping of setting: value")
        values.update(raw or {})
    # the environment wins over the file, value by value inside a section (see _FileSource)
    token = _FILE_VALUES.set(values)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    finally:
        _FILE_VALUES.reset(token)


@cache
def get_settings() -> Settings:
    """The process's settings, built on first use (not at import)."""
    return load_settings()
