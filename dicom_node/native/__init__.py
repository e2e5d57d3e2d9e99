"""The native receiver: a DICOM upper layer (PS3.8) acceptor for C-ECHO and C-STORE, written for speed.

One thread per association reads whole PDUs from a blocking socket (no polling loop), parses only the
command set of each message (:mod:`~dicom_node.native.dimse`), writes a C-STORE's dataset fragments to
the spool's ``tmp/`` as they arrive (:mod:`dicom_node.spool_incoming`; the header is parsed from the
first fragment) and hands the encoded dataset, undecoded, to
:func:`dicom_node.store_handling.store_instance`; the C-STORE response is sent once the instance is
fsynced and indexed (group commit). Association policy, resource guards, TLS and the audit trail are the
same as the pynetdicom receiver's (:mod:`dicom_node.scp`).
"""

from dicom_node.native.server import NativeServer

__all__ = ["NativeServer"]
