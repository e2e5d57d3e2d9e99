"""The native receiver: a DICOM upper layer (PS3.8) acceptor for C-ECHO and C-STORE, written for speed.

One thread per association reads whole PDUs from a blocking socket (no polling loop), parses only the
command set of each message (:mod:`~dicom_node.native.dimse`), gathers a C-STORE's dataset fragments
with their CRC as they arrive (:mod:`dicom_node.spool_incoming`; the header is parsed from the first
fragment) and hands the encoded dataset, undecoded, to :func:`dicom_node.store_handling.store_instance`;
the C-STORE response is sent once the instance is fsynced in the spool's journal (group commit), and a
release is confirmed once the association's instances are written and indexed. Association policy,
resource guards, TLS and the audit trail are the same as the pynetdicom receiver's (:mod:`dicom_node.scp`).
"""

from dicom_node.native.server import NativeServer

__all__ = ["NativeServer"]
