"""The DIMSE statuses the node answers with, by name (never bare hex in the code)."""

from __future__ import annotations

from enum import Enum, IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses (PS3.4 B.2.3; 0xC2xx: fairnode's "cannot understand" details)."""

    SUCCESS = 0x0000
    #: free disk below the watermark (or the disk filled up while writing): nothing is accepted that
    #: could not be stored
    OUT_OF_RESOURCES = 0xA700
    #: Out of Resources: the encoded instance is larger than ``max_instance_mb``
    INSTANCE_TOO_LARGE = 0xA701
    #: Out of Resources: the calling AE stores faster than its ``rate_per_ae``
    RATE_LIMITED = 0xA702
    #: Out of Resources: ``max_backlog_studies`` studies already wait to be processed
    BACKLOG_FULL = 0xA703
    #: the dataset's SOP Class or Instance UID disagrees with the C-STORE request
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: the dataset could not be decoded at all
    CANNOT_UNDERSTAND = 0xC210
    #: a required UID (SOP Instance, Study or Series Instance UID) is missing or empty
    MISSING_UID = 0xC220
    #: a SOP Instance, Study or Series Instance UID is not a UID (digits and dots, at most 64 characters)
    INVALID_UID = 0xC222
    #: the uncompressed pixel data is shorter than Rows x Columns x Samples x Bits x Frames says
    PIXEL_DATA_TRUNCATED = 0xC221
    #: the spool could not write the instance (I/O error)
    PROCESSING_FAILURE = 0x0110


class EchoStatus(IntEnum):
    SUCCESS = 0x0000


class AssociationRejection(Enum):
    """A-ASSOCIATE-RJ (result, source, diagnostic) triples the node's own guards answer with (PS3.8 9.3.4)."""

    #: rejected-transient, service provider (presentation), local limit exceeded: association caps and
    #: the disk watermark; the sender may try again later
    LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
