"""The DIMSE statuses the node answers with, by name (never bare hex in the code)."""

from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses (PS3.4 B.2.3; 0xC2xx: fairnode's "cannot understand" details)."""

    SUCCESS = 0x0000
    #: free disk below the watermark: nothing is accepted that could not be stored
    OUT_OF_RESOURCES = 0xA700
    #: the dataset's SOP Class or Instance UID disagrees with the C-STORE request
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: the dataset could not be decoded at all
    CANNOT_UNDERSTAND = 0xC210
    #: a required UID (SOP Instance, Study or Series Instance UID) is missing or empty
    MISSING_UID = 0xC220
    #: the uncompressed pixel data is shorter than Rows x Columns x Samples x Bits x Frames says
    PIXEL_DATA_TRUNCATED = 0xC221
    #: the spool could not write the instance (I/O error)
    PROCESSING_FAILURE = 0x0110


class EchoStatus(IntEnum):
    SUCCESS = 0x0000
